"""Ray Serve's request router for chronoserve engines: each request to the replica where its model
will be ready soonest (placement by readiness, :mod:`chronoserve.placement`).

Ray Serve polls every replica's ``record_routing_stats`` (an engine's
:class:`~chronoserve.placement.Readiness`, as a dict) every ``request_routing_stats_period_s``
and hands them to :meth:`ReadinessRouter.choose_replicas` with each request's model (its
``multiplexed_model_id``). The router ranks the replicas with :func:`~chronoserve.placement.rank`,
one replica a rank, so Ray tries the best first and falls back to the next when a replica is
full. Between two polls it counts what it routed itself (the model is on its way to that
replica, one more request's work is queued there), as :class:`~chronoserve.placement.Router` does.
"""

from __future__ import annotations

from typing import Any

from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica

from chronoserve.placement import Readiness, rank


class ReadinessRouter(RequestRouter):  # type: ignore[misc]  # ray is not analysed (an extra)
    """Ranks replicas by when each would start the request (queue wait, load estimate by tier)."""

    def initialize_state(self, **kwargs: Any) -> None:
        self._turn = 0
        # Per replica: the stats dict the view was read from, and the view with what was routed since.
        self._views: dict[ReplicaID, tuple[Any, Readiness]] = {}

    def _view(self, replica: RunningReplica) -> Readiness:
        stats = replica.routing_stats
        seen = self._views.get(replica.replica_id)
        if seen is not None and seen[0] is stats:
            return seen[1]
        view = Readiness.from_dict(stats) if stats else Readiness(backlog=0.0)
        self._views[replica.replica_id] = (stats, view)
        return view

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        model = pending_request.metadata.multiplexed_model_id if pending_request is not None else ""
        views = [self._view(r) for r in candidate_replicas]
        order = rank(model, views, self._turn % len(candidate_replicas))
        self._turn += 1
        return [[candidate_replicas[i]] for i in order]

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result: Any) -> None:
        seen = self._views.get(replica_id)
        if seen is None:
            return
        stats, view = seen
        routed = view.routed(pending_request.metadata.multiplexed_model_id)
        self._views[replica_id] = (stats, routed)
