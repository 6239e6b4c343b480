"""Using the engine from synchronous code (scripts, notebooks, other frameworks).

:class:`BlockingEngine` runs an :class:`~chronoserve.Engine` on an event loop in a
background thread; its methods block the calling thread, never the engine's loop.
:func:`forecast` is the one-call version for scripts.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterable
from types import TracebackType
from typing import Any, TypeVar

from .engine import Engine
from .request import ForecastRequest, ForecastResult

T = TypeVar("T")


class BlockingEngine:
    """``with BlockingEngine(policy="batched") as engine: result = engine.forecast(request)``.

    Takes the same arguments as :class:`~chronoserve.Engine`. Safe to call from several
    threads at once: their requests are batched together.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._args = args
        self._kwargs = kwargs
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.engine: Engine | None = None

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop is None:
            coro.close()
            raise RuntimeError("BlockingEngine is not started; use it in a `with` block")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def start(self) -> BlockingEngine:
        loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=loop.run_forever, name="chronoserve-loop", daemon=True)
        self._thread.start()
        self._loop = loop

        async def make() -> Engine:
            engine = Engine(*self._args, **self._kwargs)
            await engine.start()
            return engine

        try:
            self.engine = self._call(make())
        except BaseException:
            self._stop_loop()
            raise
        return self

    def forecast(self, request: ForecastRequest) -> ForecastResult:
        assert self.engine is not None, "BlockingEngine is not started"
        return self._call(self.engine.forecast(request))

    def forecast_many(self, requests: Iterable[ForecastRequest], *, return_exceptions: bool = False) -> list[Any]:
        assert self.engine is not None, "BlockingEngine is not started"
        return self._call(self.engine.forecast_many(list(requests), return_exceptions=return_exceptions))

    def close(self) -> None:
        if self.engine is not None:
            self._call(self.engine.close())
            self.engine = None
        self._stop_loop()

    def _stop_loop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()
        self._loop = None
        self._thread = None

    def __enter__(self) -> BlockingEngine:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def forecast(
    requests: ForecastRequest | Iterable[ForecastRequest], **engine_options: Any
) -> ForecastResult | list[ForecastResult]:
    """Forecast one request or many from synchronous code, on a temporary engine.

    ``chronoserve.forecast(ForecastRequest(...))`` returns one result;
    a list of requests returns a list of results in the same order.
    """
    with BlockingEngine(**engine_options) as engine:
        if isinstance(requests, ForecastRequest):
            return engine.forecast(requests)
        return engine.forecast_many(requests)
