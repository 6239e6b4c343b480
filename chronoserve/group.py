"""Several engines behind one ``forecast``: each request placed where its model is ready soonest.

An :class:`EngineGroup` holds engines that each own their models (their own pool, host tier
and workers) and places every request by readiness (:mod:`chronoserve.placement`): on the
engine whose queue wait and load estimate by tier start it first, so requests follow their
models and a model is loaded once rather than on every engine. ``placement="round-robin"`` and
``"random"`` are there to compare against (bench/coldstart.py).

The group reads each engine's :meth:`~chronoserve.engine.Engine.readiness` when it places a
request (engines in this process: the views are always fresh). Engines elsewhere (processes,
replicas) send their views from time to time instead; :class:`~chronoserve.placement.Router`
keeps the account in between.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType

from .engine import Engine
from .placement import PLACEMENTS, Router
from .request import ForecastRequest, ForecastResult


class EngineGroup:
    """``engines`` behind one :meth:`forecast` (a :class:`~chronoserve.server.runtime.Forecaster`)."""

    def __init__(self, engines: Sequence[Engine], placement: str = "readiness", seed: int = 0) -> None:
        if not engines:
            raise ValueError("an engine group needs at least one engine")
        self.engines = list(engines)
        self.placement = placement
        self.router = Router(len(self.engines), placement, seed)

    async def start(self) -> None:
        for engine in self.engines:
            await engine.start()

    async def close(self, drain: bool = True, timeout: float | None = None) -> None:
        for engine in self.engines:
            await engine.close(drain=drain, timeout=timeout)

    async def __aenter__(self) -> EngineGroup:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def canonical(self, name: object) -> str:
        return self.engines[0].canonical(name)

    def choose(self, model: str) -> int:
        """The engine for a request for ``model`` (its canonical name), by the group's placement."""
        if self.placement == "readiness":
            for i, engine in enumerate(self.engines):
                self.router.update(i, engine.readiness())
        return self.router.place(model)

    async def forecast(self, request: ForecastRequest) -> ForecastResult:
        """Forecast ``request`` on the engine its placement chooses (raises what that engine raises)."""
        engine = self.engines[self.choose(self.canonical(request.model))]
        return await engine.forecast(request)


__all__ = ["PLACEMENTS", "EngineGroup"]
