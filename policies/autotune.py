"""Self-tuning batching (OASIS phase 2, runtime adaptation): B, Δt and workers from load and cost.

``batched --max-batch auto --max-wait-ms auto --slo-p95-ms X`` re-chooses, per model, as the
load changes:

- the **arrival rate** λ: requests that reached the model's queue in the last ``window``
  seconds (:class:`RateMeter`, read from the queues the policy is shown: pure);
- the **batch time** c(n) of n requests like the newest one, from the engine's cost model
  (``state.costs``), on a grid of n;
- among the (W, n) that keep up with utilisation ρ = λ·c(n) / (W·n) at most ``utilisation``
  and whose predicted p95 stays within the SLO, with ``objective="latency"`` the fewest
  workers W first (at low load, fewer batches at once: no co-location slowdown), then the
  smallest n (the lowest latency); with ``objective="cpu"`` the least predicted CPU per
  forecast, c(n)/n (larger batches, waited for: energy within the SLO, as OASIS), fewer W
  first. The predicted p95 is
  ``p95 ≈ Δt + c(n) · (1 + ρ / (1 − ρ))`` with ``Δt = (n − 1) / λ`` (the time n requests take
  to arrive: a batch waits for as many as it needs, no longer), a queueing allowance that
  grows as ρ nears 1;
- when nothing fits, or a **backlog** has formed (what waits would take more than half the
  SLO to clear as tuned), it drains: every worker, the largest batches (``batch_limit``: the
  most forecasts a second), no waiting. A burst is seen at once in the queue, before the rate
  window has caught up. With no rate measured yet (the first request), every worker and
  batches within half the SLO.

A choice is kept for ``every`` seconds unless the rate moved by more than a quarter. The
model is a heuristic (M/D/W-like queueing, a cost model that predicts the batch beside the
neighbours running now); docs/deadlines.md measures it against a grid of fixed B/Δt.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from chronoserve.policy import CostEstimates, QueuedRequest, SchedulerState

#: ``latency``: the fewest batches at once, then the smallest batch that keeps the SLO (the lowest
#: latency); ``cpu``: of all that keep it, the least predicted CPU per forecast, c(n)/n (larger
#: batches, waiting longer for them: OASIS's energy-within-SLO), the fewest batches at once first.
OBJECTIVES = ("latency", "cpu")

#: The batch sizes tried: c(n) is smooth in n, so a geometric grid is enough.
GRID: tuple[int, ...] = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128)


class RateMeter:
    """Arrivals per second per model over the last ``window`` seconds, read from the queues."""

    def __init__(self, window: float = 2.0, max_events: int = 65_536) -> None:
        self.window = window
        self.max_events = max_events
        self._arrivals: dict[str, deque[float]] = {}
        self._newest: dict[str, tuple[float, int]] = {}

    def observe(self, state: SchedulerState) -> None:
        """Count the requests that joined each queue since the last call (the queues' tails)."""
        for model, queue in state.queues.items():
            newest = self._newest.get(model, (-math.inf, -1))
            fresh: list[float] = []
            for i in range(len(queue) - 1, -1, -1):  # the queue is in arrival order: new ones at the end
                request = queue[i]
                if (request.arrival, request.seq) <= newest:
                    break
                fresh.append(request.arrival)
            if fresh:
                self._newest[model] = (queue[-1].arrival, queue[-1].seq)
                times = self._arrivals.setdefault(model, deque(maxlen=self.max_events))
                times.extend(reversed(fresh))

    def rate(self, model: str, now: float) -> float:
        """Requests per second that arrived in ``(now - window, now]``."""
        times = self._arrivals.get(model)
        if not times:
            return 0.0
        while times and times[0] <= now - self.window:
            times.popleft()
        return len(times) / self.window


@dataclass(frozen=True)
class Tuning:
    """What the tuner chose for one model, and why."""

    max_batch: int
    max_wait: float
    concurrency: int
    """Batches of this model at once: at most one per worker (the engine's slots count a prefetch slot too)."""
    rate: float
    """The arrival rate it was chosen for (requests per second)."""
    batch_seconds: float
    """The predicted time of a batch of ``max_batch``."""
    predicted_p95: float | None
    """Seconds; None when nothing kept the SLO (draining: every worker, large batches)."""
    chosen_at: float

    def to_dict(self) -> dict[str, object]:
        return {
            "max_batch": self.max_batch,
            "max_wait": round(self.max_wait, 6),
            "concurrency": self.concurrency,
            "rate": round(self.rate, 3),
            "predicted_p95": None if self.predicted_p95 is None else round(self.predicted_p95, 6),
        }


class BatchTuner:
    """Chooses (B, Δt, workers) per model; ``fixed_batch``/``fixed_wait`` pin one of them."""

    def __init__(
        self,
        slo_p95: float,
        *,
        fixed_batch: int | None = None,
        fixed_wait: float | None = None,
        batch_limit: int = 64,
        utilisation: float = 0.7,
        every: float = 0.25,
        objective: str = "latency",
    ) -> None:
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
        if not (math.isfinite(slo_p95) and slo_p95 > 0):
            raise ValueError(f"slo_p95 must be a number of seconds > 0, got {slo_p95!r}")
        if not 0 < utilisation < 1:
            raise ValueError(f"utilisation must lie in (0, 1), got {utilisation!r}")
        self.slo = slo_p95
        self.fixed_batch = fixed_batch
        self.fixed_wait = fixed_wait
        self.grid = (fixed_batch,) if fixed_batch is not None else tuple(n for n in GRID if n <= batch_limit)
        self.utilisation = utilisation
        self.every = every
        self.objective = objective
        self.meter = RateMeter()
        self.chosen: dict[str, Tuning] = {}

    def tuning(
        self,
        model: str,
        queue: Sequence[QueuedRequest],
        now: float,
        slots: int,
        costs: CostEstimates | None,
        workers: int = 0,
    ) -> Tuning:
        """The model's current choice (re-chosen when stale, when its rate moved, or on a backlog).

        ``slots``: the engine's batch slots (workers and prefetch), what a drain uses; ``workers``:
        how many batches really run at once (0: unknown, as many as slots), what a choice may use."""
        rate = self.meter.rate(model, now)
        last = self.chosen.get(model)
        # A backlog: what waits would take longer than half the SLO to clear as tuned.
        backlog = (
            last is not None and -(-len(queue) // last.max_batch) * last.batch_seconds / last.concurrency > self.slo / 2
        )
        fresh = (
            last is not None
            and now - last.chosen_at < self.every
            and abs(rate - last.rate) <= 0.25 * max(last.rate, 1.0)
            and last.concurrency <= slots
        )
        if fresh and not backlog and last is not None:
            return last
        if costs is None:  # nothing to predict with: batched's defaults, every worker
            choice = Tuning(self.fixed_batch or 32, _or(self.fixed_wait, 0.01), slots, rate, 0.0, None, now)
        else:
            sample = queue[-1]  # the newest request stands for what is arriving
            choice = self._choose(model, sample, rate, slots, workers or slots, costs, now, backlog=backlog)
        self.chosen[model] = choice
        return choice

    def _choose(
        self,
        model: str,
        sample: QueuedRequest,
        rate: float,
        slots: int,
        workers: int,
        costs: CostEstimates,
        now: float,
        *,
        backlog: bool,
    ) -> Tuning:
        cost = {n: costs.batch_seconds(model, [sample] * n) for n in self.grid}
        if not backlog and rate > 0:
            feasible = []
            for w in range(1, max(1, min(workers, slots)) + 1):
                for n in self.grid:
                    rho = rate * cost[n] / (w * n)
                    if rho > self.utilisation:
                        continue
                    wait = _or(self.fixed_wait, (n - 1) / rate)
                    p95 = wait + cost[n] * (1.0 + rho / (1.0 - rho))
                    if p95 <= self.slo:
                        if self.objective == "latency":
                            return Tuning(n, wait, w, rate, cost[n], p95, now)
                        feasible.append((cost[n] / n, w, n, wait, p95))
            if feasible:
                _, w, n, wait, p95 = min(feasible)
                return Tuning(n, wait, w, rate, cost[n], p95, now)
        if backlog or rate > 0:
            # Draining (the SLO cannot hold): every worker, the largest batch, the most forecasts a second.
            n = max(self.grid)
        else:  # nothing measured yet: every worker, the largest batch within half the SLO
            n = max([n for n in self.grid if cost[n] <= self.slo / 2] or [self.grid[0]])
        return Tuning(n, _or(self.fixed_wait, 0.0), max(1, slots), rate, cost[n], None, now)


def _or(value: float | None, default: float) -> float:
    return default if value is None else value
