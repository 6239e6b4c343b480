"""The engine deployment: a chronoserve server's engine in each Ray Serve replica.

Each replica runs the whole app of :func:`~chronoserve.server.create_app` (engine, warm-up,
metrics, drain) without an HTTP server, and serves it to front ends as an engine process of
``serve --http-workers`` does: an :class:`~chronoserve.server.engine_process.EngineServer` on a
ZeroMQ socket of its node (``tcp://<node ip>:<port>``), which takes ready forecasts and runs
the other routes (``/models``, ``/readyz``, ``/metrics``: one implementation everywhere) through
the app. Its address is in its routing stats, where front ends find it (:mod:`.frontdoor`).
Callers of the deployment's handle (another Ray deployment) may also ``forecast`` through Ray.

:func:`engine_deployment` builds it from :class:`~chronoserve.server.ServerSettings` (the same
settings as ``serve``: any policy, workers, backend, host tier), with the request router of
:mod:`.router` and a large ``max_ongoing_requests`` (Ray's default of 5 would cap every batch at
5: the engine's own queue bound, ``max_queue``, is what refuses). Each replica reports its
engine's readiness to the router (``record_routing_stats``), its predicted wait and queue to the
autoscaler (``record_autoscaling_stats``, :mod:`.autoscale`), and drains its engine when Serve
stops it: what is queued runs within the server's ``drain_timeout``, the rest fails with 503,
and every answer goes out before the socket closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Callable
from typing import Any

import ray
from ray import serve
from ray.serve.config import AutoscalingConfig, AutoscalingPolicy, BackpressureConfig, RequestRouterConfig

from chronoserve.errors import EngineClosed
from chronoserve.models.base import ModelLoader
from chronoserve.request import ForecastRequest, ForecastResult
from chronoserve.server.app import create_app
from chronoserve.server.engine_process import EngineServer
from chronoserve.server.runtime import ServerRuntime, ServerSettings
from chronoserve.settings import EngineSettings

from .autoscale import POLICY
from .router import ADDRESS, TAKEN

#: The router every engine deployment uses (:class:`~chronoserve.ray.router.ReadinessRouter`).
ROUTER = "chronoserve.ray.router:ReadinessRouter"
#: Seconds a client is told to wait when no replica can take its request.
RETRY_AFTER_S = 1.0
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
        # The data path: front ends send forecasts (and forwarded routes) here, over ZeroMQ, as
        # to an engine process of `serve --http-workers`; they find it in the routing stats.
        self.server = EngineServer(self.app, self.state, f"tcp://{ray.util.get_node_ip_address()}:*")
        self._serving = asyncio.get_running_loop().create_task(self.server.serve())

    def address(self) -> str:
        """Where this replica's engine serves front ends (the ZeroMQ socket)."""
        return self.server.address

    async def forecast(self, request: ForecastRequest) -> ForecastResult:
        """The engine's answer, saying it came from this replica (or the engine's error, raised):
        for a caller of the deployment's handle (``handle.forecast.remote(request)``)."""
        engine = self.runtime.engine
        if engine is None or self.runtime.draining:
            raise EngineClosed("this replica is shutting down")
        result = await engine.forecast(request)
        return dataclasses.replace(result, served_by=self.replica)

    def record_routing_stats(self) -> dict[str, Any]:
        """What the router places by: the engine's :class:`~chronoserve.placement.Readiness` and
        when it was taken (``taken``, wall-clock seconds); and where its engine serves front ends
        (``address``: :class:`~.frontdoor.ReplicaEngines`)."""
        engine = self.runtime.engine
        readiness = {} if engine is None else engine.readiness().to_dict()
        return {**readiness, TAKEN: time.time(), ADDRESS: self.server.address}

    def record_autoscaling_stats(self) -> dict[str, float]:
        """What the autoscaler scales by (:mod:`.autoscale`): the predicted wait for a worker
        (seconds) and the requests queued."""
        engine = self.runtime.engine
        if engine is None:
            return {}
        return {"wait_seconds": engine.readiness().backlog, "queued": float(sum(engine.queue_depths().values()))}

    async def __del__(self) -> None:
        # The server's drain: queued work runs, the rest fails with 503; every answer goes out
        # through the socket, which closes after.
        try:
            await self._lifespan.aclose()
        finally:
            self._serving.cancel()
            self.server.close()


def autoscaling(
    low: int, high: int, *, target_wait_s: float = 0.5, target_queue: float = 64.0, **config: Any
) -> AutoscalingConfig:
    """Between ``low`` and ``high`` replicas on chronoserve's signals (:mod:`.autoscale`); ``config``:
    more of Ray's ``AutoscalingConfig`` (``upscale_delay_s``, ``downscale_delay_s``, ...)."""
    policy = AutoscalingPolicy(
        policy_function=POLICY, policy_kwargs={"target_wait_s": target_wait_s, "target_queue": target_queue}
    )
    return AutoscalingConfig(min_replicas=low, max_replicas=high, initial_replicas=low, policy=policy, **config)


def engine_deployment(
    settings: ServerSettings | EngineSettings,
    *,
    replicas: int = 1,
    autoscale: tuple[int, int] | None = None,
    replica_cpus: float = 1.0,
    max_queued_requests: int = -1,
    loader: Callable[[], ModelLoader] | None = None,
    stats_period: float = STATS_PERIOD_S,
    name: str = "chronoserve-engine",
    router: str | None = ROUTER,
    **options: Any,
) -> Any:
    """The bound engine deployment (``serve.run`` it for a handle, or bind it to
    :func:`~.ingress.ingress_app`): ``replicas`` replicas of :class:`EngineReplica`, or
    ``autoscale`` = (min, max) of them (:func:`autoscaling`), each with ``replica_cpus`` logical CPUs.

    ``max_queued_requests``: calls that may wait in Ray for a replica before more are refused
    (429 with ``Retry-After``; -1: no bound); ``loader``: builds each replica's model loader
    (default: ``settings``'); ``router``: the request router's import path (None: Ray's own,
    which knows nothing of models: for comparisons); ``options``: more of ``serve.deployment``'s
    options (``ray_actor_options``, ``health_check_timeout_s``, ...), over these.
    """
    deployment: dict[str, Any] = {
        "num_replicas": "auto" if autoscale else replicas,
        "ray_actor_options": {"num_cpus": replica_cpus},
        "max_queued_requests": max_queued_requests,
        "backpressure_config": BackpressureConfig(status_code=429, retry_after_s=int(RETRY_AFTER_S)),
        "max_ongoing_requests": MAX_ONGOING_REQUESTS,
        "graceful_shutdown_timeout_s": GRACEFUL_SHUTDOWN_S,
    }
    if autoscale is not None:
        deployment["autoscaling_config"] = autoscaling(*autoscale)
    if router is not None:
        fields = {"request_router_class": router, "request_routing_stats_period_s": stats_period}
        deployment["request_router_config"] = RequestRouterConfig(**fields)
    deployment.update(options)
    return serve.deployment(name=name, **deployment)(EngineReplica).bind(settings, loader)
