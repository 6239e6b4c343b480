"""``eager``: work-conserving batching, an example third-party chronoserve policy.

``batched`` holds a partial batch for up to Δt hoping it fills. ``eager`` never waits:
whenever a worker is free it runs up to ``max_batch`` waiting requests at once, largest
batch-key group first. Under light load every request runs alone and at once; under heavy
load the queue builds while workers are busy, so batches grow by themselves.

It reuses the residency rules of the built-in ``lru`` policy (load, evict, never evict a
busy model) and only replaces how batches are picked.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

from chronoserve.policies import LRUPolicy
from chronoserve.policy import QueuedRequest

__all__ = ["EagerPolicy"]


class EagerPolicy(LRUPolicy):
    name = "eager"

    def __init__(self, max_batch: int = 32, max_resident: int = 3, memory_budget: int | str | None = None) -> None:
        super().__init__(max_resident=max_resident, memory_budget=memory_budget)
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.max_batch = max_batch

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "max_batch": self.max_batch}

    def select_batches(
        self, queue: Sequence[QueuedRequest], now: float, slots: int, draining: bool
    ) -> tuple[list[tuple[int, ...]], float | None]:
        groups: dict[Hashable, list[int]] = {}
        for request in queue:
            groups.setdefault(request.key, []).append(request.seq)
        batches: list[tuple[int, ...]] = []
        for seqs in sorted(groups.values(), key=len, reverse=True):
            for start in range(0, len(seqs), self.max_batch):
                if len(batches) == slots:
                    return batches, None
                batches.append(tuple(seqs[start : start + self.max_batch]))
        return batches, None
