"""``deadline``: earliest deadline first, batches sized by the cost model, hopeless requests shed at once.

``batched`` with the scheduler's knowledge of what work costs (``state.costs``, the engine's
online cost model; see docs/costs.md):

- **Order.** Higher priority classes first (1 is the highest, as in Triton; no class is below
  every number), then the earliest deadline, across models and within a model's queue;
  requests without a deadline come after those with one in their class, oldest first.
- **Shedding.** A request whose deadline cannot be met even if its model ran it alone, now
  (after loading it, when it is not resident), is shed at once: it fails with
  ``deadline_unmeetable`` (HTTP 503) and the predicted time, rather than take a worker and
  answer late. One whose deadline passes while it waits is failed by the engine
  (``deadline_expired``, 504): nothing runs after its deadline.
- **Batch size.** The largest batch (at most ``max_batch``) whose predicted completion still
  meets the earliest deadline inside it.
- **Waiting.** A batch waits for more requests only while every deadline in it still holds
  if it starts later: it starts at the latest by ``earliest deadline - predicted time -
  margin``, and never later than ``max_wait`` after its oldest request (as ``batched``).
  Requests without a deadline behave exactly as under ``batched``.

Without a cost model (``state.costs`` is None, as in hand-built states) it sheds nothing and
sizes batches as ``batched`` does, in deadline order.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

from chronoserve._units import parse_seconds
from chronoserve.policy import CostEstimates, Decision, QueuedRequest, SchedulerState, Shed

from .batched import BatchedPolicy


def urgency(request: QueuedRequest) -> tuple[float, float, float, int]:
    """The order requests are served in: priority class, deadline, arrival."""
    priority = math.inf if request.priority is None else float(request.priority)
    deadline = math.inf if request.deadline is None else request.deadline
    return (priority, deadline, request.arrival, request.seq)


class DeadlinePolicy(BatchedPolicy):
    name = "deadline"

    def __init__(
        self,
        max_batch: int = 32,
        max_wait: float | str = 0.01,
        max_resident: int = 3,
        memory_budget: int | str | None = None,
        margin: float | str = 0.002,
    ) -> None:
        if "auto" in (max_batch, max_wait):
            raise ValueError(
                "deadline sizes each batch to its deadlines: max_batch and max_wait take numbers, not 'auto'"
            )
        super().__init__(max_batch=max_batch, max_wait=max_wait, max_resident=max_resident, memory_budget=memory_budget)
        self.margin = parse_seconds(margin)

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "margin": self.margin}

    def serve_order(
        self, state: SchedulerState, now: float, decisions: list[Decision]
    ) -> dict[str, Sequence[QueuedRequest]]:
        """Shed what cannot make its deadline; the rest by urgency, the most urgent model first."""
        live = self._shed(state, now, decisions)
        return {model: live[model] for model in sorted(live, key=lambda m: urgency(live[m][0]))}

    def model_batches(
        self, model: str, queue: Sequence[QueuedRequest], now: float, slots: int, state: SchedulerState
    ) -> tuple[list[tuple[int, ...]], float | None]:
        return self._batches(model, queue, now, slots, state.draining, state.costs)

    def _shed(self, state: SchedulerState, now: float, decisions: list[Decision]) -> dict[str, list[QueuedRequest]]:
        """Shed the requests that cannot make their deadline; the others per model, most urgent first."""
        costs = state.costs
        live: dict[str, list[QueuedRequest]] = {}
        for model, queue in state.queues.items():
            window = queue[: max(1, state.free_slots) * self.max_batch * self.LOOKAHEAD]
            start = now + (self._until_ready(model, state, costs) if costs is not None else 0.0)
            kept = []
            for request in window:
                if costs is not None and request.deadline is not None:
                    finish = start + costs.batch_seconds(model, [request])
                    if finish > request.deadline:
                        decisions.append(Shed((request.seq,), predicted=finish))
                        continue
                kept.append(request)
            if kept:
                live[model] = sorted(kept, key=urgency)
        return live

    @staticmethod
    def _until_ready(model: str, state: SchedulerState, costs: CostEstimates) -> float:
        """How long before the model can run a batch: 0 when resident, else a load (predicted)."""
        resident = state.models.get(model)
        if resident is not None and resident.status == "ready":
            return 0.0
        if resident is not None and resident.load_seconds is not None:
            return resident.load_seconds  # loading again: as long as last time, at most
        return costs.load_seconds(model, state.model_sizes.get(model, 0))

    def _batches(
        self,
        model: str,
        queue: Sequence[QueuedRequest],
        now: float,
        slots: int,
        draining: bool,
        costs: CostEstimates | None,
    ) -> tuple[list[tuple[int, ...]], float | None]:
        groups: dict[Hashable, list[QueuedRequest]] = {}
        for request in queue:  # most urgent first, so each group is too
            groups.setdefault(request.key, []).append(request)
        batches: list[tuple[int, ...]] = []
        wake: float | None = None
        for group in groups.values():
            start = 0
            while start < len(group):
                take = group[start : start + self.max_batch]
                cut = False
                if costs is not None:
                    while len(take) > 1 and not self._meets(model, take, now, costs):
                        take, cut = take[:-1], True
                oldest = min(r.arrival for r in take)
                due = oldest + self.max_wait
                if costs is not None:
                    deadlines = [r.deadline for r in take if r.deadline is not None]
                    if deadlines:
                        due = min(due, min(deadlines) - costs.batch_seconds(model, take) - self.margin)
                ready = cut or len(take) >= self.max_batch or now >= due or draining
                if not ready:
                    wake = due if wake is None else min(wake, due)
                    break
                if len(batches) == slots:
                    return batches, wake
                batches.append(tuple(r.seq for r in take))
                start += len(take)
        return batches, wake

    @staticmethod
    def _meets(model: str, batch: Sequence[QueuedRequest], now: float, costs: CostEstimates) -> bool:
        deadlines = [r.deadline for r in batch if r.deadline is not None]
        return not deadlines or now + costs.batch_seconds(model, batch) <= min(deadlines)
