"""``chronoserve serve``: the HTTP server on the engine.

``create_app(settings)`` builds the ASGI app; ``run(settings, host, port)`` serves it with
uvicorn and drains on SIGTERM.
"""

from .app import create_app
from .run import run
from .runtime import ServerSettings

__all__ = ["ServerSettings", "create_app", "run"]
