"""Serving the app with uvicorn, with a drain on SIGTERM/SIGINT.

On the first signal the server stops reporting ready (``/readyz`` 503), the engine stops
accepting requests (503) and runs what is queued for up to ``drain_timeout`` seconds, then
fails what is left with 503; uvicorn closes the listening socket, waits for the open
requests to be answered, runs the lifespan's shutdown and the process exits 0.
"""

from __future__ import annotations

import logging
import signal
from types import FrameType

import uvicorn

from .app import ServerRuntime, ServerSettings, create_app

logger = logging.getLogger("chronoserve.server")


class _DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, runtime: ServerRuntime) -> None:
        super().__init__(config)
        self.runtime = runtime

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # A signal handler (signal.signal): it interrupts the loop thread anywhere, so the drain
        # is scheduled on the loop rather than started here.
        loop = self.runtime.loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.runtime.begin_drain)
        super().handle_exit(sig, frame)
        if sig == signal.SIGTERM:
            # uvicorn re-raises captured signals after shutting down, which would end the process
            # with -SIGTERM; a drained SIGTERM is a clean exit (status 0).
            self._captured_signals.remove(sig)


def _configure_logging(log_level: str) -> None:
    """chronoserve's own log lines (ready, draining, load failures) beside uvicorn's, in its style."""
    root = logging.getLogger("chronoserve")
    root.setLevel(log_level.upper())
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
        root.addHandler(handler)


def run(settings: ServerSettings, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    _configure_logging(log_level)
    app = create_app(settings)
    runtime: ServerRuntime = app.state.runtime
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        lifespan="on",
        # Open requests get the drain timeout plus a margin to be answered before uvicorn gives up.
        timeout_graceful_shutdown=int(settings.drain_timeout) + 5,
        access_log=log_level == "debug",
    )
    server = _DrainingServer(config, runtime)
    server.run()
