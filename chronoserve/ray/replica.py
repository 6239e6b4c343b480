"""The engine deployment: a chronoserve server's engine in each Ray Serve replica.

Each replica runs the whole app of :func:`~chronoserve.server.create_app` (engine, warm-up,
metrics, drain) without an HTTP server, as an engine process of ``serve --http-workers`` does
(:mod:`chronoserve.server.engine_process`): the ingress (:mod:`.ingress`) sends it ready
forecasts (``forecast``) and forwards the other routes (``http``, the app called in-process), so
``/models``, ``/readyz`` and ``/metrics`` have one implementation everywhere.

:func:`engine_deployment` builds it from :class:`~chronoserve.server.ServerSettings` (the same
settings as ``serve``: any policy, workers, backend, host tier), with the request router of
:mod:`.router` and a large ``max_ongoing_requests`` (Ray's default of 5 would cap every batch at
5: the engine's own queue bound, ``max_queue``, is what refuses). Each replica reports its
engine's readiness to the router (``record_routing_stats``), its predicted wait and queue to the
autoscaler (``record_autoscaling_stats``, :mod:`.autoscale`), and drains its engine when Serve
stops it (Serve first lets the requests it holds finish, up to ``graceful_shutdown_timeout_s``).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from typing import Any

from ray import serve
from ray.serve.config import RequestRouterConfig

from chronoserve.errors import EngineClosed
from chronoserve.models.base import ModelLoader
from chronoserve.request import ForecastRequest, ForecastResult
from chronoserve.server.app import create_app
from chronoserve.server.inprocess import Answer, call_app
from chronoserve.server.runtime import ServerRuntime, ServerSettings
from chronoserve.settings import EngineSettings

#: The router every engine deployment uses (:class:`~chronoserve.ray.router.ReadinessRouter`).
ROUTER = "chronoserve.ray.router:ReadinessRouter"
#: Seconds between two polls of each replica's readiness.
STATS_PERIOD_S = 0.5
#: Requests Ray may hand one replica at once: the engine queues and batches them (``max_queue`` refuses).
MAX_ONGOING_REQUESTS = 100_000
#: Seconds Serve waits for a stopping replica's requests before it drains the engine (which then
#: runs what is queued within the server's ``drain_timeout``).
GRACEFUL_SHUTDOWN_S = 60.0


class EngineReplica:
    """One chronoserve engine (with its server's app), in one Ray Serve replica."""

    async def __init__(  # type: ignore[misc]  # Ray Serve awaits a replica's async __init__
        self, settings: ServerSettings | EngineSettings, loader: Callable[[], ModelLoader] | None = None
    ) -> None:
        if isinstance(settings, EngineSettings):  # an engine alone: nothing to warm up
            settings = ServerSettings(engine=settings, warmup=False)
        self.replica: str = serve.get_replica_context().replica_id.unique_id
        self.app = create_app(settings, loader=loader() if loader is not None else None)
        self._lifespan = contextlib.AsyncExitStack()
        state = await self._lifespan.enter_async_context(self.app.router.lifespan_context(self.app))
        assert state is not None
        self.state: dict[str, Any] = dict(state)
        self.runtime: ServerRuntime = self.state["runtime"]

    async def forecast(self, request: ForecastRequest) -> ForecastResult:
        """The engine's answer, saying it came from this replica (or the engine's error, raised)."""
        engine = self.runtime.engine
        if engine is None or self.runtime.draining:
            raise EngineClosed("this replica is shutting down")
        result = await engine.forecast(request)
        return dataclasses.replace(result, served_by=self.replica)

    async def http(
        self, method: str, path: str, query: bytes, headers: list[list[bytes]], body: bytes
    ) -> tuple[str, Answer]:
        """The app's answer to a forwarded route, and this replica's id."""
        return self.replica, await call_app(self.app, self.state, method, path, query, headers, body)

    def counts(self, frame: list[Any]) -> None:
        """An ingress's HTTP counts and CPU seconds (a :data:`~chronoserve.server.wire.COUNTS` frame)."""
        if self.runtime.metrics is not None:
            self.runtime.metrics.add_counts(*frame[2:6])

    def record_routing_stats(self) -> dict[str, Any]:
        """What the router places by: the engine's :class:`~chronoserve.placement.Readiness`."""
        engine = self.runtime.engine
        return {} if engine is None else engine.readiness().to_dict()

    def record_autoscaling_stats(self) -> dict[str, float]:
        """What the autoscaler scales by (:mod:`.autoscale`): the predicted wait for a worker
        (seconds) and the requests queued."""
        engine = self.runtime.engine
        if engine is None:
            return {}
        return {"wait_seconds": engine.readiness().backlog, "queued": float(sum(engine.queue_depths().values()))}

    async def __del__(self) -> None:
        await self._lifespan.aclose()  # the server's drain: queued work runs, the rest fails with 503


def engine_deployment(
    settings: ServerSettings | EngineSettings,
    *,
    replicas: int | str = 1,
    loader: Callable[[], ModelLoader] | None = None,
    stats_period: float = STATS_PERIOD_S,
    name: str = "chronoserve-engine",
    router: str | None = ROUTER,
    **options: Any,
) -> Any:
    """The bound engine deployment (``serve.run`` it, or bind it to :func:`~.ingress.ingress_app`):
    ``replicas`` replicas of :class:`EngineReplica` (or ``"auto"`` with ``autoscaling_config``).

    ``loader``: builds each replica's model loader (default: ``settings``'); ``router``: the
    request router's import path (None: Ray's own, which knows nothing of models: for
    comparisons); ``options``: more of ``serve.deployment``'s options (``ray_actor_options``,
    ``max_queued_requests``, ``autoscaling_config``, ...).
    """
    if router is not None:
        fields = {"request_router_class": router, "request_routing_stats_period_s": stats_period}
        options["request_router_config"] = RequestRouterConfig(**fields)
    options.setdefault("max_ongoing_requests", MAX_ONGOING_REQUESTS)
    options.setdefault("graceful_shutdown_timeout_s", GRACEFUL_SHUTDOWN_S)
    wrap = serve.deployment(name=name, num_replicas=replicas, **options)
    return wrap(EngineReplica).bind(settings, loader)
