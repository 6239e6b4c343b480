"""``bentoml``: a port of BentoML's adaptive batching dispatcher (``CorkDispatcher``), as a baseline.

Ported from ``src/bentoml/_internal/marshal/dispatcher.py`` of bentoml/BentoML at commit
32230a5276a8da8b23c4a06a9ec6272c1993451a (``Optimizer`` and ``CorkDispatcher``), with ``lru``'s
residency rules around it. One dispatcher per model; what each does, as in BentoML:

- **The model of a batch.** A batch of n takes ``o_a * n + o_b`` seconds, fitted by least squares
  (``numpy.linalg.lstsq``'s minimum-norm solution, reproduced exactly) over the last
  ``N_KEPT_SAMPLE`` = 50 finished batches, after skipping the first ``N_SKIPPED_SAMPLE`` = 2; refitted
  when a batch finishes if a token bucket allows (one refit per ``INTERVAL_REFRESH_PARAMS`` = 5 s,
  the first at once), and after each training step. Priors: ``o_a = min(2, L * 2/30)``, ``o_b =
  min(1, L / 30)`` (L: ``max_latency``); a fit is clipped to ``o_a >= 1e-6``, ``o_b >= 0``. ``wait``
  is the mean, over the same samples, of the age of a batch's oldest request when it was
  dispatched (0 for the training batches).
- **Warm-up** (``CorkDispatcher.controller``): ``train_optimizer(2, 8, 1)``, then ``(6, 1, 1)``,
  ``(5, 1, 2)`` and ``(3, 1, 3)`` (required requests, batches to dispatch, training batch size), a
  refit after each of the last three. A training batch takes what is queued (up to ``max_batch``);
  with a training batch size s > 1 it waits while ``n < s`` and ``s*a + b + w0 <= min(0.95 L,
  (2s + 1) a + b)`` (that bound taken when the step begins). During warm-up the oldest request is
  cancelled only if it has waited L already and ``n > required - dispatched``.
- **Every tick** (``TICKET_INTERVAL`` = 1 ms), n queued, w0 the oldest's age, wn the newest's:
  if ``n > 1`` and ``w0 + a*n + b >= L`` the oldest is cancelled (HTTP 503); else, if a batch is
  in flight, the oldest is cancelled if it is alone and ``w0 >= L``, else it waits; else it waits
  while ``n < max_batch`` and ``n * (wn + tick + a) <= 0.95 * wait`` (``decay``); else up to
  ``max_batch`` are dispatched (oldest first). At most one batch in flight (``NonBlockSema(1)``).

Where chronoserve differs (and what that changes):

- **Learning from the state.** BentoML times each batch around its call. Here the policy sees
  only states: a batch it dispatched (its ``RunningBatch``: model, size, start) that has left
  ``state.running`` finished at about ``now`` (the engine decides again as a batch ends), so its
  duration is ``now - started``: the time from dispatch to the end, a wait for a worker included
  (with ``prefetch``), as BentoML's includes its event loop's. A batch that failed is counted too
  (BentoML logs successes only); the policy cannot tell them apart.
- **Ticks.** Instead of waking every millisecond, a dispatcher that waits asks for ``WakeAt`` the
  time its rules would next change their answer if nothing else happened (a cancel falling due,
  the wait rule turning), never sooner than ``now + tick``: the same decisions, up to the tick,
  without a thousand decisions a second. Arrivals and finished batches wake it as they come.
- **Cancelling** is a ``Fail`` (``Rejected``, HTTP 503 with the reason, as BentoML's
  ``ServiceUnavailable("process is overloaded")``), not a ``Shed``: ``Shed`` is for requests with a
  deadline, and BentoML cancels any request, with or without one.
- **Batch keys.** BentoML's queue is one list; here only requests with equal ``QueuedRequest.key``
  share a batch: a batch is the oldest request and the next ones with its key (up to
  ``max_batch``, read from the first ``4 * max_batch`` queued). n counts the model's whole queue,
  as BentoML's counts its dispatcher's: that is its queue-length bound, ``(L - b) / a``.
- **Units.** A request is one unit of ``max_batch`` (BentoML counts rows, and splits a request
  across two batches; chronoserve never splits one).
- **The semaphore.** Besides ``max_in_flight`` (default 1, as BentoML) a dispatcher is "locked"
  while its model is not resident (``lru`` loads it) or no engine slot is free.
- **Draining.** When the engine drains, no dispatcher waits for a fuller batch (BentoML cancels
  what is queued at shutdown); the cancel rules still hold.
- **Default ``max_latency``** is 60 s, BentoML's default ``max_latency_ms`` since June 2023 (PR
  #3983, commit f4ebaa363; it was 10 000 ms before).
- **No warning.** BentoML warns once warm-up ends if ``a + b >= L``; a policy does no I/O, so
  ``AdaptiveDispatcherPolicy.dispatchers[model].optimizer`` shows the fit instead.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from chronoserve._units import parse_seconds
from chronoserve.policy import (
    Decision,
    Dispatch,
    Fail,
    QueuedRequest,
    RunningBatch,
    SchedulerState,
    WakeAt,
)

from .lru import LRUPolicy

#: CorkDispatcher.TICKET_INTERVAL: the poll interval, seconds.
TICKET_INTERVAL = 0.001
#: The decay of the wait rule (``decay = 0.95`` in CorkDispatcher.controller).
DECAY = 0.95
#: CorkDispatcher.controller's training steps: (num_required_reqs, num_reqs_to_train, training_batch_size).
WARMUP: tuple[tuple[int, int, int], ...] = ((2, 8, 1), (6, 1, 1), (5, 1, 2), (3, 1, 3))


class TokenBucket:
    """BentoML's ``utils.alg.TokenBucket`` on the engine's clock."""

    def __init__(self, init_amount: float, now: float) -> None:
        self._amount = init_amount
        self._last_consume_time = now

    def consume(self, take_amount: float, avg_rate: float, burst_size: float, now: float) -> bool:
        inc = (now - self._last_consume_time) * avg_rate
        current_amount = min(inc + self._amount, burst_size)
        if take_amount > current_amount:
            return False
        self._amount, self._last_consume_time = current_amount - take_amount, now
        return True


def fit_line(samples: Sequence[tuple[int, float]]) -> tuple[float, float]:
    """``numpy.linalg.lstsq([(n, 1), ...], [y, ...], rcond=None)[0]``: least squares, and when every n
    is equal (rank 1) the minimum-norm solution, ``mean(y) * (n, 1) / (n^2 + 1)``."""
    count = len(samples)
    mean_n = sum(n for n, _ in samples) / count
    mean_y = sum(y for _, y in samples) / count
    sxx = sum((n - mean_n) ** 2 for n, _ in samples)
    if sxx == 0.0:
        n0 = samples[0][0]
        return mean_y * n0 / (n0 * n0 + 1), mean_y / (n0 * n0 + 1)
    a = sum((n - mean_n) * (y - mean_y) for n, y in samples) / sxx
    return a, mean_y - a * mean_n


class Optimizer:
    """BentoML's ``Optimizer``: duration = o_a * n + o_b, fitted on the batches seen."""

    N_KEPT_SAMPLE = 50  # amount of outbound info kept for inferring params
    N_SKIPPED_SAMPLE = 2  # amount of outbound info skipped after init
    INTERVAL_REFRESH_PARAMS = 5  # seconds between each params refreshing

    def __init__(self, max_latency: float, now: float) -> None:
        self.o_stat: deque[tuple[int, float, float]] = deque(maxlen=self.N_KEPT_SAMPLE)
        self.o_a = min(2.0, max_latency * 2.0 / 30)
        self.o_b = min(1.0, max_latency * 1.0 / 30)
        self.wait = 0.0  # the avg wait time before outbound called
        self._refresh_tb = TokenBucket(2, now)  # to limit params refresh interval
        self.outbound_counter = 0
        self.refits = 0

    def log_outbound(self, n: int, wait: float, duration: float, now: float) -> None:
        if self.outbound_counter <= self.N_SKIPPED_SAMPLE + 4:
            self.outbound_counter += 1
            # skip inaccurate info at beginning
            if self.outbound_counter <= self.N_SKIPPED_SAMPLE:
                return
        self.o_stat.append((n, duration, wait))
        if self._refresh_tb.consume(1, 1.0 / self.INTERVAL_REFRESH_PARAMS, 1, now):
            self.trigger_refresh()

    def trigger_refresh(self) -> None:
        if not self.o_stat:
            return
        o_a, o_b = fit_line([(n, d) for n, d, _ in self.o_stat])
        o_w = sum(w for _, _, w in self.o_stat) * 1.0 / len(self.o_stat)
        self.o_a, self.o_b = max(0.000001, o_a), max(0.0, o_b)
        self.wait = max(0.0, o_w)
        self.refits += 1


@dataclass
class _Queue:
    """A model's queue as a dispatcher consumes it during one decision (nothing copied)."""

    view: Sequence[QueuedRequest]
    gone: set[int] = field(default_factory=set)
    head: int = 0
    tail: int = -1
    left: int = 0
    """Requests still queued."""

    def __post_init__(self) -> None:
        self.tail = len(self.view) - 1
        self.left = len(self.view)

    def first(self) -> QueuedRequest:
        while self.view[self.head].seq in self.gone:
            self.head += 1
        return self.view[self.head]

    def last(self) -> QueuedRequest:
        while self.view[self.tail].seq in self.gone:
            self.tail -= 1
        return self.view[self.tail]

    def pop_first(self) -> QueuedRequest:
        request = self.first()
        self.gone.add(request.seq)
        self.left -= 1
        return request

    def take(self, max_batch: int, window: int) -> tuple[int, ...]:
        """The oldest request and the next ones with its batch key, up to ``max_batch``."""
        key = self.first().key
        seqs: list[int] = []
        for request in self.view[self.head : self.head + window]:
            if request.seq not in self.gone and request.key == key:
                seqs.append(request.seq)
                if len(seqs) == max_batch:
                    break
        self.gone.update(seqs)
        self.left -= len(seqs)
        return tuple(seqs)


@dataclass
class Tick:
    """What a dispatcher did at one instant."""

    cancelled: list[tuple[int, str]] = field(default_factory=list)
    batches: list[tuple[tuple[int, ...], float]] = field(default_factory=list)
    """(seqs, the wait logged for it: the oldest's age, 0 for a training batch)."""
    wake: float | None = None


class CorkDispatcher:
    """One model's dispatcher: BentoML's ``CorkDispatcher.controller`` loop, one instant at a time."""

    LOOKAHEAD = 4

    def __init__(self, max_latency: float, max_batch: int, tick: float, now: float) -> None:
        self.max_latency = max_latency
        self.max_batch = max_batch
        self.tick = tick
        self.optimizer = Optimizer(max_latency, now)
        self.step = 0  # index into WARMUP; len(WARMUP) once trained
        self.req_count = 0
        self.step_wait = self._training_wait()

    @property
    def trained(self) -> bool:
        return self.step >= len(WARMUP)

    def _training_wait(self) -> float:
        if self.trained:
            return 0.0
        size = min(WARMUP[self.step][2], self.max_batch)
        if size <= 1:
            return 0.0
        # wait for at most approximated time to process 2n + 1 requests
        return min(self.max_latency * 0.95, (size * 2 + 1) * self.optimizer.o_a + self.optimizer.o_b)

    def _trained_one(self) -> None:
        self.req_count += 1
        if self.req_count < WARMUP[self.step][1]:
            return
        if self.step >= 1:  # the controller refits after each step but the first
            self.optimizer.trigger_refresh()
        self.step += 1
        self.req_count = 0
        self.step_wait = self._training_wait()

    def run(self, queue: Sequence[QueuedRequest], now: float, can_start: int, draining: bool) -> Tick:
        """Run the controller's loop at ``now`` until it sleeps; ``can_start`` batches may start."""
        out = Tick()
        q = _Queue(queue)
        window = self.max_batch * self.LOOKAHEAD
        big = self.max_latency
        due: list[float] = []
        while q.left > 0:
            due = []  # when the rules may answer otherwise at this head, if nothing else happens
            n = q.left
            oldest = q.first()
            w0 = now - oldest.arrival
            a, b = self.optimizer.o_a, self.optimizer.o_b
            locked = len(out.batches) >= can_start
            if not self.trained:
                required, _, size = WARMUP[self.step]
                size = min(size, self.max_batch)
                # only cancel requests if there are more than enough for training
                may_cancel = n > required - self.req_count
                if may_cancel and w0 >= big:
                    out.cancelled.append((q.pop_first().seq, self._reason(w0, None)))
                    continue
                if may_cancel:
                    due.append(oldest.arrival + big)
                if size > 1 and not draining and n < size and (size * a + b) + w0 <= self.step_wait:
                    due.append(oldest.arrival + self.step_wait - size * a - b)
                    break
                if locked:
                    break
                out.batches.append((q.take(self.max_batch, window), 0.0))  # fake wait as 0 for training
                self._trained_one()
                continue
            latency_0 = w0 + a * n + b  # the oldest's latency if its batch began now
            if n > 1 and latency_0 >= big:
                out.cancelled.append((q.pop_first().seq, self._reason(w0, latency_0)))
                continue
            if n > 1:
                due.append(oldest.arrival + big - a * n - b)
            if locked:
                if n == 1 and w0 >= big:
                    out.cancelled.append((q.pop_first().seq, self._reason(w0, None)))
                    continue
                if n == 1:
                    due.append(oldest.arrival + big)
                break
            wn = now - q.last().arrival
            dt = self.tick
            if not draining and n < self.max_batch and n * (wn + dt + a) <= self.optimizer.wait * DECAY:
                due.append(q.last().arrival + self.optimizer.wait * DECAY / n - dt - a)
                break
            out.batches.append((q.take(self.max_batch, window), w0))
        if q.left > 0 and due:
            out.wake = max(now + self.tick, min(due))
        return out

    def _reason(self, waited: float, predicted: float | None) -> str:
        if predicted is None:
            why = f"it waited {waited:.3f} s"
        else:
            why = f"it waited {waited:.3f} s and its batch would end {predicted:.3f} s after it arrived"
        return f"process is overloaded: {why}, reaching max_latency ({self.max_latency:g} s)"


def _positive_int(name: str, value: int | str) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


class AdaptiveDispatcherPolicy(LRUPolicy):
    """BentoML's adaptive batching, one ``CorkDispatcher`` per model, with ``lru`` residency."""

    name = "bentoml"

    def __init__(
        self,
        max_batch: int | str = 32,
        max_latency: float | str = 60.0,
        max_in_flight: int | str = 1,
        tick: float | str = TICKET_INTERVAL,
        max_resident: int = 3,
        memory_budget: int | str | None = None,
        eviction: str = "lru",
    ) -> None:
        super().__init__(max_resident=max_resident, memory_budget=memory_budget, eviction=eviction)
        self.max_batch = _positive_int("max_batch", max_batch)
        self.max_in_flight = _positive_int("max_in_flight", max_in_flight)
        self.max_latency = parse_seconds(max_latency)
        if not 0 < self.max_latency < math.inf:
            raise ValueError(f"max_latency must be a positive duration, got {max_latency!r}")
        self.tick = parse_seconds(tick)
        if not 0 < self.tick < math.inf:
            raise ValueError(f"tick must be a positive duration, got {tick!r}")
        self.dispatchers: dict[str, CorkDispatcher] = {}
        # The batches it dispatched and has not seen finish: for each, the waits to log.
        self._flight: dict[RunningBatch, list[float]] = {}

    def describe(self) -> dict[str, object]:
        return {
            **super().describe(),
            "max_batch": self.max_batch,
            "max_latency": self.max_latency,
            "max_in_flight": self.max_in_flight,
            "tick": self.tick,
        }

    def dispatcher(self, model: str, now: float) -> CorkDispatcher:
        found = self.dispatchers.get(model)
        if found is None:
            found = self.dispatchers[model] = CorkDispatcher(self.max_latency, self.max_batch, self.tick, now)
        return found

    def _observe(self, state: SchedulerState, now: float) -> None:
        """Log every batch it dispatched that has left ``state.running``: it finished at about ``now``."""
        if not self._flight:
            return
        running = Counter(state.running)
        for batch in list(self._flight):
            waits = self._flight[batch]
            while len(waits) > running[batch]:
                wait = waits.pop(0)
                self.dispatcher(batch.model, now).optimizer.log_outbound(batch.size, wait, now - batch.started, now)
            if not waits:
                del self._flight[batch]

    def decide(self, state: SchedulerState, now: float) -> Sequence[Decision]:
        self._observe(state, now)
        self.eviction.observe(state)
        decisions: list[Decision] = []
        models = dict(state.models)
        in_use: set[str] = set()
        free = state.free_slots
        in_flight = Counter(b.model for b in state.running if not b.ephemeral)
        wake: float | None = None
        for model, queue in self.serve_order(state, now, decisions).items():
            resident = models.get(model)
            if resident is None:
                made = self._make_room_and_load(model, state, models, in_use, queue[0].arrival)
                decisions.extend(made)
                if any(isinstance(d, Fail) for d in made):
                    continue  # it can never fit: all its requests were failed
            ready = resident is not None and resident.status == "ready"
            can_start = max(0, min(free, self.max_in_flight - in_flight[model])) if ready else 0
            tick = self.dispatcher(model, now).run(queue, now, can_start, state.draining)
            decisions.extend(Fail((seq,), reason) for seq, reason in tick.cancelled)
            for seqs, waited in tick.batches:
                decisions.append(Dispatch(model, seqs))
                self._flight.setdefault(RunningBatch(model, len(seqs), now), []).append(waited)
            free -= len(tick.batches)
            if tick.batches:
                in_use.add(model)
            if tick.wake is not None:
                wake = tick.wake if wake is None else min(wake, tick.wake)
        if wake is not None:
            decisions.append(WakeAt(wake))
        return decisions
