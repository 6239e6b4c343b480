"""One profile process: a model on W workers x T torch threads, every (class, batch size) asked of it.

Each (class, batch size) is one row of the cost table, measured through the engine as it
serves (the ``batched`` policy with ``max_batch = B``):

1. **Saturation**: the queue is kept full (every worker always has a full batch waiting), so
   the engine runs batches of B back to back on its W workers, side by side; per batch, its
   inference time (what the worker spent on it, neighbours included), and over the phase the
   series per second, CPU-seconds (the process's, every thread) per 1,000 forecasts, the peak
   RSS and, where a counter is readable, energy. A few batches are run first and not counted.
2. **Maximum serviceable request rate** (:mod:`chronoserve.profile.msrr`): Poisson arrivals of
   single requests at rates bisected between 0 and the saturation throughput; the highest
   whose p95 end-to-end latency meets the SLO.

Rows are appended to the journal (JSON lines) as each finishes, so an interrupted profile
resumes where it stopped. This runs in a child process of ``chronoserve profile`` (torch's
thread pools are per process), and in-process in tests with fake models.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..costs import BatchCost
from ..data import SeriesStore
from ..engine import Engine
from ..events import EngineObserver
from ..models.base import ModelLoader, ModelSpec
from ..perf import SystemSampler
from ..request import ForecastRequest
from ..settings import EngineSettings
from .classes import QueryClass
from .msrr import Probe, poisson_probe, search


@dataclass(frozen=True)
class RunSettings:
    """How long and how hard each row is measured (``--quick`` shortens all of it)."""

    slo_p95_ms: float = 500.0
    max_wait_ms: float = 10.0
    warmup_batches: int = 2
    min_batches: int = 20
    min_seconds: float = 3.0
    max_seconds: float = 30.0
    msrr_steps: int = 6
    probe_seconds: float = 4.0
    probe_min_requests: int = 200
    series: str = "dongsi"
    device: str = "cpu"
    dtype: str = "float32"

    @classmethod
    def quick(cls, **changes: Any) -> RunSettings:
        values: dict[str, Any] = {
            "warmup_batches": 1,
            "min_batches": 5,
            "min_seconds": 1.0,
            "max_seconds": 8.0,
            "msrr_steps": 4,
            "probe_seconds": 1.5,
            "probe_min_requests": 40,
        }
        return cls(**{**values, **changes})


@dataclass(frozen=True)
class Work:
    """What one profile process runs: a model, its workers and threads, and the rows still to measure."""

    model: str
    workers: int
    torch_threads: int
    items: tuple[tuple[QueryClass, int], ...]
    """(class, batch size) pairs."""
    journal: str
    settings: RunSettings
    backend: str = "torch"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["items"] = [{"class": asdict(c), "batch": b} for c, b in self.items]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Work:
        items = tuple((QueryClass(**item["class"]), int(item["batch"])) for item in data["items"])
        return cls(
            model=data["model"],
            workers=int(data["workers"]),
            torch_threads=int(data["torch_threads"]),
            items=items,
            journal=data["journal"],
            settings=RunSettings(**data["settings"]),
            backend=data.get("backend", "torch"),
        )


def row_key(row: dict[str, Any]) -> tuple[str, str, int, int, int, str]:
    """What identifies a row of the cost table (a resumed profile skips rows with a known key)."""
    return (
        str(row["model"]),
        str(row["class"]),
        int(row["batch"]),
        int(row["workers"]),
        int(row["torch_threads"]),
        str(row.get("backend", "torch")),
    )


# -- inputs --------------------------------------------------------------------------------------


def build_pool(store: SeriesStore, series: str, query: QueryClass, model: str, size: int) -> list[ForecastRequest]:
    """``size`` requests of ``query``'s shape from ``series``: successive windows, a day apart
    (deterministic); covariates are the series' first covariate columns, past and future."""
    target = store.values(series)
    names = store.info(series).covariates[: query.covariates]
    if len(names) < query.covariates:
        raise ValueError(f"series {series!r} has {len(names)} covariates; class {query.name} needs {query.covariates}")
    columns = {name: store.values(series, name) for name in names}
    span = query.context + query.horizon
    if span > len(target):
        raise ValueError(f"series {series!r} has {len(target)} points; class {query.name} needs {span}")
    pool: list[ForecastRequest] = []
    start = 0
    while len(pool) < size:
        if start + span > len(target):
            start = 0
        end = start + query.context
        window = target[start:end]
        if np.isfinite(window).any():
            past = {n: np.nan_to_num(c[start:end]) for n, c in columns.items()} or None
            future = {n: np.nan_to_num(c[end : end + query.horizon]) for n, c in columns.items()} or None
            pool.append(
                ForecastRequest(
                    model=model, target=window, horizon=query.horizon, past_covariates=past, future_covariates=future
                )
            )
        start += 24
    return pool


# -- observing batches ---------------------------------------------------------------------------


class _Batches(EngineObserver):
    """Every batch that ran: its size, inference time, and the work the engine estimated for it."""

    def __init__(self) -> None:
        self.runs: list[tuple[int, float, float, int, int]] = []
        """(size, seconds, GFLOP, rows, steps) per batch, in the order they finished."""

    def batch_cost(self, cost: BatchCost) -> None:
        f = cost.features
        self.runs.append((cost.size, cost.seconds, f.gflop, f.rows, f.steps))


def _percentile_ms(values: Sequence[float], q: float) -> float | None:
    return None if not values else float(np.percentile(values, q)) * 1000.0


# -- one row -------------------------------------------------------------------------------------

Say = Callable[[str], None]


async def _saturate(
    engine: Engine, pool: Sequence[ForecastRequest], batch: int, workers: int, settings: RunSettings, say: Say
) -> dict[str, Any]:
    """Keep every worker busy with full batches; measure the batches after the warm-up ones."""
    observer = _Batches()
    engine.add_observer(observer)
    depth = batch * (workers + 2)
    pending: set[asyncio.Future[Any]] = set()
    i = 0
    warm = settings.warmup_batches * workers
    measured_from: int | None = None
    start = cpu_start = 0.0
    answered = 0
    sampler = SystemSampler(None, interval_s=0.1, sensors=True)
    energy_start: float | None = None
    last_say = time.monotonic()
    try:
        while True:
            while len(pending) < depth:
                pending.add(await engine.submit(pool[i % len(pool)]))
                i += 1
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for future in done:
                future.result()  # a failed forecast ends the profile of this row, loudly
            if measured_from is None:
                if len(observer.runs) >= warm:
                    measured_from = len(observer.runs)
                    sampler.start()
                    energy_start = _energy(sampler)
                    start, cpu_start = time.monotonic(), time.process_time()
                continue
            answered += len(done)
            runs = observer.runs[measured_from:]
            elapsed = time.monotonic() - start
            if time.monotonic() - last_say > 2.0:
                say(f"saturation: {len(runs)} batches in {elapsed:.1f} s")
                last_say = time.monotonic()
            enough = len(runs) >= settings.min_batches and elapsed >= settings.min_seconds
            if enough or elapsed >= settings.max_seconds:
                break
        cpu = time.process_time() - cpu_start
        energy_end = _energy(sampler)
    finally:
        sampler.stop()
        # The few batches still queued run out (cancelling them would stop batches half-way):
        # the engine is idle again before the rate search.
        await asyncio.gather(*pending, return_exceptions=True)
    runs = [r for r in observer.runs[measured_from:] if r[0] == batch] or observer.runs[measured_from:]
    full = [r[1] for r in runs]
    energy = None if energy_start is None or energy_end is None else (energy_end - energy_start) / 1e6
    return {
        "batches_measured": len(full),
        "latency_p50_ms": _percentile_ms(full, 50),
        "latency_p95_ms": _percentile_ms(full, 95),
        "latency_p99_ms": _percentile_ms(full, 99),
        "series_per_s": answered / elapsed if elapsed > 0 else None,
        "cpu_s_per_1k": 1000.0 * cpu / answered if answered else None,
        "peak_rss_mb": None if sampler.peak_rss_bytes is None else sampler.peak_rss_bytes / 1e6,
        "energy_j_per_forecast": None if energy is None or not answered else energy / answered,
        "gflop_per_batch": float(np.median([r[2] for r in runs])) if runs else None,
        "rows_per_batch": int(np.median([r[3] for r in runs])) if runs else None,
        "steps_per_batch": int(np.median([r[4] for r in runs])) if runs else None,
    }


def _energy(sampler: SystemSampler) -> float | None:
    if sampler.sensors is None:
        return None
    value = sampler.sensors.read().get("energy_uj")
    return None if value is None else float(value)


async def measure_row(
    work: Work,
    query: QueryClass,
    batch: int,
    spec: ModelSpec,
    loader: ModelLoader,
    store: SeriesStore,
    say: Say,
    engine_parts: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One row of the cost table (see the module's docstring)."""
    settings = work.settings
    t0 = time.monotonic()
    pool = build_pool(store, settings.series, query, spec.name, size=max(64, 4 * batch))
    engine_settings = EngineSettings(
        policy="batched",
        policy_options={"max_batch": batch, "max_wait": settings.max_wait_ms / 1000.0, "max_resident": 1},
        workers=work.workers,
        torch_threads=work.torch_threads,
        device=settings.device,
        dtype=settings.dtype,
    )
    async with engine_settings.engine(loader=loader, **(engine_parts or {})) as engine:
        await engine.forecast(pool[0])  # load the model (not timed)
        saturated = await _saturate(engine, pool, batch, work.workers, settings, say)
        capacity = saturated["series_per_s"]
        slo = settings.slo_p95_ms / 1000.0

        async def probe(rate: float) -> Probe:
            return await poisson_probe(
                engine,
                pool,
                rate,
                slo_s=slo,
                seconds=settings.probe_seconds,
                min_requests=settings.probe_min_requests,
                seed=int(rate * 1000) % 2**32,
                grace_s=slo,
                clock=time.monotonic,
            )

        def report(i: int, p: Probe) -> None:
            verdict = "meets" if p.ok else "misses"
            p95 = "no answer" if math.isinf(p.p95_s) else f"p95 {p.p95_s * 1000:.0f} ms"
            say(f"MSRR probe {i + 1}/{settings.msrr_steps}: {p.rate:.1f}/s, {p95}: {verdict} the SLO")

        found = await search(probe, capacity, settings.msrr_steps, on_probe=report) if capacity else None
    return {
        "model": spec.name,
        "family": spec.family,
        "random_weights": spec.random_weights,
        "class": query.name,
        "context": query.context,
        "horizon": query.horizon,
        "covariates": query.covariates,
        "output_steps": query.output_steps(spec),
        "batch": batch,
        "workers": work.workers,
        "torch_threads": work.torch_threads,
        "backend": work.backend,
        **saturated,
        "slo_p95_ms": settings.slo_p95_ms,
        "max_wait_ms": settings.max_wait_ms,
        "msrr_per_s": None if found is None else found.msrr,
        "msrr_p95_ms": None if found is None or found.p95_s is None else found.p95_s * 1000.0,
        "msrr_resolution_per_s": None if capacity is None else capacity / 2**settings.msrr_steps,
        "seconds": time.monotonic() - t0,
    }


# -- the process ---------------------------------------------------------------------------------


def run_work(
    work: Work,
    *,
    loader: ModelLoader | None = None,
    store: SeriesStore | None = None,
    say: Say | None = None,
    engine_parts: dict[str, Any] | None = None,
) -> int:
    """Measure every item of ``work``, appending each row to the journal as it finishes; rows done."""
    if loader is None:
        loader = EngineSettings(device=work.settings.device, dtype=work.settings.dtype).loader()
    store = store if store is not None else SeriesStore.embedded()
    spec = loader.resolve(loader.canonical(work.model))
    journal = Path(work.journal)
    journal.parent.mkdir(parents=True, exist_ok=True)
    done = 0
    for query, batch in work.items:
        label = f"{spec.name} {query.name} B={batch} {work.workers}x{work.torch_threads}"

        def tell(text: str, label: str = label) -> None:
            (say or _stderr)(f"  {label}: {text}")

        row = asyncio.run(measure_row(work, query, batch, spec, loader, store, tell, engine_parts))
        with journal.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")
        done += 1
        msrr = "-" if row["msrr_per_s"] is None else f"{row['msrr_per_s']:.1f}/s"
        tell(
            f"p50 {row['latency_p50_ms']:.1f} ms, {row['series_per_s']:.0f} series/s, MSRR {msrr} "
            f"({row['seconds']:.0f} s)"
        )
    return done


def _stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m chronoserve.profile WORK.json``: run one profile process (``chronoserve profile`` starts it)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m chronoserve.profile WORK.json (written by `chronoserve profile`)", file=sys.stderr)
        return 2
    work = Work.from_dict(json.loads(Path(args[0]).read_text(encoding="utf-8")))
    from ..errors import ChronoserveError

    try:
        run_work(work)
    except (ChronoserveError, ValueError) as exc:
        print(f"chronoserve profile: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
