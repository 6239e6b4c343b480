"""Ray Serve's request router for chronoserve engines: each request to the replica where its model
will be ready soonest (placement by readiness, :mod:`chronoserve.placement`).

Ray Serve polls every replica's ``record_routing_stats`` (an engine's
:class:`~chronoserve.placement.Readiness`, as a dict) every ``request_routing_stats_period_s``
and hands them to :meth:`ReadinessRouter.choose_replicas` with each request's model (its
``multiplexed_model_id``). The router ranks the replicas with :func:`~chronoserve.placement.rank`,
one replica a rank, so Ray tries the best first and falls back to the next when a replica is
full. Ray asks a replica how full it is before sending it a request, and moves on to the next
rank when the answer is late (0.1 s at first, doubling with each try, up to 1 s): on a loaded
machine a replica holding the model would lose its requests to one that must load it (and push
another model out, whose requests then move too). So where the best replica holds the model,
it is the only rank: Ray asks it again (with backoff) until it answers, and a request leaves its
model's replica only when the ranking itself says so (its queue outlasts a load elsewhere by the
spill margin). For a model no replica holds, every replica is a rank, the best offered
``PATIENCE`` times first.

Between two polls the router counts what it routed itself (the model is on its way to that
replica, one more request's work is queued there), as :class:`~chronoserve.placement.Router` does,
counts it again on a report taken before it was routed (each report says when it was taken), and
ages each view by the time since (:meth:`~chronoserve.placement.Readiness.after`: a report
taken while a batch ran does not keep that batch's time after it finished).

The router also keeps the registry of :mod:`._routers`, where a front end finds the replicas
and where each one's engine serves front ends (:func:`addresses`, what :mod:`.frontdoor`
connects to).
"""

from __future__ import annotations

import time
from typing import Any

from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica

from chronoserve.placement import Readiness, rank

from . import _routers

#: Tries at the best replica before the next (Ray's probe deadline doubles each: 0.1, 0.2, 0.4 s).
PATIENCE = 3
#: Seconds a replica has to say how full it is (doubling with each try, up to MAX_PROBE_S).
PROBE_S = 0.5
MAX_PROBE_S = 5.0
#: Placements kept per replica for its next report (a bound, should reports stop coming).
_MAX_SENT = 10_000
#: The routing stats' key of when they were taken (wall-clock seconds: ``time.time()``).
TAKEN = "taken"
#: The routing stats' key of the address where a replica's engine serves front ends.
ADDRESS = "address"


def addresses(app: str, deployment: str) -> dict[str, str]:
    """Where each running replica of ``deployment`` that this process's router knows serves front
    ends (its routing stats' ``address``), by replica id."""
    router = _routers.ROUTERS.get((app, deployment))
    if router is None:
        return {}
    replicas = list(router.curr_replicas.items())  # the router's thread may change it meanwhile
    found = {rid.unique_id: (replica.routing_stats or {}).get(ADDRESS) for rid, replica in replicas}
    return {replica: str(address) for replica, address in sorted(found.items()) if address}


class ReadinessRouter(RequestRouter):  # type: ignore[misc]  # ray is not analysed (an extra)
    """Ranks replicas by when each would start the request (queue wait, load estimate by tier)."""

    # Ray gives a replica 0.1 s (doubling to 1 s) to say how full it is before trying another;
    # a replica that must load the model costs a load, so this router gives it longer.
    queue_len_response_deadline_s = PROBE_S
    max_queue_len_response_deadline_s = MAX_PROBE_S

    def initialize_state(self, **kwargs: Any) -> None:
        self._turn = 0
        # Per replica: the stats dict the view was read from, the view with what was routed since,
        # and when that view was last brought up to date (it ages: the work in it drains).
        self._views: dict[ReplicaID, tuple[Any, Readiness, float]] = {}
        # Per replica: what was routed there and when (wall clock): a report taken before is given it back.
        self._sent: dict[ReplicaID, list[tuple[float, str]]] = {}
        _routers.ROUTERS[(self._deployment_id.app_name, self._deployment_id.name)] = self

    def _view(self, replica: RunningReplica, now: float) -> Readiness:
        stats = replica.routing_stats
        seen = self._views.get(replica.replica_id)
        if seen is not None and seen[0] is stats:
            view = seen[1].after(now - seen[2])
        else:
            view = Readiness.from_dict(stats) if stats else Readiness(backlog=0.0)
            taken = (stats or {}).get(TAKEN)
            if taken is not None:  # what was routed there since the report was taken, it had not seen
                since = [(at, model) for at, model in self._sent.get(replica.replica_id, []) if at >= taken]
                self._sent[replica.replica_id] = since
                for _, model in since:
                    view = view.routed(model)
        self._views[replica.replica_id] = (stats, view, now)
        return view

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        model = pending_request.metadata.multiplexed_model_id if pending_request is not None else ""
        now = time.monotonic()
        views = [self._view(r, now) for r in candidate_replicas]
        order = rank(model, views, self._turn % len(candidate_replicas))
        self._turn += 1
        best, *rest = (candidate_replicas[i] for i in order)
        if model and views[order[0]].tiers.get(model) == "resident":
            return [[best]]  # its model is there: wait for it rather than copy the model on a late probe
        return [[best]] * PATIENCE + [[r] for r in rest]

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result: Any) -> None:
        model = pending_request.metadata.multiplexed_model_id
        seen = self._views.get(replica_id)
        if seen is None:
            return
        stats, view, at = seen
        self._views[replica_id] = (stats, view.routed(model), at)
        sent = self._sent.setdefault(replica_id, [])
        sent.append((time.time(), model))
        if len(sent) > _MAX_SENT:  # no report has come for a long while: keep the latest
            del sent[: len(sent) - _MAX_SENT // 2]
