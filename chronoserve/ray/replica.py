"""The engine deployment: a chronoserve engine in each Ray Serve replica.

:func:`engine_deployment` builds it from :class:`~chronoserve.settings.EngineSettings` (the same
settings as ``serve``: any policy, workers, backend, host tier), with the request router of
:mod:`.router` and a large ``max_ongoing_requests`` (Ray's default of 5 would cap every batch at
5: the engine's own queue bound, ``max_queue``, is what refuses). Each replica reports its
engine's readiness to the router (``record_routing_stats``, polled every ``stats_period`` seconds),
answers ``forecast`` with the engine's result and the replica's id, and drains its engine when
Serve shuts it down.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ray import serve
from ray.serve.config import RequestRouterConfig

from chronoserve.models.base import ModelLoader
from chronoserve.request import ForecastRequest, ForecastResult
from chronoserve.settings import EngineSettings

#: The router every engine deployment uses (:class:`~chronoserve.ray.router.ReadinessRouter`).
ROUTER = "chronoserve.ray.router:ReadinessRouter"
#: Seconds between two polls of each replica's readiness.
STATS_PERIOD_S = 0.5
#: Requests Ray may hand one replica at once: the engine queues and batches them (``max_queue`` refuses).
MAX_ONGOING_REQUESTS = 100_000


class EngineReplica:
    """One chronoserve engine, in one Ray Serve replica."""

    async def __init__(  # type: ignore[misc]  # Ray Serve awaits a replica's async __init__
        self, settings: EngineSettings, loader: Callable[[], ModelLoader] | None = None
    ) -> None:
        self.engine = settings.engine(loader=loader() if loader is not None else None)
        await self.engine.start()
        self.replica = serve.get_replica_context().replica_id.unique_id

    async def forecast(self, request: ForecastRequest) -> tuple[str, ForecastResult]:
        """The engine's answer (or its error, raised) and this replica's id."""
        return self.replica, await self.engine.forecast(request)

    def record_routing_stats(self) -> dict[str, Any]:
        """What the router places by: the engine's :class:`~chronoserve.placement.Readiness`."""
        return self.engine.readiness().to_dict()

    async def __del__(self) -> None:
        await self.engine.close()


def engine_deployment(
    settings: EngineSettings,
    *,
    replicas: int = 1,
    loader: Callable[[], ModelLoader] | None = None,
    stats_period: float = STATS_PERIOD_S,
    name: str = "chronoserve-engine",
    **options: Any,
) -> Any:
    """The bound engine deployment (``serve.run`` it): ``replicas`` replicas of :class:`EngineReplica`.

    ``loader``: builds each replica's model loader (default: ``settings``'); ``options``: more of
    ``serve.deployment``'s options (``ray_actor_options``, ``max_queued_requests``, ...).
    """
    fields: dict[str, Any] = {"request_router_class": ROUTER, "request_routing_stats_period_s": stats_period}
    router = RequestRouterConfig(**fields)
    wrap = serve.deployment(
        name=name,
        num_replicas=replicas,
        max_ongoing_requests=options.pop("max_ongoing_requests", MAX_ONGOING_REQUESTS),
        request_router_config=router,
        **options,
    )
    deployment = wrap(EngineReplica)
    return deployment.bind(settings, loader)
