"""``chronoserve serve``: the server in this process, or in several (``--http-workers``).

How each process serves and drains is in :mod:`.process`; the processes of
``--http-workers`` in :mod:`.supervisor`.
"""

from __future__ import annotations

from chronoserve.logs import configure_logging

from .app import create_app
from .process import draining_server
from .runtime import ServerSettings


def run(
    settings: ServerSettings,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "info",
    http_workers: int = 0,
    engines: int = 1,
) -> int:
    """Serve until SIGTERM/SIGINT; the exit status. ``http_workers`` > 0: that many front-end
    processes and ``engines`` engine processes (:mod:`.supervisor`; several engines need at least
    one front end); otherwise everything in this process."""
    configure_logging(log_level, log_format=settings.log_format)
    if http_workers > 0 or engines > 1:
        from .supervisor import Supervisor

        return Supervisor(settings, host, port, log_level, max(1, http_workers), engines).run()
    app = create_app(settings)
    draining_server(app, settings, log_level, host=host, port=port).run()
    return 1 if app.state.runtime.fatal is not None else 0
