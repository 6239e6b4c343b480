"""What every server process runs: chronoserve's log lines, uvicorn with the drain, and (in a
child of ``serve --http-workers``) exiting with its parent.

On the first signal the server stops reporting ready (``/readyz`` 503), the engine stops
accepting requests (503) and runs what is queued for up to ``drain_timeout`` seconds, then
fails what is left with 503; uvicorn closes the listening socket, waits for the open
requests to be answered, runs the lifespan's shutdown and the process exits 0. A body still
arriving at the signal is not waited for: its handler answers 503 at once (see body.py).

Connections are served by the guarded protocol of :mod:`.protocol` (httptools' C parser, h11
without it), which bounds what a client
may hold: time to send its headers, their size, idle time between requests, open connections.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import signal
import threading
import time
from types import FrameType
from typing import Any

import uvicorn
from starlette.types import ASGIApp

from .protocol import guarded_protocol
from .runtime import ServerRuntime, ServerSettings

logger = logging.getLogger("chronoserve.server")

#: Seconds uvicorn waits for open requests beyond ``drain_timeout`` before it cancels them.
#: The drain starts at the signal, uvicorn's wait only after up to 0.2 s (its 0.1 s tick and
#: 0.1 s pause); the requests the engine fails at the end of the drain are answered (503)
#: just after it, and ``drain_timeout`` is rounded up to whole seconds. 2 s covers all of
#: that on a loaded machine; without it the handlers answering those 503s would be cancelled
#: into plain-text 500s at the very moment they answer. (The lifespan's shutdown then waits
#: for the engine's drain, which past ``drain_timeout`` also stops running batches at their
#: model's next layer.)
SHUTDOWN_MARGIN_SECONDS = 2


#: The exit status of a server process that could not serve at all (:attr:`ServerRuntime.fatal`):
#: sysexits' EX_CONFIG, so a supervisor tells it from a crash and does not restart it.
EXIT_FATAL = 78


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


def draining_server(app: ASGIApp, settings: ServerSettings, log_level: str, **where: Any) -> uvicorn.Server:
    """uvicorn serving ``app`` (whose ``state.runtime`` drains on the first signal) with the connection limits."""
    runtime: ServerRuntime = app.state.runtime  # type: ignore[attr-defined]
    config = uvicorn.Config(
        app,
        log_level=log_level,
        lifespan="on",
        # Our protocol with the connection limits (see protocol.py): httptools, or h11 without it.
        # A class here keeps uvicorn from using an unguarded one.
        http=guarded_protocol(settings),
        timeout_keep_alive=math.ceil(settings.keep_alive_timeout),
        # h11's own limit on an incomplete head: a backstop behind the protocol's 431.
        h11_max_incomplete_event_size=settings.max_header_bytes,
        timeout_graceful_shutdown=math.ceil(settings.drain_timeout) + SHUTDOWN_MARGIN_SECONDS,
        ssl_certfile=settings.ssl_certfile,
        ssl_keyfile=settings.ssl_keyfile,
        access_log=False,  # chronoserve's own (server/access.py), on by default
        log_config=None,  # configure_logging's handlers (text or JSON), not uvicorn's own
        **where,
    )
    server = _DrainingServer(config, runtime)
    runtime.on_fatal = lambda: setattr(server, "should_exit", True)  # on the loop: uvicorn's next tick stops
    return server


def exit_with_parent(interval: float = 1.0) -> None:
    """In a child: drain (SIGTERM to itself) if the supervisor dies, rather than hold the port as an orphan.

    The supervisor is the process that started this one (``multiprocessing.parent_process()``),
    whose end its sentinel tells at once, a SIGKILL included: the OS parent (``os.getppid()``)
    of a process started from the fork server is the fork server (:mod:`chronoserve.forkserver`).
    A process that ``multiprocessing`` did not start looks at its OS parent every ``interval`` seconds.
    """
    parent = multiprocessing.parent_process()
    pid = parent.pid if parent is not None else os.getppid()

    def watch() -> None:
        if parent is not None:
            parent.join()  # returns once the supervisor is gone
        else:
            while os.getppid() == pid:
                time.sleep(interval)
        logger.error("the supervisor process (pid %s) is gone: draining", pid)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="chronoserve-parent-watch", daemon=True).start()
