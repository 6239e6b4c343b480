"""``deadline``: earliest deadline first, batches sized by the cost model, hopeless requests shed at once.

``batched`` with the scheduler's knowledge of what work costs (``state.costs``, the engine's
online cost model; see docs/costs.md):

- **Order.** Higher priority classes first (1 is the highest, as in Triton; no class is below
  every number), then the earliest deadline, across models and within a model's queue;
  requests without a deadline come after those with one in their class, oldest first.
- **When a worker is free.** Batches run to the end once started (no preemption). The policy
  keeps a timeline of the workers (``state.workers``; the running batches' predicted ends,
  ``RunningBatch.expected_end``, and those waiting for a worker after them), and binds a batch
  with deadlines to a worker only once one is free (Clockwork's late binding: the most urgent
  work at that moment gets it); batches without deadlines fill the engine's prefetch slot as
  under ``batched``.
- **Shedding.** A request whose deadline cannot be met even if its model ran it alone now on
  an idle worker (after loading it, when it is not resident) is shed at once: it fails with
  ``deadline_unmeetable`` (HTTP 503) and the predicted time, rather than take a worker and
  answer late. One whose deadline passes while it waits is failed by the engine
  (``deadline_expired``, 504): nothing runs after its deadline.
- **Batch size.** The largest batch (at most ``max_batch``) whose predicted completion still
  meets the earliest deadline inside it, and that leaves room for tighter work: while requests
  with a tighter budget have been seen lately (``memory`` seconds), a batch of looser ones
  takes at most ``block`` x that budget, so a tight request arriving behind it waits at most
  that long for a worker (the non-preemptive blocking bound); one that cannot be cut so short
  (a single long request) runs only while another worker stays free for tight work.
- **Waiting.** A batch waits for more requests only while every deadline in it still holds
  if it starts later: it starts at the latest by ``earliest deadline - predicted time -
  margin``, and never later than ``max_wait`` after its oldest request (as ``batched``).
  Requests without a deadline behave exactly as under ``batched``.

Without a cost model (``state.costs`` is None, as in hand-built states) it sheds nothing and
sizes batches as ``batched`` does, in deadline order.
"""

from __future__ import annotations

import heapq
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
        block: float = 0.5,
        memory: float | str = 10.0,
        eviction: str = "lru",
    ) -> None:
        if "auto" in (max_batch, max_wait):
            raise ValueError(
                "deadline sizes each batch to its deadlines: max_batch and max_wait take numbers, not 'auto'"
            )
        super().__init__(
            max_batch=max_batch,
            max_wait=max_wait,
            max_resident=max_resident,
            memory_budget=memory_budget,
            eviction=eviction,
        )
        self.margin = parse_seconds(margin)
        if not (isinstance(block, int | float) and 0 < block <= 1):
            raise ValueError(f"block must be a fraction in (0, 1], got {block!r}")
        self.block = float(block)
        self.memory = parse_seconds(memory)
        self._tight = math.inf  # the tightest budget seen lately, and when
        self._tight_seen = -math.inf
        self._free_at: list[float] = []  # this decision's worker timeline (a min-heap)

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "margin": self.margin, "block": self.block, "memory": self.memory}

    def _timeline(self, state: SchedulerState, now: float) -> list[float]:
        """When each worker is next free, as a min-heap: running batches end as predicted, batches
        waiting for a worker take the first free one. Unknown workers (0): every slot is one."""
        workers = state.workers or state.free_slots + len(state.running)
        free_at, waiting = [], []
        for batch in state.running:
            if batch.running_since is None:
                waiting.append(batch.predicted or 0.0)
            else:
                end = batch.expected_end
                free_at.append(now if end is None else max(now, end))
        free_at += [now] * max(0, workers - len(free_at))
        heapq.heapify(free_at)
        if not free_at:
            return [now]
        for seconds in waiting:
            heapq.heapreplace(free_at, free_at[0] + seconds)
        return free_at

    def _see_budget(self, request: QueuedRequest, now: float) -> None:
        if request.deadline is None:
            return
        budget = request.deadline - request.arrival
        if budget <= self._tight or now - self._tight_seen > self.memory:
            self._tight, self._tight_seen = budget, now

    def serve_order(
        self, state: SchedulerState, now: float, decisions: list[Decision]
    ) -> dict[str, Sequence[QueuedRequest]]:
        """Shed what cannot make its deadline; the rest by urgency, the most urgent model first."""
        self._free_at = self._timeline(state, now)
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
            # Hopeless: not even alone on an idle worker (a worker may free sooner than predicted).
            start = now + (self._until_ready(model, state, costs) if costs is not None else 0.0)
            kept = []
            for request in window:
                self._see_budget(request, now)
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
                begins = max(now, self._free_at[0]) if self._free_at else now
                take = group[start : start + self.max_batch]
                cut = False
                if costs is not None:
                    while len(take) > 1 and not self._fits(model, take, begins, now, costs):
                        take, cut = take[:-1], True
                seconds = costs.batch_seconds(model, take) if costs is not None else 0.0
                deadlines = [r.deadline for r in take if r.deadline is not None]
                due = min(r.arrival for r in take) + self.max_wait
                if costs is not None and deadlines:
                    due = min(due, min(deadlines) - seconds - self.margin)
                ready = cut or len(take) >= self.max_batch or now >= due or draining
                if not ready:
                    wake = due if wake is None else min(wake, due)
                    break
                if len(batches) == slots:
                    return batches, wake
                if begins > now and deadlines:
                    # No worker free yet: bind it when one is (the most urgent then gets it); look
                    # again when its earliest deadline becomes hopeless, to shed it then.
                    if costs is not None:
                        hopeless = min(deadlines) - costs.batch_seconds(model, take[:1])
                        wake = hopeless if wake is None else min(wake, hopeless)
                    return batches, wake
                if costs is not None and self._free_at:
                    if self._blocks(take, seconds, now):
                        break  # it would leave no worker for tight work: wait for one to free
                    heapq.heapreplace(self._free_at, begins + seconds)
                batches.append(tuple(r.seq for r in take))
                start += len(take)
        return batches, wake

    def _too_long(self, batch: Sequence[QueuedRequest], seconds: float, now: float) -> bool:
        """A batch of looser work than the tightest budget seen lately (``memory``), longer than
        ``block`` x that budget: a tight request arriving behind it would wait too long."""
        if now - self._tight_seen > self.memory or seconds <= self.block * self._tight:
            return False
        budgets = [r.deadline - r.arrival for r in batch if r.deadline is not None]
        return not budgets or min(budgets) > self._tight

    def _blocks(self, batch: Sequence[QueuedRequest], seconds: float, now: float) -> bool:
        """A batch :meth:`_too_long` may not take the last worker that would be free within ``block``
        x the tightest budget: tight work keeps one (with one worker there is none to keep)."""
        if len(self._free_at) < 2 or not self._too_long(batch, seconds, now):
            return False
        soon = now + self.block * self._tight
        return sum(1 for t in self._free_at if t <= soon) < 2

    def _fits(
        self, model: str, batch: Sequence[QueuedRequest], begins: float, now: float, costs: CostEstimates
    ) -> bool:
        """It meets its earliest deadline starting at ``begins`` and is not :meth:`_too_long`."""
        seconds = costs.batch_seconds(model, batch)
        deadlines = [r.deadline for r in batch if r.deadline is not None]
        if deadlines and begins + seconds > min(deadlines):
            return False
        return not self._too_long(batch, seconds, now)
