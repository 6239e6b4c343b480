"""``batched``: ``lru`` residency plus per-model batching.

A model's waiting requests are grouped by batch key (only requests whose answers cannot
change by sharing a batch share a key). A group is dispatched as soon as ``max_batch``
(B) of its requests are waiting, or ``max_wait`` (Δt) seconds after its oldest request
arrived, whichever comes first, and only on a free worker: while all workers are busy,
requests keep gathering, so batches grow with the load.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

from chronoserve._units import parse_seconds
from chronoserve.policy import QueuedRequest

from .lru import LRUPolicy


class BatchedPolicy(LRUPolicy):
    name = "batched"

    def __init__(
        self,
        max_batch: int = 32,
        max_wait: float | str = 0.01,
        max_resident: int = 3,
        memory_budget: int | str | None = None,
    ) -> None:
        super().__init__(max_resident=max_resident, memory_budget=memory_budget)
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch must be an integer >= 1, got {max_batch!r}")
        self.max_batch = max_batch
        self.max_wait = parse_seconds(max_wait)

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "max_batch": self.max_batch, "max_wait": self.max_wait}

    #: How many batches' worth of the queue's head one decision reads: ``slots * max_batch *
    #: LOOKAHEAD`` requests. A backlog of N is then drained at a cost of O(N) in all, not O(N^2 / B)
    #: (reading every waiting request for every batch); requests further back (later arrivals) are
    #: read once those ahead of them have gone, or their group's Δt fires a decision.
    LOOKAHEAD = 4

    def select_batches(
        self, queue: Sequence[QueuedRequest], now: float, slots: int, draining: bool
    ) -> tuple[list[tuple[int, ...]], float | None]:
        groups: dict[Hashable, list[QueuedRequest]] = {}
        window = max(1, slots) * self.max_batch * self.LOOKAHEAD
        for request in queue[:window] if len(queue) > window else queue:
            groups.setdefault(request.key, []).append(request)
        batches: list[tuple[int, ...]] = []
        wake: float | None = None
        # Groups in order of their oldest request (dict order follows the queue).
        for group in groups.values():
            start = 0
            while start < len(group):
                head = group[start]
                due = head.arrival + self.max_wait
                ready = len(group) - start >= self.max_batch or now >= due or draining
                if not ready:
                    wake = due if wake is None else min(wake, due)
                    break
                if len(batches) == slots:
                    return batches, wake
                batches.append(tuple(r.seq for r in group[start : start + self.max_batch]))
                start += self.max_batch
        return batches, wake
