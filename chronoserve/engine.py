"""The engine: per-model queues, futures, the clock, the model pool and the executors.

The engine owns the mechanism and its policy makes every decision. One scheduler task
wakes whenever something changes (a request arrives or is cancelled, a batch or a load
ends, a timer the policy asked for fires), hands the policy a snapshot, and carries out
what it returns. Model loads and batches run in worker threads, never on the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from types import TracebackType
from typing import Any

from .clock import Clock, MonotonicClock, TimerHandle
from .costs import BatchCost, BatchFeatures, Colocation, CostModel, CostView, tokens
from .deadlines import Deadlines
from .errors import (
    ChronoserveError,
    DeadlineExpired,
    DeadlineUnmeetable,
    EngineClosed,
    InferenceError,
    ModelBusy,
    ModelLoadError,
    PolicyError,
    QueueFull,
    Rejected,
)
from .events import EngineObserver
from .executor import Executor, ThreadExecutor
from .jobs import BatchOutcome, run_job
from .limits import DEFAULT_LIMITS, Limits
from .models.base import (
    BackendForecast,
    ModelLoader,
    ModelSpec,
    PreparedRequest,
    batch_key,
    covariate_signature,
)
from .placement import Readiness
from .plugins import load_policy
from .policy import (
    DECISIONS,
    Decision,
    Dispatch,
    Evict,
    Fail,
    Load,
    QueuedRequest,
    QueueView,
    RunningBatch,
    SchedulerState,
    SchedulingPolicy,
    Shed,
    WakeAt,
)
from .pool import LoadFailure, ModelPool, PoolEntry
from .request import (
    ForecastRequest,
    ForecastResult,
    Timings,
    check_deadline,
    check_priority,
    clip_below,
    prepare,
)
from .residency import Residency
from .status import EngineStats, ModelInfo
from .stopping import BatchStopped, StopSignal

logger = logging.getLogger("chronoserve.engine")


@dataclass(slots=True)
class _Pending:
    request: ForecastRequest
    prepared: PreparedRequest
    spec: ModelSpec
    queued: QueuedRequest
    future: asyncio.Future[ForecastResult]
    cold: bool
    """The model was not ready when the request arrived."""
    in_queue: bool = True
    batch: int | None = None
    """The id of the batch it was dispatched in."""


@dataclass(slots=True)
class _InFlight:
    """A dispatched batch, from dispatch to its end: what policies see of it, who waits for it,
    how to stop it, and what the cost model predicted for it."""

    running: RunningBatch
    members: list[_Pending]
    signal: StopSignal
    features: BatchFeatures
    predicted: float


def _budget(pending: _Pending) -> float:
    """A request's time budget in seconds, as it gave it (validated at submission)."""
    assert pending.request.deadline is not None
    return float(pending.request.deadline)


def default_workers() -> int:
    """Inference workers by default: 2 where there are 2 cores or more.

    Measured on 2 cores (design brief): two workers with one torch thread each beat one
    worker with two torch threads (826 vs 495 series/s at batch 32, bolt-tiny).
    """
    return max(1, min(2, os.cpu_count() or 1))


class Engine:
    """Serve forecasts in-process.

    >>> async with Engine(policy="batched", policy_options={"max_batch": 32}) as engine:
    ...     result = await engine.forecast(ForecastRequest(model="random/chronos-bolt-tiny", target=xs, horizon=24))

    ``policy`` is a name from the ``chronoserve.policies`` entry-point group (``naive``,
    ``lru``, ``batched`` or a third party's), ``"module:Class"``, a :class:`Policy` class or
    instance. ``workers`` inference threads run batches, each with ``torch_threads`` torch
    threads; ``load_workers`` threads load models. ``prefetch`` more batches than workers may
    be dispatched, so a worker that finishes starts its next batch at once, without a round
    trip through the event loop (measured: 2 ms of idle worker per batch without it).
    ``max_queue`` bounds the requests
    waiting (beyond it :class:`QueueFull` is raised at once). ``clock`` and the executors
    can be replaced for tests (see ``chronoserve.testing``). ``observers`` receive the
    engine's events (:class:`~chronoserve.events.EngineObserver`), for metrics.

    ``host_budget`` bytes of evicted models' weights are kept in host memory (the ``host``
    tier, see :mod:`chronoserve.tiers`), so reloading them skips the disk; None or 0: none.

    ``limits`` (:class:`~chronoserve.limits.Limits`) bound what one request may cost, checked
    before it is queued, and how long a batch may hold a worker. A model whose load fails is
    not tried again for ``load_retry[0]`` seconds, doubling with each failure up to
    ``load_retry[1]``; meanwhile its requests fail at once with
    :class:`~chronoserve.errors.ModelLoadError` carrying ``retry_after``.
    """

    def __init__(
        self,
        policy: str | SchedulingPolicy | type[Any] = "batched",
        *,
        policy_options: Mapping[str, Any] | None = None,
        loader: ModelLoader | None = None,
        workers: int | None = None,
        torch_threads: int | None = None,
        load_workers: int = 1,
        prefetch: int = 1,
        max_queue: int | None = None,
        clock: Clock | None = None,
        executor: Executor | None = None,
        load_executor: Executor | None = None,
        resolve_executor: Executor | None = None,
        observers: Sequence[EngineObserver] = (),
        limits: Limits | None = None,
        load_retry: tuple[float, float] = (1.0, 60.0),
        costs: CostModel | None = None,
        host_budget: int | None = None,
    ) -> None:
        self.policy = load_policy(policy, policy_options)
        self.limits = limits if limits is not None else DEFAULT_LIMITS
        if not (0 < load_retry[0] <= load_retry[1]):
            raise ValueError(f"load_retry must be (first wait, cap) with 0 < first <= cap, got {load_retry}")
        self.load_retry = load_retry
        if loader is None:  # the default: Chronos models on the CPU (EngineSettings.loader() for others)
            from .models.loader import ChronosLoader

            loader = ChronosLoader()
        self.loader = loader
        self.workers = workers if workers is not None else default_workers()
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        cpus = os.cpu_count() or 1
        self.torch_threads = torch_threads if torch_threads is not None else max(1, cpus // self.workers)
        if max_queue is not None and max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        self.max_queue = max_queue
        self._clock: Clock = clock or MonotonicClock()
        self._executor = executor or ThreadExecutor(self.workers, self.torch_threads, "chronoserve-infer")
        self._load_executor = load_executor or ThreadExecutor(load_workers, self.torch_threads, "chronoserve-load")
        # Names are resolved (a config.json read) on their own thread: never behind a model load.
        self._resolve_executor = resolve_executor or ThreadExecutor(1, None, "chronoserve-resolve")
        self._pool = ModelPool()
        self._observers = list(observers)
        self._residency = Residency(self.loader, self._load_executor, self._clock, host_budget, self._notify)
        self._specs: dict[str, ModelSpec] = {}
        self._resolving: dict[str, asyncio.Future[tuple[ModelSpec, str]]] = {}
        self._queues: dict[str, list[QueuedRequest]] = {}
        self._pending: dict[int, _Pending] = {}
        self._inflight: dict[int, _InFlight] = {}
        self._deadlines = Deadlines()
        self.costs = costs if costs is not None else CostModel()
        """The online cost model: learns from every batch and load (see :mod:`chronoserve.costs`);
        pass one seeded from a profile (:meth:`EngineSettings.cost_model`) to start from it."""
        self._colocation = Colocation()
        self._per_request = 0.0  # worker seconds per request, smoothed over the last batches
        self._cost_view = CostView(self.costs, self._colocation, self._neighbours, self._params, self._tier)
        self._tasks: set[asyncio.Future[None]] = set()
        self._seq = itertools.count()
        self._batch_ids = itertools.count()
        if prefetch < 0:
            raise ValueError(f"prefetch must be >= 0, got {prefetch}")
        self.prefetch = prefetch
        self._free = self.workers + prefetch  # batch slots: running or handed to a worker's queue
        self._queued = 0
        self._wake: asyncio.Event | None = None
        self._progress: asyncio.Event | None = None  # set whenever a request, batch or load ends
        self._scheduler: asyncio.Task[None] | None = None
        self._timer: TimerHandle | None = None
        self._accepting = False
        self._draining = False
        self._closed = False
        self.counters: dict[str, int] = dict.fromkeys(
            ("submitted", "completed", "failed", "cancelled", "rejected_queue_full", "batches", "batched_requests"), 0
        )

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        if self._scheduler is not None:
            return
        if self._closed:
            raise EngineClosed("this engine was closed; create a new one")
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()
        self._accepting = True
        self._scheduler = asyncio.create_task(self._schedule(), name="chronoserve-scheduler")
        self._spawn(self._residency.start())

    async def __aenter__(self) -> Engine:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self, drain: bool = True, timeout: float | None = None) -> None:
        """Stop accepting requests and answer or fail every one already accepted.

        With ``drain`` the queued requests still run (the policy is told to stop waiting
        for fuller batches) for up to ``timeout`` seconds; whatever is still queued after
        that fails with :class:`EngineClosed`. Running batches always finish.
        """
        if self._closed:
            return
        self._accepting = False
        self._draining = True
        self._poke()
        if drain and self._scheduler is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._until_idle(), timeout)
        for pending in list(self._pending.values()):
            if pending.in_queue:
                self._drop_queued(pending)
                self._settle_error(pending, EngineClosed("the engine closed before this request ran"))
        if drain and timeout is not None:
            # Past the drain timeout: running batches stop at their model's next layer.
            for batch in self._inflight.values():
                batch.signal.stop(EngineClosed("the engine closed while this request ran (drain timeout)"))
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        self._closed = True
        if self._scheduler is not None:
            self._scheduler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._scheduler
        if self._timer is not None:
            self._timer.cancel()
        backends = [e.backend for e in self._pool.entries.values() if e.backend is not None]
        self._pool.entries.clear()
        self._residency.close()
        for backend in backends:
            backend.close()
        await asyncio.to_thread(self._executor.shutdown)
        await asyncio.to_thread(self._load_executor.shutdown)
        await asyncio.to_thread(self._resolve_executor.shutdown)

    async def _until_idle(self) -> None:
        assert self._progress is not None
        while self._pending or self._tasks:
            self._progress.clear()
            await self._progress.wait()

    # -- requests --------------------------------------------------------------------------

    async def forecast(self, request: ForecastRequest) -> ForecastResult:
        """Forecast one request. Raises :class:`~chronoserve.errors.InvalidRequest` naming the
        field for bad input, :class:`QueueFull` when the queue is at ``max_queue``, and the
        error of its model load or batch if those fail. Cancelling the caller drops the request."""
        future = await self.submit(request)
        return await future

    async def warm(self, model: str) -> ForecastResult:
        """Load ``model`` (and import torch) through the normal path: one tiny forecast.

        The server's warm-up and in-process replay's ``--warm`` both use it.
        """
        return await self.forecast(ForecastRequest(model=model, target=[float(i % 24) for i in range(64)], horizon=1))

    async def forecast_many(self, requests: Iterable[ForecastRequest], *, return_exceptions: bool = False) -> list[Any]:
        """Forecast many requests concurrently; results in the order of ``requests``.

        With ``return_exceptions`` a request's error (invalid input, a failed load...) takes
        its place in the list; otherwise the first error is raised and the rest are cancelled.
        """
        futures: list[asyncio.Future[ForecastResult]] = []
        try:
            for request in requests:
                try:
                    futures.append(await self.submit(request))
                except ChronoserveError as exc:
                    if not return_exceptions:
                        raise
                    failed: asyncio.Future[ForecastResult] = asyncio.get_running_loop().create_future()
                    failed.set_exception(exc)
                    futures.append(failed)
            return list(await asyncio.gather(*futures, return_exceptions=return_exceptions))
        except BaseException:
            for future in futures:
                future.cancel()
            raise

    async def submit(self, request: ForecastRequest) -> asyncio.Future[ForecastResult]:
        """Validate and enqueue ``request``; return the future of its result.

        Cancelling the future drops the request if it has not started running.
        """
        if not self._accepting:
            raise EngineClosed("the engine is not running (use `async with Engine(...)` or `await engine.start()`)")
        try:
            name = self.canonical(request.model)
            spec = self._specs.get(name)
            if spec is None:
                spec = await self._resolve(name)
        except ChronoserveError as exc:
            self._notify("request_rejected", str(request.model), exc.reason)
            raise
        return self.enqueue(request, spec)

    def enqueue(self, request: ForecastRequest, spec: ModelSpec) -> asyncio.Future[ForecastResult]:
        """:meth:`submit` for a request whose model's spec is known (:meth:`spec`): without awaiting.

        For front ends that take many requests from one loop (the engine process of
        ``serve --http-workers``): no task per request. Raises what :meth:`submit` raises.
        """
        try:
            self._check_load_backoff(spec.name)
            prepared = prepare(request, spec, self.limits)
            budget, priority = check_deadline(request.deadline), check_priority(request.priority)
            if self.max_queue is not None and self._queued >= self.max_queue:
                self.counters["rejected_queue_full"] += 1
                raise QueueFull(self.max_queue)
            if not self._accepting:  # closed while we resolved the model
                raise EngineClosed("the engine is closing")
        except ChronoserveError as exc:
            self._notify("request_rejected", str(request.model), exc.reason)
            raise
        seq = next(self._seq)
        key = batch_key(
            spec, prepared.horizon, covariate_signature(prepared.past_covariates, prepared.future_covariates)
        )
        now = self._clock.now()
        tokens_in, tokens_out, steps = tokens(spec, len(prepared.context), prepared.horizon)
        queued = QueuedRequest(
            seq,
            spec.name,
            now,
            prepared.horizon,
            len(prepared.context),
            key,
            deadline=None if budget is None else now + budget,
            gflop=prepared.gflop,
            rows=prepared.rows,
            priority=priority,
            tokens_in=tokens_in,
            tokens_out=tokens_out,
            steps=steps,
        )
        assert self._wake is not None
        future: asyncio.Future[ForecastResult] = asyncio.get_running_loop().create_future()
        entry = self._pool.get(spec.name)
        cold = entry is None or entry.status != "ready"
        pending = _Pending(request, prepared, spec, queued, future, cold)
        self._pending[seq] = pending
        if queued.deadline is not None:
            self._deadlines.add(queued.deadline, seq)
        self._queues.setdefault(spec.name, []).append(queued)
        self._queued += 1
        self.counters["submitted"] += 1
        self._notify("request_accepted", spec.name)
        future.add_done_callback(partial(self._on_done, seq))
        if self._free > 0 and not cold:
            # A worker is idle and the model is ready: decide now rather than after every other
            # task of this loop turn (in a burst of thousands of submissions that is the
            # difference between dispatching the first batch after B submissions and after all
            # of them). A model that is not ready cannot be dispatched: one decision after the
            # burst does (deciding on every submission made a burst during a load O(N^2)).
            self._decide()
        else:
            self._wake.set()
        return future

    def _on_done(self, seq: int, future: asyncio.Future[ForecastResult]) -> None:
        if not future.cancelled():
            return
        pending = self._pending.pop(seq, None)
        self.counters["cancelled"] += 1
        if pending is not None:
            self._notify("request_finished", pending.spec.name, "cancelled", None)
        if pending is not None and pending.in_queue:
            self._drop_queued(pending)
            self._poke()
        elif pending is not None and pending.batch is not None:
            # Running: if every request of its batch is gone, nobody waits for the batch.
            batch = self._inflight.get(pending.batch)
            if batch is not None and all(m.future.done() for m in batch.members):
                batch.signal.stop(EngineClosed("every request of the batch was cancelled"))

    def _check_load_backoff(self, model: str) -> None:
        failure = self._pool.failed.get(model)
        if failure is None or model in self._pool:
            return
        wait = failure.retry_at - self._clock.now()
        if wait > 0:
            raise ModelLoadError(
                model,
                f"{failure.error} (failed {failure.failures} time(s) in a row; next try in {wait:.0f} s)",
                retry_after=None if failure.permanent else wait,
                permanent=failure.permanent,
            )

    def unload(self, model: str) -> bool:
        """Evict ``model`` now, as the policy's eviction does (its weights kept in the host tier if
        there is one); False if it was not resident. Raises :class:`ModelBusy` while it is loading,
        running a batch or has requests queued (the engine never evicts a model in use)."""
        name = self.canonical(model)
        entry = self._pool.get(name)
        if entry is None:
            return False
        queued = len(self._queues.get(name) or ())
        if entry.status != "ready" or entry.running or queued:
            why = "it is loading" if entry.status != "ready" else f"{entry.running} batch(es) running, {queued} queued"
            raise ModelBusy(name, why)
        self._evict(name)
        self._poke()
        return True

    def load_failures(self) -> dict[str, LoadFailure]:
        """Models whose last load failed (and have not loaded since), with when they are tried again."""
        return dict(self._pool.failed)

    async def _resolve(self, name: str) -> ModelSpec:
        future = self._resolving.get(name)
        if future is None:
            future = asyncio.ensure_future(self._resolve_executor.run(partial(self._residency.describe, name)))
            self._resolving[name] = future
        try:
            spec, tier = await asyncio.shield(future)
        finally:
            if future.done():
                self._resolving.pop(name, None)
        self._specs[name] = spec
        self._residency.known(name, tier)
        return spec

    def add_observer(self, observer: EngineObserver) -> None:
        self._observers.append(observer)

    def _notify(self, event: str, *args: Any) -> None:
        for observer in self._observers:
            try:
                getattr(observer, event)(*args)
            except Exception:
                logger.exception("observer %r failed on %s", observer, event)

    # -- introspection ---------------------------------------------------------------------

    @property
    def clock(self) -> Clock:
        return self._clock

    def queue_depths(self) -> dict[str, int]:
        return {model: len(q) for model, q in self._queues.items() if q}

    def resident(self) -> dict[str, ModelInfo]:
        """Resident and loading models, by name: a snapshot, not the pool's own records."""
        return {
            name: ModelInfo(
                name=name,
                family=e.spec.family,
                random_weights=e.spec.random_weights,
                status=e.status,
                nbytes=e.nbytes,
                load_seconds=e.load_seconds,
                loaded_at=e.load_finished,
                last_used=e.last_used,
                running_batches=e.running,
                backend=None if e.backend is None else e.backend.backend,
                dtype=None if e.backend is None else e.backend.dtype,
                loaded_from=e.tier,
            )
            for name, e in self._pool.entries.items()
        }

    def canonical(self, name: object) -> str:
        """The one name the engine knows ``name``'s model by (:meth:`ModelLoader.canonical`).

        Raises :class:`~chronoserve.errors.InvalidRequest` on ``model`` for what cannot be a name.
        """
        return self.loader.canonical(name)

    def spec(self, name: str) -> ModelSpec | None:
        """The spec of a model requests have named (by any spelling), or None."""
        spec = self._specs.get(name)
        if spec is None:
            with contextlib.suppress(ChronoserveError):
                spec = self._specs.get(self.canonical(name))
        return spec

    def stats(self) -> EngineStats:
        c = self.counters
        return EngineStats(
            submitted=c["submitted"],
            completed=c["completed"],
            failed=c["failed"],
            cancelled=c["cancelled"],
            rejected_queue_full=c["rejected_queue_full"],
            batches=c["batches"],
            batched_requests=c["batched_requests"],
            queued=self._queued,
            running_batches=len(self._inflight),
            free_slots=self._free,
            loads=self._pool.loads,
            load_failures=self._pool.load_failures,
            evictions=self._pool.evictions,
            resident=tuple(sorted(n for n, e in self._pool.entries.items() if e.status == "ready")),
            resident_bytes=self._pool.resident_bytes(),
            policy=self._describe_policy(),
            workers=self.workers,
            prefetch=self.prefetch,
            torch_threads=self.torch_threads,
            host_models=self._residency.host.models(),
            host_bytes=self._residency.host.nbytes,
            host_budget=self._residency.host.budget,
            import_seconds=self._residency.import_seconds,
        )

    def tiers(self) -> dict[str, str]:
        """Where the weights of every model requests have named are now: ``resident`` (loaded or
        loading), ``host``, ``disk`` or ``hub`` (see :mod:`chronoserve.tiers`)."""
        return {name: self._tier(name) for name in self._specs}

    def _tier(self, name: str) -> str:
        return "resident" if name in self._pool else self._residency.tier(name)

    def readiness(self) -> Readiness:
        """How soon this engine could start a request for each model it knows, for placement
        across engines (:mod:`chronoserve.placement`): its backlog and each model's load estimate
        by tier, from its cost model."""
        now = self._clock.now()
        running = 0.0
        for batch in self._inflight.values():
            elapsed = 0.0 if batch.signal.started is None else now - batch.signal.started
            running += max(0.0, batch.predicted - elapsed)
        models: dict[str, float] = {}
        for name, spec in self._specs.items():
            entry = self._pool.get(name)
            if entry is None:
                models[name] = self.costs.predict_load(name, spec.est_nbytes, self._residency.tier(name))
            elif entry.status == "ready":
                models[name] = 0.0
            else:
                left = self.costs.predict_load(name, entry.nbytes) - (now - entry.load_started)
                models[name] = max(0.0, left)
        sizes = sorted(spec.est_nbytes for spec in self._specs.values())
        tiers = self.tiers()
        for name, queue in self._queues.items():  # queued for, not yet loading: on its way here
            if queue and name in tiers:
                tiers[name] = "resident"
        return Readiness(
            backlog=(self._queued * self._per_request + running) / self.workers,
            models=models,
            tiers=tiers,
            new_model=self.costs.predict_load("", sizes[len(sizes) // 2] if sizes else 0),
            per_request=self._per_request,
            workers=self.workers,
        )

    def _describe_policy(self) -> Mapping[str, object]:
        try:
            return dict(self.policy.describe())
        except Exception as exc:  # a plugin's bug must not take /metrics down
            logger.exception("policy %r: describe() raised", self.policy.name)
            return {"name": self.policy.name, "describe_error": repr(exc)}

    # -- the scheduler ---------------------------------------------------------------------

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()
        if self._progress is not None:
            self._progress.set()

    async def _schedule(self) -> None:
        assert self._wake is not None
        while True:
            self._wake.clear()
            self._decide()
            await self._wake.wait()

    def _decide(self) -> None:
        """Ask the policy, carry out its decisions, and arm the timer it asked for."""
        assert self._wake is not None
        wake_at = self._tick()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if wake_at is not None:
            self._timer = self._clock.call_at(wake_at, self._wake.set)

    def _snapshot(self) -> SchedulerState:
        # Read-only views, not copies: a decision costs what the policy reads, not every queue
        # (copying them made a burst of N submissions O(N^2)). Valid during decide() only.
        queues = {model: QueueView(q) for model, q in self._queues.items() if q}
        sizes: dict[str, int] = {}
        for name in itertools.chain(queues, self._pool.entries):
            entry = self._pool.entries.get(name)
            sizes[name] = (
                entry.nbytes if entry is not None and entry.status == "ready" else self._specs[name].est_nbytes
            )
        return SchedulerState(
            queues=queues,
            models=self._pool.states(),
            running=tuple(
                dataclasses.replace(b.running, predicted=b.predicted, running_since=b.signal.started)
                for b in self._inflight.values()
            ),
            free_slots=self._free,
            model_sizes=sizes,
            draining=self._draining,
            costs=self._cost_view,
            workers=self.workers,
            tiers={name: self._tier(name) for name in sizes},
            host_budget=self._residency.host.budget,
        )

    def _params(self, model: str) -> int:
        """A model's parameters (0 for one no request has named: a policy may ask about any name)."""
        spec = self._specs.get(model)
        if spec is None:
            return 0
        return spec.num_params or max(1, spec.est_nbytes // 4)

    def _running_loads(self) -> dict[int, tuple[float, float]]:
        """(start, load) of each batch running now: its passes per second, as predicted."""
        return {
            batch_id: (b.signal.started, b.features.passes_per_second(b.predicted))
            for batch_id, b in self._inflight.items()
            if b.signal.started is not None
        }

    def _neighbours(self) -> float:
        """The load a batch dispatched now would run beside: the running batches' (at most the other workers')."""
        loads = sorted((load for _, load in self._running_loads().values()), reverse=True)
        return sum(loads[: self.workers - 1])

    def _expire(self, now: float) -> float | None:
        """Fail every queued request whose deadline has passed (nothing runs after its deadline);
        returns the next deadline of a request still queued."""

        def queued(seq: int) -> bool:
            pending = self._pending.get(seq)
            return pending is not None and pending.in_queue

        expired, following = self._deadlines.due(now, queued)
        for seq in expired:
            pending = self._pending[seq]
            self._drop_queued(pending)
            self._settle_error(pending, DeadlineExpired(_budget(pending)))
        return following

    def _tick(self) -> float | None:
        now = self._clock.now()
        next_deadline = self._expire(now)
        wake = self._ask_policy(now)
        if next_deadline is None:
            return wake
        return next_deadline if wake is None else min(wake, next_deadline)

    def _ask_policy(self, now: float) -> float | None:
        if not self._queued and not self._pool.entries:
            return None
        try:
            decisions = list(self.policy.decide(self._snapshot(), now))
            wrong = [d for d in decisions if not isinstance(d, DECISIONS)]
            if wrong:
                raise PolicyError(
                    f"returned {wrong[0]!r}, which is not a decision (Load, Evict, Dispatch, Fail, Shed or WakeAt)"
                )
            for decision in decisions:
                if isinstance(decision, Shed):
                    self._check_shed(decision)
        except Exception as exc:
            logger.exception("policy %r failed; failing the queued requests", self.policy.name)
            reason = str(exc) if isinstance(exc, PolicyError) else f"raised {exc!r}"
            error = PolicyError(f"policy {self.policy.name!r} {reason}")
            for pending in [p for p in self._pending.values() if p.in_queue]:
                self._drop_queued(pending)
                self._settle_error(pending, error)
            return None
        wake: float | None = None
        for decision in decisions:
            if isinstance(decision, WakeAt):
                wake = decision.time if wake is None else min(wake, decision.time)
            else:
                self._apply(decision, now)
        return wake

    def _apply(self, decision: Decision, now: float) -> None:
        if isinstance(decision, Dispatch):
            self._dispatch(decision, now)
        elif isinstance(decision, Load):
            self._load(decision.model, now)
        elif isinstance(decision, Evict):
            self._evict(decision.model)
        elif isinstance(decision, Fail):
            for seq in decision.requests:
                pending = self._pending.get(seq)
                if pending is not None and pending.in_queue:
                    self._drop_queued(pending)
                    self._settle_error(pending, Rejected(decision.reason))
            self._poke()  # the queues changed: the policy may see requests it did not read this time
        elif isinstance(decision, Shed):
            for seq in decision.requests:
                pending = self._pending.get(seq)
                if pending is None or not pending.in_queue:
                    continue
                q = pending.queued
                assert q.deadline is not None  # checked before any decision was carried out
                predicted = None if decision.predicted is None else decision.predicted - q.arrival
                # Worth a retry once the work predicted ahead of it has gone.
                retry = None if decision.predicted is None else max(0.0, decision.predicted - q.deadline)
                self._drop_queued(pending)
                self._settle_error(pending, DeadlineUnmeetable(_budget(pending), predicted, retry))
            self._poke()
        else:  # unreachable: _tick checks every decision's type
            raise AssertionError(decision)

    def _check_shed(self, decision: Shed) -> None:
        for seq in decision.requests:
            pending = self._pending.get(seq)
            if pending is not None and pending.in_queue and pending.queued.deadline is None:
                raise PolicyError(f"shed request {seq}, which has no deadline (Fail refuses the others)")

    def _drop_queued(self, pending: _Pending) -> None:
        pending.in_queue = False
        self._queued -= 1
        queue = self._queues.get(pending.spec.name)
        if queue is not None:
            with contextlib.suppress(ValueError):
                queue.remove(pending.queued)

    def _settle_error(self, pending: _Pending, error: BaseException) -> None:
        self._pending.pop(pending.queued.seq, None)
        if not pending.future.done():
            self.counters["failed"] += 1
            reason = error.reason if isinstance(error, ChronoserveError) else "error"
            self._notify("request_finished", pending.spec.name, reason, None)
            if pending.queued.deadline is not None:
                shed = isinstance(error, (DeadlineExpired, DeadlineUnmeetable))
                self._notify(
                    "deadline_outcome", pending.spec.name, pending.queued.priority, reason if shed else "failed"
                )
            pending.future.set_exception(error)

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Future[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Future[None]) -> None:
        self._tasks.discard(task)
        if self._progress is not None:
            self._progress.set()

    # -- loads and evictions ---------------------------------------------------------------

    def _load(self, model: str, now: float) -> None:
        if model in self._pool:
            return
        spec = self._specs.get(model)
        if spec is None:
            logger.error("policy %r asked to load %r, which no request named", self.policy.name, model)
            return
        self._pool.begin_load(spec, now)
        self._spawn(self._run_load(spec))

    async def _run_load(self, spec: ModelSpec) -> None:
        try:
            loaded = await self._residency.load(spec)
        except Exception as exc:
            error = self._load_failed(spec.name, exc)
            for pending in [p for p in self._pending.values() if p.in_queue and p.spec.name == spec.name]:
                self._drop_queued(pending)
                self._settle_error(pending, error)
        else:
            entry = self._pool.finish_load(spec.name, loaded, self._clock.now())
            self._notify("model_loaded", spec.name, loaded.seconds, entry.nbytes)
            self.costs.observe_load(spec.name, entry.nbytes, loaded.seconds, loaded.tier)
        finally:
            self._poke()

    def _load_failed(self, model: str, exc: BaseException) -> ChronoserveError:
        """Record a failed load (its backoff) and return the error its requests get."""
        message = exc.message if isinstance(exc, ModelLoadError) else str(exc) or repr(exc)
        permanent = isinstance(exc, ModelLoadError) and exc.permanent
        failure = self._pool.fail_load(model, message, self._clock.now(), *self.load_retry, permanent=permanent)
        wait = failure.retry_at - failure.failed_at
        if isinstance(exc, ModelLoadError) or not isinstance(exc, ChronoserveError):
            error: ChronoserveError = ModelLoadError(
                model, message, retry_after=None if permanent else wait, permanent=permanent
            )
            error.__cause__ = exc
        else:
            error = exc
        logger.warning(
            "loading %s failed (%d in a row; next try in %.0f s): %s", model, failure.failures, wait, message
        )
        self._notify("model_load_failed", model, error.reason)
        return error

    def _evict(self, model: str) -> None:
        entry = self._pool.get(model)
        if entry is None:
            return
        if entry.status != "ready" or entry.running:
            logger.warning("policy %r asked to evict %r while it is busy; ignored", self.policy.name, model)
            return
        self._pool.remove(model)
        self._notify("model_evicted", model)
        if entry.backend is not None:
            self._spawn(self._residency.demote(model, entry.backend))

    # -- batches ---------------------------------------------------------------------------

    def _dispatch(self, decision: Dispatch, now: float) -> None:
        batch = [self._pending.get(seq) for seq in decision.requests]
        problem = None
        if self._free <= 0:
            problem = "no free worker"
        elif not batch:
            problem = "an empty batch"
        elif any(p is None or not p.in_queue or p.spec.name != decision.model for p in batch):
            problem = f"requests that are not queued for {decision.model!r}"
        elif len({p.queued.key for p in batch if p is not None}) > 1:
            problem = "requests whose batch keys differ (sharing a batch would change their answers)"
        entry = self._pool.get(decision.model)
        if problem is None and not decision.ephemeral and (entry is None or entry.status != "ready"):
            problem = f"model {decision.model!r}, which is not resident"
        if problem is not None:
            error = PolicyError(f"policy {self.policy.name!r} dispatched {problem}")
            logger.error("%s", error)
            for pending in batch:
                if pending is not None and pending.in_queue:
                    self._drop_queued(pending)
                    self._settle_error(pending, error)
            return
        members = [p for p in batch if p is not None]
        queue = self._queues[decision.model]
        n = len(members)
        if queue[:n] == [p.queued for p in members]:
            del queue[:n]
        else:
            chosen = set(decision.requests)
            queue[:] = [q for q in queue if q.seq not in chosen]
        for p in members:
            p.in_queue = False
        self._queued -= n
        self._free -= 1
        if entry is not None and not decision.ephemeral:
            entry.running += 1
        batch_id = next(self._batch_ids)
        for p in members:
            p.batch = batch_id
        bound = self.limits.max_inference_seconds
        signal = StopSignal(self._clock, None if bound is None else now + bound, bound)
        features = self._cost_view.features(decision.model, [p.queued for p in members])
        self._inflight[batch_id] = _InFlight(
            RunningBatch(decision.model, n, now, decision.ephemeral),
            members,
            signal,
            features,
            self.costs.predict_batch(features),
        )
        self.counters["batches"] += 1
        self.counters["batched_requests"] += n
        resident = None if decision.ephemeral else entry
        backend = resident.backend if resident is not None else None
        prepared = [p.prepared for p in members]
        # Hand the work to a worker now, not in the first step of a new task.
        job = self._executor.submit(
            partial(run_job, self._clock, self.loader, members[0].spec, backend, prepared, signal)
        )
        self._spawn(self._run_batch(batch_id, members, resident, now, job))

    async def _run_batch(
        self,
        batch_id: int,
        members: list[_Pending],
        entry: PoolEntry | None,
        started: float,
        job: asyncio.Future[BatchOutcome],
    ) -> None:
        spec = members[0].spec
        ran: BatchOutcome | None = None  # once it ran
        try:
            outcome = await job
        except Exception as exc:
            if isinstance(exc, BatchStopped):
                error: ChronoserveError = exc.error
                logger.warning("batch of %d on %s stopped: %s", len(members), spec.name, error)
            elif entry is None and isinstance(exc, ModelLoadError):  # naive's private load
                error = self._load_failed(spec.name, exc)
            elif isinstance(exc, ChronoserveError):
                error = exc
            else:
                error = InferenceError(f"batch on {spec.name} failed: {exc!r}")
                error.__cause__ = exc
            self._notify("batch_finished", spec.name, len(members), 0.0, False)
            for pending in members:
                self._settle_error(pending, error)
        else:
            ran = outcome
            self._notify("batch_finished", spec.name, len(members), outcome.inference_seconds, True)
            if entry is None:  # a private load for this batch (naive)
                self._notify("model_loaded", spec.name, outcome.load_seconds, spec.est_nbytes)
            self._deliver(
                members, outcome.forecasts, started, outcome.load_seconds, outcome.inference_seconds, entry is None
            )
        finally:
            self._free += 1
            batch = self._inflight.pop(batch_id)
            if ran is not None:  # learn what it cost, with the neighbours it really met
                seconds = ran.inference_seconds
                f = batch.features
                met = self._colocation.finished(
                    batch_id, ran.started, ran.started + seconds, f.passes_per_second(seconds), self._running_loads()
                )
                actual = dataclasses.replace(f, colocated=met)
                self.costs.observe_batch(actual, seconds)
                share = seconds / len(members)
                self._per_request = share if self._per_request == 0 else 0.8 * self._per_request + 0.2 * share
                self._notify("batch_cost", BatchCost(actual, len(members), f.colocated, batch.predicted, seconds))
            if entry is not None:
                entry.running -= 1
                entry.last_used = self._clock.now()
            self._poke()

    def _deliver(
        self,
        members: list[_Pending],
        forecasts: Sequence[BackendForecast],
        started: float,
        ephemeral_load: float,
        inference: float,
        ephemeral: bool,
    ) -> None:
        now = self._clock.now()
        size = len(members)
        policy = self.policy.name
        record = None if ephemeral else self._pool.last_load.get(members[0].spec.name)
        for pending, forecast in zip(members, forecasts, strict=True):
            self._pending.pop(pending.queued.seq, None)
            if pending.future.done():
                continue
            arrival = pending.queued.arrival
            total = now - arrival
            load = 0.0
            cold = ephemeral or pending.cold
            if ephemeral:
                load = ephemeral_load
            elif record is not None and record.finished <= started and (record.finished > arrival or pending.cold):
                load = max(0.0, record.finished - max(record.started, arrival))
                cold = True
            queue = max(0.0, total - load - inference)
            spec = pending.spec
            self.counters["completed"] += 1
            bound = pending.request.lower_bound
            quantiles, median, clipped = clip_below(forecast.quantiles, forecast.median, bound)
            result = ForecastResult(
                request_id=pending.request.request_id,
                model=spec.name,
                family=spec.family,
                random_weights=spec.random_weights,
                policy=policy,
                quantile_levels=pending.prepared.quantile_levels,
                quantiles=quantiles,
                median=median,
                batch_size=size,
                cold_start=cold,
                timings=Timings(queue=queue, load=load, inference=inference, total=total),
                context_used=len(pending.prepared.context),
                lower_bound=bound,
                clipped=clipped,
            )
            self._notify("request_finished", spec.name, "ok", result)
            deadline = pending.queued.deadline
            if deadline is not None:
                outcome = "met" if now <= deadline else "late"
                self._notify("deadline_outcome", spec.name, pending.queued.priority, outcome)
            pending.future.set_result(result)
