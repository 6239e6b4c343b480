"""The engine deployment as the forecast routes see an engine (a :class:`~chronoserve.server.runtime.Forecaster`)."""

from __future__ import annotations

from typing import Any

from chronoserve.models.base import ModelLoader
from chronoserve.request import ForecastRequest, ForecastResult


class RayEngines:
    """Forecasts through ``handle`` (the engine deployment's), each request tagged with its model's
    canonical name so the router places it by readiness (:mod:`.router`)."""

    def __init__(self, handle: Any, loader: ModelLoader) -> None:
        self.handle = handle
        self.loader = loader

    def canonical(self, name: object) -> str:
        return self.loader.canonical(name)

    async def forecast(self, request: ForecastRequest) -> ForecastResult:
        _, result = await self.served(request)
        return result

    async def served(self, request: ForecastRequest) -> tuple[str, ForecastResult]:
        """The answer and the id of the replica that served it (raises the engine's error)."""
        model = self.canonical(request.model)
        replica, result = await self.handle.options(multiplexed_model_id=model).forecast.remote(request)
        return replica, result
