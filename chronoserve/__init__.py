"""chronoserve: serve Chronos forecasting models with an asyncio engine and pluggable policies.

``import chronoserve`` is cheap: torch is imported only when a model is loaded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "AsyncClient",
    "BlockingEngine",
    "Client",
    "Engine",
    "ForecastRequest",
    "ForecastResult",
    "Policy",
    "Timings",
    "__version__",
    "errors",
    "forecast",
]

_LAZY = {
    "AsyncClient": ("chronoserve.client", "AsyncClient"),
    "Client": ("chronoserve.client", "Client"),
    "BlockingEngine": ("chronoserve.sync", "BlockingEngine"),
    "Engine": ("chronoserve.engine", "Engine"),
    "ForecastRequest": ("chronoserve.request", "ForecastRequest"),
    "ForecastResult": ("chronoserve.request", "ForecastResult"),
    "Policy": ("chronoserve.policy", "Policy"),
    "Timings": ("chronoserve.request", "Timings"),
    "errors": ("chronoserve.errors", None),
    "forecast": ("chronoserve.sync", "forecast"),
}

if TYPE_CHECKING:
    from . import errors
    from .client import AsyncClient, Client
    from .engine import Engine
    from .policy import Policy
    from .request import ForecastRequest, ForecastResult, Timings
    from .sync import BlockingEngine, forecast


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'chronoserve' has no attribute {name!r}")
    import importlib

    module_name, attr = _LAZY[name]
    module = importlib.import_module(module_name)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
