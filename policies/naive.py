"""``naive``: load the model for each request, run it alone, unload it.

The seed study's baseline server. Every request is a cold start; nothing stays resident.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

from chronoserve.policy import Decision, Dispatch, Policy, SchedulerState


class NaivePolicy(Policy):
    name = "naive"

    def decide(self, state: SchedulerState, now: float) -> Sequence[Decision]:
        if state.free_slots <= 0 or not state.queues:
            return []
        oldest_first = heapq.merge(*state.queues.values(), key=lambda r: (r.arrival, r.seq))
        decisions: list[Decision] = []
        for request in oldest_first:
            if len(decisions) == state.free_slots:
                break
            decisions.append(Dispatch(request.model, (request.seq,), ephemeral=True))
        return decisions
