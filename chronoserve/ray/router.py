"""Ray Serve's request router for chronoserve engines: each request to the replica where its model
will be ready soonest (placement by readiness, :mod:`chronoserve.placement`).

Ray Serve polls every replica's ``record_routing_stats`` (an engine's
:class:`~chronoserve.placement.Readiness`, as a dict) every ``request_routing_stats_period_s``
and hands them to :meth:`ReadinessRouter.choose_replicas` with each request's model (its
``multiplexed_model_id``). The router ranks the replicas with :func:`~chronoserve.placement.rank`,
one replica a rank, so Ray tries the best first and falls back to the next when a replica is
full. Between two polls it counts what it routed itself (the model is on its way to that
replica, one more request's work is queued there), as :class:`~chronoserve.placement.Router` does,
and ages each view by the time since (:meth:`~chronoserve.placement.Readiness.after`: a report
taken while a batch ran does not keep that batch's time after it finished).

A ``multiplexed_model_id`` of :data:`PIN` + a replica's id names that replica instead of a model:
how the ingress asks every replica for its ``/metrics``, ``/models`` and ``/readyz``
(:func:`replicas` lists them, as the router of this process knows them).
"""

from __future__ import annotations

import time
from typing import Any

from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica

from chronoserve.placement import Readiness, rank

from . import _routers

#: A ``multiplexed_model_id`` starting with this names one replica (by its id), not a model.
#: No model's canonical name starts so (hub ids and local paths have no ``::``).
PIN = "replica::"


def replicas(app: str, deployment: str) -> list[str]:
    """The ids of the running replicas of ``deployment`` that this process's router knows
    (empty until the router exists: a handle creates it with its first request)."""
    router = _routers.ROUTERS.get((app, deployment))
    return [] if router is None else sorted(r.unique_id for r in router.curr_replicas)


class ReadinessRouter(RequestRouter):  # type: ignore[misc]  # ray is not analysed (an extra)
    """Ranks replicas by when each would start the request (queue wait, load estimate by tier)."""

    def initialize_state(self, **kwargs: Any) -> None:
        self._turn = 0
        # Per replica: the stats dict the view was read from, the view with what was routed since,
        # and when that view was last brought up to date (it ages: the work in it drains).
        self._views: dict[ReplicaID, tuple[Any, Readiness, float]] = {}
        _routers.ROUTERS[(self._deployment_id.app_name, self._deployment_id.name)] = self

    def _view(self, replica: RunningReplica, now: float) -> Readiness:
        stats = replica.routing_stats
        seen = self._views.get(replica.replica_id)
        if seen is not None and seen[0] is stats:
            view = seen[1].after(now - seen[2])
        else:
            view = Readiness.from_dict(stats) if stats else Readiness(backlog=0.0)
        self._views[replica.replica_id] = (stats, view, now)
        return view

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        model = pending_request.metadata.multiplexed_model_id if pending_request is not None else ""
        pinned = model[len(PIN) :] if model.startswith(PIN) else None
        if pinned is not None:
            model = ""
        now = time.monotonic()
        views = [self._view(r, now) for r in candidate_replicas]
        order = rank(model, views, self._turn % len(candidate_replicas))
        self._turn += 1
        ranked = [[candidate_replicas[i]] for i in order]
        if pinned is not None:
            # That replica first; if it cannot take the call (it died, and Serve has not yet
            # noticed), the next: the caller sees which replica answered.
            ranked.sort(key=lambda r: r[0].replica_id.unique_id != pinned)
        return ranked

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result: Any) -> None:
        model = pending_request.metadata.multiplexed_model_id
        seen = self._views.get(replica_id)
        if seen is None or model.startswith(PIN):
            return
        stats, view, at = seen
        self._views[replica_id] = (stats, view.routed(model), at)
