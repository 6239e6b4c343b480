"""Helpers to test policies and code that uses the engine, without sleeping and without torch.

- :class:`FakeClock`: time moves only when :meth:`FakeClock.advance` says so.
- :class:`FakeModel` / :class:`FakeLoader`: a model seam that answers instantly and
  deterministically (the median is the last observed value), records every batch it ran,
  and can be told to fail loading or inference.
- :func:`fake_engine`: an :class:`~chronoserve.Engine` wired to all of the above with an
  inline executor.
- :func:`settle`: let the event loop run until the engine has nothing left to do now.
- :func:`state` and :func:`queued`: build :class:`~chronoserve.policy.SchedulerState`
  snapshots by hand for pure policy tests.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import ModelLoadError, UnknownModel
from .executor import InlineExecutor
from .models.base import BackendForecast, HostCopy, ModelBackend, ModelLoader, ModelSpec, PreparedRequest
from .policy import CostEstimates, ModelState, QueuedRequest, RunningBatch, SchedulerState, SchedulingPolicy
from .stopping import checkpoint

__all__ = [
    "FakeClock",
    "FakeCosts",
    "FakeLoader",
    "FakeModel",
    "fake_engine",
    "fake_spec",
    "queued",
    "settle",
    "state",
]


class _FakeTimer:
    def __init__(self, clock: FakeClock, entry: list[Any]) -> None:
        self._clock = clock
        self._entry = entry

    def cancel(self) -> None:
        self._entry[2] = None


class FakeClock:
    """A clock for tests. ``now()`` stays put until :meth:`advance` or :meth:`set` move it;
    timers whose time has come fire (on the event loop) as it moves.

    With ``autojump=True`` the clock also jumps to a timer by itself once the event loop has
    had :data:`AUTOJUMP_TURNS` turns without the timer being cancelled (that is, when
    everything that could run has run), like trio's ``MockClock(autojump_threshold=0)``:
    a test then never hangs on a timer nobody advances to, and still takes no real time.
    """

    AUTOJUMP_TURNS = 50

    def __init__(self, start: float = 0.0, *, autojump: bool = False) -> None:
        self._now = start
        self._timers: list[list[Any]] = []
        self._order = itertools.count()
        self.autojump = autojump

    def now(self) -> float:
        return self._now

    def call_at(self, when: float, callback: Callable[[], None]) -> _FakeTimer:
        entry: list[Any] = [when, next(self._order), callback]
        heapq.heappush(self._timers, entry)
        if when <= self._now:
            self._fire()
        elif self.autojump:
            asyncio.get_running_loop().create_task(self._jump_when_idle(entry))
        return _FakeTimer(self, entry)

    async def _jump_when_idle(self, entry: list[Any]) -> None:
        await settle(self.AUTOJUMP_TURNS)
        if entry[2] is not None and entry[0] > self._now:
            self.set(entry[0])

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` and fire the timers that are due."""
        if seconds < 0:
            raise ValueError("time can't go backwards")
        self.set(self._now + seconds)

    def set(self, now: float) -> None:
        if now < self._now:
            raise ValueError("time can't go backwards")
        self._now = now
        self._fire()

    def next_timer(self) -> float | None:
        """When the earliest pending timer fires, or None."""
        while self._timers and self._timers[0][2] is None:
            heapq.heappop(self._timers)
        return self._timers[0][0] if self._timers else None

    def _fire(self) -> None:
        while self._timers and self._timers[0][0] <= self._now:
            _, _, callback = heapq.heappop(self._timers)
            if callback is not None:
                callback()


async def settle(rounds: int = 50) -> None:
    """Let every task that can run now run (the engine's scheduler, batches on inline executors)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


def fake_spec(
    name: str = "fake",
    *,
    family: str = "fake",
    nbytes: int = 1_000_000,
    context_length: int = 4096,
    max_horizon: int = 1024,
    supports_covariates: bool = True,
    batch_patch: int | None = None,
) -> ModelSpec:
    return ModelSpec(
        name=name,
        family=family,
        source=f"fake://{name}",
        random_weights=True,
        context_length=context_length,
        max_horizon=max_horizon,
        quantiles=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
        supports_covariates=supports_covariates,
        est_nbytes=nbytes,
        batch_patch=batch_patch,
    )


class FakeModel(ModelBackend):
    """Answers at once: median = last observed value of the context, quantile q = median + (q - 0.5).

    ``batches`` records each batch it ran; ``fail`` makes ``predict`` raise; ``predict_seconds``
    makes every batch take that long (sleeping: use it with the real thread executor only).
    ``hang`` makes every batch run until it is stopped (it calls
    :func:`~chronoserve.stopping.checkpoint` every few milliseconds, as a real model does every
    layer; the real thread executor only); ``started`` is set once a batch runs.
    """

    #: How long a hanging batch runs if nothing stops it: a test that forgot to stop it fails.
    HANG_LIMIT = 60.0
    backend = "fake"
    dtype = "float32"

    def __init__(self, spec: ModelSpec, fail: bool = False, predict_seconds: float = 0.0, hang: bool = False) -> None:
        self.spec = spec
        self.nbytes = spec.est_nbytes
        self.fail = fail
        self.predict_seconds = predict_seconds
        self.hang = hang
        self.started = threading.Event()
        self.batches: list[list[PreparedRequest]] = []
        self.closed = False

    def predict(self, batch: Sequence[PreparedRequest]) -> list[BackendForecast]:
        self.batches.append(list(batch))
        self.started.set()
        if self.hang:
            end = time.monotonic() + self.HANG_LIMIT
            while time.monotonic() < end:
                checkpoint()
                time.sleep(0.002)
            raise RuntimeError(f"{self.spec.name} ran {self.HANG_LIMIT:g} s without being stopped")
        if self.predict_seconds:
            time.sleep(self.predict_seconds)  # a worker thread's time, as a real model would take
        if self.fail:
            raise RuntimeError(f"{self.spec.name} was told to fail")
        out = []
        for request in batch:
            observed = request.context[~np.isnan(request.context)]
            last = np.float32(observed[-1])
            median = np.full(request.horizon, last, dtype=np.float32)
            offsets = np.asarray(request.quantile_levels, dtype=np.float32) - np.float32(0.5)
            out.append(BackendForecast(quantiles=median[:, None] + offsets[None, :], median=median))
        return out

    def close(self) -> None:
        self.closed = True


@dataclass
class FakeLoader(ModelLoader):
    """Serves :class:`FakeModel` for the names in ``specs``; counts loads per model.

    ``fail_load`` names models whose load raises (``permanent`` ones: marked so, as an unreachable
    hub is); ``fail_predict`` models whose batches raise;
    ``hang`` models whose batches run until stopped; ``predict_seconds`` is how long every batch takes.
    ``load_seconds`` is how long every load takes (on the load thread, as a real one would).
    It has a host tier: :meth:`offload` keeps an evicted model (unless ``no_offload`` names it) and a
    load from that copy counts in ``promotions``; ``hub`` names models whose weights are on the hub.
    """

    specs: Mapping[str, ModelSpec] = field(default_factory=lambda: {"fake": fake_spec("fake")})
    fail_load: set[str] = field(default_factory=set)
    permanent: set[str] = field(default_factory=set)
    fail_predict: set[str] = field(default_factory=set)
    hang: set[str] = field(default_factory=set)
    predict_seconds: float = 0.0
    load_seconds: float = 0.0
    loads: dict[str, int] = field(default_factory=dict)
    instances: list[FakeModel] = field(default_factory=list)
    promotions: dict[str, int] = field(default_factory=dict)
    no_offload: set[str] = field(default_factory=set)
    hub: set[str] = field(default_factory=set)

    @classmethod
    def with_models(cls, *names: str, **spec_options: Any) -> FakeLoader:
        return cls(specs={n: fake_spec(n, **spec_options) for n in names})

    def resolve(self, name: str) -> ModelSpec:
        if name not in self.specs:
            raise UnknownModel(name)
        return self.specs[name]

    def load(self, spec: ModelSpec, host: HostCopy | None = None) -> ModelBackend:
        self.loads[spec.name] = self.loads.get(spec.name, 0) + 1
        if spec.name in self.fail_load:
            raise ModelLoadError(spec.name, "told to fail", permanent=spec.name in self.permanent)
        if self.load_seconds:
            time.sleep(self.load_seconds)  # a load thread's time, as a real load would take
        if host is not None:
            if host.model != spec.name or host.payload != ("fake-weights", spec.name):
                raise ModelLoadError(spec.name, f"promoted from another model's copy ({host.model})")
            self.promotions[spec.name] = self.promotions.get(spec.name, 0) + 1
        model = FakeModel(
            spec, fail=spec.name in self.fail_predict, predict_seconds=self.predict_seconds, hang=spec.name in self.hang
        )
        self.instances.append(model)
        return model

    def offload(self, backend: ModelBackend) -> HostCopy | None:
        if backend.spec.name in self.no_offload:
            return None
        return HostCopy(backend.spec.name, backend.nbytes, ("fake-weights", backend.spec.name))

    def tier(self, spec: ModelSpec) -> str:
        return "hub" if spec.name in self.hub else "disk"

    def batch_sizes(self, name: str | None = None) -> list[int]:
        """Sizes of every batch run so far, on one model or all."""
        return [len(b) for m in self.instances if name in (None, m.spec.name) for b in m.batches]


def fake_engine(
    policy: str | SchedulingPolicy | type[Any] = "batched",
    *,
    loader: FakeLoader | None = None,
    clock: FakeClock | None = None,
    workers: int = 1,
    prefetch: int = 0,
    **engine_options: Any,
) -> Any:
    """An :class:`~chronoserve.Engine` on fake models, a fake clock and inline executors.

    The default clock is ``FakeClock(autojump=True)``: batching delays pass instantly. Pass
    your own ``FakeClock()`` to move time by hand.
    """
    from .engine import Engine

    return Engine(
        policy,
        loader=loader or FakeLoader(),
        clock=clock or FakeClock(autojump=True),
        executor=InlineExecutor(),
        load_executor=InlineExecutor(),
        resolve_executor=InlineExecutor(),
        workers=workers,
        prefetch=prefetch,
        torch_threads=1,
        **engine_options,
    )


_seq = itertools.count(1_000_000)


def queued(
    model: str = "m",
    arrival: float = 0.0,
    *,
    seq: int | None = None,
    horizon: int = 24,
    context_length: int = 240,
    key: Hashable = (),
    gflop: float = 0.0,
    rows: int = 1,
    deadline: float | None = None,
    priority: int | None = None,
) -> QueuedRequest:
    """A :class:`QueuedRequest` for hand-built policy states."""
    return QueuedRequest(
        next(_seq) if seq is None else seq,
        model,
        arrival,
        horizon,
        context_length,
        key,
        deadline=deadline,
        gflop=gflop,
        rows=rows,
        priority=priority,
    )


@dataclass(frozen=True)
class FakeCosts:
    """Cost estimates for hand-built states: ``base + per_gflop x GFLOP`` a batch, ``load`` a model load
    (from a tier named in ``tier_loads``, that tier's time; ``model_tiers`` says where weights are)."""

    base: float = 0.002
    per_gflop: float = 0.001
    load: float = 0.1
    tier_loads: Mapping[str, float] = field(default_factory=dict)
    model_tiers: Mapping[str, str] = field(default_factory=dict)

    def batch_seconds(self, model: str, requests: Sequence[QueuedRequest]) -> float:
        return self.base + self.per_gflop * sum(r.gflop for r in requests)

    def load_seconds(self, model: str, nbytes: int, tier: str | None = None) -> float:
        tier = tier if tier is not None else self.model_tiers.get(model, "disk")
        return self.tier_loads.get(tier, self.load)


def state(
    requests: Iterable[QueuedRequest] = (),
    *,
    ready: Mapping[str, float] | Iterable[str] = (),
    loading: Iterable[str] = (),
    running: Mapping[str, int] | None = None,
    free_slots: int = 1,
    sizes: Mapping[str, int] | None = None,
    draining: bool = False,
    costs: CostEstimates | None = None,
    load_seconds: Mapping[str, float] | None = None,
    host_budget: int = 0,
) -> SchedulerState:
    """Build a :class:`SchedulerState`.

    ``ready`` lists resident models (a mapping gives each one's ``last_used``), ``running``
    counts batches running per model, ``sizes`` gives model bytes (default 1 MB each),
    ``load_seconds`` each model's measured load time (default: none measured), ``host_budget``
    the engine's host tier in bytes.
    """
    loads = dict(load_seconds or {})
    queues: dict[str, list[QueuedRequest]] = {}
    for r in requests:
        queues.setdefault(r.model, []).append(r)
    last_used = dict(ready) if isinstance(ready, Mapping) else dict.fromkeys(ready, 0.0)
    running = dict(running or {})
    sizes = dict(sizes or {})
    names = set(queues) | set(last_used) | set(loading)
    models: dict[str, ModelState] = {}
    for name in last_used:
        models[name] = ModelState(
            name, "ready", sizes.get(name, 1_000_000), last_used[name], running.get(name, 0), loads.get(name)
        )
    for name in loading:
        models[name] = ModelState(name, "loading", sizes.get(name, 1_000_000), 0.0, 0, loads.get(name))
    batches = tuple(RunningBatch(m, 1, 0.0) for m, n in running.items() for _ in range(n))
    return SchedulerState(
        queues={m: tuple(sorted(q, key=lambda r: (r.arrival, r.seq))) for m, q in queues.items()},
        models=models,
        running=batches,
        free_slots=free_slots,
        model_sizes={n: sizes.get(n, 1_000_000) for n in names},
        draining=draining,
        costs=costs,
        tiers={n: "resident" if n in models else "disk" for n in names},
        host_budget=host_budget,
    )


#: ``EngineSettings`` fields, and ``Limits`` fields, that :func:`server_settings` takes flat.
_ENGINE_FIELDS = (
    "policy",
    "policy_options",
    "workers",
    "torch_threads",
    "max_queue",
    "device",
    "dtype",
    "profile",
    "host_budget",
    "load_workers",
)
_LIMIT_FIELDS = ("max_covariates", "max_request_gflop", "max_inference_seconds")


def server_settings(**options: Any) -> Any:
    """A :class:`~chronoserve.server.ServerSettings` from flat keyword arguments, as the CLI's flags are.

    ``server_settings(default_model="m", policy_options={"max_wait": 0.001}, max_covariates=4)``
    puts each option where it belongs: the engine's (``policy``, ``max_queue``, ...) in
    ``engine``, the per-request limits in ``engine.limits``, the rest in the server's settings.
    The server's default ``max_queue`` (1024) holds unless one is given.
    """
    from .limits import Limits
    from .server import ServerSettings
    from .settings import EngineSettings

    limits = {k: options.pop(k) for k in _LIMIT_FIELDS if k in options}
    engine = {k: options.pop(k) for k in _ENGINE_FIELDS if k in options}
    engine.setdefault("max_queue", 1024)
    return ServerSettings(engine=EngineSettings(**engine, limits=Limits(**limits)), **options)
