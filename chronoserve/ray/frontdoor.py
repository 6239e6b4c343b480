"""A front end's view of the engine deployment: :class:`ReplicaEngines`, each replica reached directly.

Ray Serve places the engine replicas on the cluster's nodes, starts, health-checks, scales and
stops them; the forecasts themselves do not go through Ray. Each replica serves its engine on a
ZeroMQ socket (:class:`~chronoserve.server.engine_process.EngineServer`, as an engine process of
``serve --http-workers`` does) and says where in its routing stats; a front end connects to
every replica there (:class:`~chronoserve.server.engines.EngineSet`, by replica id) and places
each request by readiness, as ``serve --engines K`` does over its engine processes. A Ray call
costs milliseconds of CPU in the caller and the replica (measured in docs/scale-out.md); a frame
on a socket, tens of microseconds.

The replicas are found through the deployment handle's request router (:func:`.router.addresses`),
which Serve keeps up to date: every :data:`REFRESH_S` the set follows it. A replica that goes
away takes nothing with it silently: a request it held is sent once more to another replica
(forecasts are pure), or fails with 503 ``engine_unavailable``; so does a request refused by a
replica that is draining. ``max_held`` bounds what one front end holds in the replicas (the
``max_queued_requests`` of ``serve --ray``): beyond it, 429 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from chronoserve.errors import QueueFull
from chronoserve.models.base import ModelLoader
from chronoserve.request import ForecastRequest, ForecastResult
from chronoserve.server.engines import EngineSet

from .router import addresses

logger = logging.getLogger("chronoserve.ray")

#: Seconds between two looks at the deployment's replicas.
REFRESH_S = 0.5
#: Seconds a front end waits for its first call through the handle (what creates the router
#: that knows the replicas) before it tries again.
FIRST_CALL_S = 10.0


class ReplicaEngines(EngineSet):
    """The replicas of the engine deployment behind ``handle``, as one engine (each request placed
    by readiness; answers say their replica: ``served_by``)."""

    def __init__(self, handle: Any, loader: ModelLoader, *, max_held: int = -1, placement: str = "readiness") -> None:
        super().__init__({}, loader, label="replica", retry=True, placement=placement)
        self.handle = handle
        self.max_held = max_held
        self.held = 0
        """Forecasts sent to the replicas and not yet answered."""
        self._following: asyncio.Task[None] | None = None

    async def forecast(self, request: ForecastRequest) -> ForecastResult:
        """The answer of the replica where the model will be ready soonest; :class:`QueueFull`
        (429) while ``max_held`` requests are in the replicas already."""
        if 0 <= self.max_held <= self.held:
            raise QueueFull(self.max_held)
        self.held += 1
        try:
            return await super().forecast(request)
        finally:
            self.held -= 1

    async def start(self) -> None:
        await super().start()
        self._following = asyncio.get_running_loop().create_task(self._follow())

    async def close(self) -> None:
        if self._following is not None:
            self._following.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._following
        await super().close()

    async def _follow(self) -> None:
        """Keep the set to the deployment's replicas (after one call through the handle: its
        router, which knows them, is made by the first call)."""
        while True:
            try:
                await asyncio.wait_for(self.handle.address.remote(), FIRST_CALL_S)
                break
            except Exception as exc:  # no replica yet, or a call Ray did not deliver (seen in 2.60)
                logger.info("waiting for an engine replica: %s", exc or type(exc).__name__)
                await asyncio.sleep(REFRESH_S)
        while True:
            try:
                await self.update(addresses(self.handle.app_name, self.handle.deployment_name))
            except Exception:  # keep following: the next look may do better
                logger.exception("could not follow the engine replicas")
            await asyncio.sleep(REFRESH_S)


__all__ = ["REFRESH_S", "ReplicaEngines"]
