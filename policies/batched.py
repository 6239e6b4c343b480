"""``batched``: ``lru`` residency plus per-model batching.

A model's waiting requests are grouped by batch key (only requests whose answers cannot
change by sharing a batch share a key). A group is dispatched as soon as ``max_batch``
(B) of its requests are waiting, or ``max_wait`` (Δt) seconds after its oldest request
arrived, whichever comes first, and only on a free worker: while all workers are busy,
requests keep gathering, so batches grow with the load.

``max_batch="auto"`` and/or ``max_wait="auto"`` with ``slo_p95`` (seconds) choose them per
model from the arrival rate and the engine's cost model, and use fewer workers at low load
when that keeps the SLO (:mod:`chronoserve.policies.autotune`).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

from chronoserve._units import parse_seconds
from chronoserve.policy import Decision, QueuedRequest, SchedulerState

from .autotune import BatchTuner
from .lru import LRUPolicy

AUTO = "auto"


class BatchedPolicy(LRUPolicy):
    name = "batched"

    def __init__(
        self,
        max_batch: int | str = 32,
        max_wait: float | str = 0.01,
        max_resident: int = 3,
        memory_budget: int | str | None = None,
        slo_p95: float | str | None = None,
        batch_limit: int = 64,
        objective: str = "latency",
        eviction: str = "lru",
    ) -> None:
        super().__init__(max_resident=max_resident, memory_budget=memory_budget, eviction=eviction)
        auto_batch, auto_wait = max_batch == AUTO, max_wait == AUTO
        if not auto_batch and (isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1):
            raise ValueError(f"max_batch must be an integer >= 1 or 'auto', got {max_batch!r}")
        if isinstance(batch_limit, bool) or not isinstance(batch_limit, int) or batch_limit < 1:
            raise ValueError(f"batch_limit must be an integer >= 1, got {batch_limit!r}")
        self.max_batch = batch_limit if auto_batch else int(max_batch)
        self.max_wait = 0.0 if auto_wait else parse_seconds(max_wait)
        self.tuner: BatchTuner | None = None
        if auto_batch or auto_wait:
            if slo_p95 is None:
                raise ValueError("max_batch or max_wait 'auto' needs slo_p95 (the p95 latency to keep, e.g. '200ms')")
            self.tuner = BatchTuner(
                parse_seconds(slo_p95),
                fixed_batch=None if auto_batch else self.max_batch,
                fixed_wait=None if auto_wait else self.max_wait,
                batch_limit=batch_limit,
                objective=objective,
            )
        elif slo_p95 is not None or objective != "latency":
            raise ValueError("slo_p95 and objective are only used with max_batch or max_wait 'auto'")

    def describe(self) -> dict[str, object]:
        if self.tuner is None:
            return {**super().describe(), "max_batch": self.max_batch, "max_wait": self.max_wait}
        return {
            **super().describe(),
            "max_batch": AUTO if self.tuner.fixed_batch is None else self.max_batch,
            "max_wait": AUTO if self.tuner.fixed_wait is None else self.max_wait,
            "slo_p95": self.tuner.slo,
            "objective": self.tuner.objective,
            "tuned": {model: t.to_dict() for model, t in sorted(self.tuner.chosen.items())},
        }

    def decide(self, state: SchedulerState, now: float) -> Sequence[Decision]:
        if self.tuner is not None:
            self.tuner.meter.observe(state)
        return super().decide(state, now)

    def model_batches(
        self, model: str, queue: Sequence[QueuedRequest], now: float, slots: int, state: SchedulerState
    ) -> tuple[list[tuple[int, ...]], float | None]:
        if self.tuner is None:
            return self.select_batches(queue, now, slots, state.draining)
        slots_total = state.free_slots + len(state.running)
        tuning = self.tuner.tuning(model, queue, now, slots_total, state.costs, state.workers)
        running = state.models[model].running if model in state.models else 0
        allowed = min(slots, max(0, tuning.concurrency - running))
        return self._select(queue, now, allowed, state.draining, tuning.max_batch, tuning.max_wait)

    #: How many batches' worth of the queue's head one decision reads: ``slots * max_batch *
    #: LOOKAHEAD`` requests. A backlog of N is then drained at a cost of O(N) in all, not O(N^2 / B)
    #: (reading every waiting request for every batch); requests further back (later arrivals) are
    #: read once those ahead of them have gone, or their group's Δt fires a decision.
    LOOKAHEAD = 4

    def select_batches(
        self, queue: Sequence[QueuedRequest], now: float, slots: int, draining: bool
    ) -> tuple[list[tuple[int, ...]], float | None]:
        return self._select(queue, now, slots, draining, self.max_batch, self.max_wait)

    def _select(
        self, queue: Sequence[QueuedRequest], now: float, slots: int, draining: bool, max_batch: int, max_wait: float
    ) -> tuple[list[tuple[int, ...]], float | None]:
        groups: dict[Hashable, list[QueuedRequest]] = {}
        window = max(1, slots) * max_batch * self.LOOKAHEAD
        for request in queue[:window] if len(queue) > window else queue:
            groups.setdefault(request.key, []).append(request)
        batches: list[tuple[int, ...]] = []
        wake: float | None = None
        # Groups in order of their oldest request (dict order follows the queue).
        for group in groups.values():
            start = 0
            while start < len(group):
                head = group[start]
                due = head.arrival + max_wait
                ready = len(group) - start >= max_batch or now >= due or draining
                if not ready:
                    wake = due if wake is None else min(wake, due)
                    break
                if len(batches) == slots:
                    return batches, wake
                batches.append(tuple(r.seq for r in group[start : start + max_batch]))
                start += max_batch
        return batches, wake
