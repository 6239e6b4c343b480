"""One edge-bench run: a model, k pinned cores, a batch size, through the serving engine.

The run goes through the same :class:`~chronoserve.engine.Engine`, policy (``batched``
with ``max_batch = B``) and :class:`~chronoserve.executor.ThreadExecutor` as the server:

- **SingleStream** (MLPerf): one query in flight at a time; a query is ``B`` series
  submitted together (``B = 1`` is MLPerf's SingleStream, ``B > 1`` its MultiStream
  shape), the next one is submitted when the previous one has answered, and its latency runs
  from submission to the last answer, so queueing in the engine counts.
- **Offline**: the queue is kept full (``3 B`` series waiting), the engine runs batches of
  ``B`` back to back; the metric is series per second, each batch's latency is its
  inference time.

Model loading is set-up and not timed (MLPerf: "loading of models is not timed"); its
duration is reported beside the run. Inputs are built before the clock starts (the "query
sample library"); there is no cache of results anywhere in the engine.

This module runs inside the pinned child process (see :mod:`chronoserve.edge.__main__`);
its pieces take injected loaders, samplers and inspectors so the tests run it on fakes.
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from chronoserve.data import SeriesStore
from chronoserve.engine import Engine
from chronoserve.executor import ThreadExecutor
from chronoserve.models.base import ModelLoader
from chronoserve.perf import BatchRecorder, CsvMetricsLogger, SystemSampler
from chronoserve.request import ForecastRequest, ForecastResult
from chronoserve.settings import EngineSettings

from . import rules as R
from .pinning import inspect_pinning

SCENARIOS = ("singlestream", "offline")
#: Extra columns of ``batches.csv`` after :data:`chronoserve.perf.BATCH_FIELDS`.
EXTRA_FIELDS = ("scenario", "cores", "phase", "queue_s", "inference_s", "ok")
#: Windows prepared before the clock starts, cycled through by the queries.
POOL_SIZE = 256
#: How long ``batched`` waits for a full batch (it never has to in either scenario).
MAX_WAIT_S = 0.002

Clock = Callable[[], float]


@dataclass(frozen=True)
class BenchConfig:
    """One run: what to run, where, and by which rules."""

    model: str
    cores: tuple[int, ...]
    """The core ids to pin to."""
    out: str
    batch: int = 1
    context: int = 240
    horizon: int = 24
    scenario: str = "singlestream"
    rules: R.RunRules = field(default_factory=R.RunRules)
    series: str = "dongsi"
    stride: int = 1
    interval_s: float = 1.0
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.scenario not in SCENARIOS:
            raise ValueError(f"scenario must be one of {SCENARIOS}, got {self.scenario!r}")
        for name in ("batch", "context", "horizon", "stride"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.cores:
            raise ValueError("cores must name at least one core")

    @property
    def k(self) -> int:
        return len(self.cores)

    @property
    def label(self) -> str:
        return f"cores{self.k}-batch{self.batch}"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["cores"] = list(self.cores)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BenchConfig:
        values = dict(data)
        values["cores"] = tuple(values["cores"])
        values["rules"] = R.RunRules(**values.get("rules", {}))
        return cls(**values)


# -- inputs --------------------------------------------------------------------------------------


def build_requests(store: SeriesStore, config: BenchConfig, size: int = POOL_SIZE) -> list[ForecastRequest]:
    """``size`` forecast requests over ``config.series``: fully observed windows of ``context``
    hours, ``stride`` hours apart, from the start of the series (deterministic)."""
    values = store.values(config.series)
    finite = np.isfinite(values).astype(np.int64)
    observed = np.concatenate(([0], np.cumsum(finite)))
    requests: list[ForecastRequest] = []
    start = 0
    while len(requests) < size and start + config.context <= len(values):
        end = start + config.context
        if observed[end] - observed[start] == config.context:
            requests.append(
                ForecastRequest(model=config.model, target=values[start:end].tolist(), horizon=config.horizon)
            )
        start += config.stride
    if not requests:
        raise ValueError(f"series {config.series!r} has no fully observed window of {config.context} hours")
    return requests


# -- progress ------------------------------------------------------------------------------------


class Progress:
    """A line on stderr: rewritten in place on a terminal, a new line every 5 s in a log."""

    def __init__(self, label: str, rules: R.RunRules, unit: str, enabled: bool = True) -> None:
        self.label, self.rules, self.unit, self.enabled = label, rules, unit, enabled
        self.tty = sys.stderr.isatty()
        self.every = 0.5 if self.tty else 5.0
        self.last = -math.inf

    def __call__(
        self, now: float, phase: str, elapsed: float, count: int, latest: float | None, final: bool = False
    ) -> None:
        if not self.enabled or (now - self.last < self.every and not final):
            return
        self.last = now
        if phase == "warmup":
            line = f"  {self.label}: warm-up {elapsed:.0f}/{self.rules.warmup_s:g} s, {count} {self.unit}"
        else:
            latest_ms = f", last {latest * 1000:.1f} ms" if latest is not None else ""
            line = (
                f"  {self.label}: {elapsed:.0f}/{self.rules.duration_s:g} s (max {self.rules.stop_after_s:g} s), "
                f"{count}/{self.rules.min_queries} {self.unit}{latest_ms}"
            )
        if self.tty:
            print("\r" + line.ljust(100), end="\n" if final else "", file=sys.stderr, flush=True)
        else:
            print(line, file=sys.stderr, flush=True)


# -- the loops -----------------------------------------------------------------------------------


@dataclass
class _Measured:
    start: float = 0.0
    end: float = 0.0
    queries: int = 0
    series: int = 0
    failed: int = 0
    warmup_queries: int = 0
    latencies: list[float] = field(default_factory=list)
    busy_s: float = 0.0
    """Time the system under test spent on the measured queries (the sum of their latencies)."""


async def _single_stream(
    engine: Engine,
    pool: Sequence[ForecastRequest],
    config: BenchConfig,
    logger: CsvMetricsLogger,
    clock: Clock,
    t0: float,
    progress: Progress,
) -> _Measured:
    rules, batch = config.rules, config.batch
    m = _Measured(start=rules.warmup_s)
    labels = _labels(config)
    i = 0
    while True:
        requests = [pool[(i + j) % len(pool)] for j in range(batch)]
        i += batch
        sent = clock()
        phase = "warmup" if sent - t0 < rules.warmup_s else "measured"
        results: list[Any] = []
        try:
            results = await engine.forecast_many(requests, return_exceptions=True)
        finally:
            done = clock()
        ok = all(isinstance(r, ForecastResult) for r in results)
        latency = done - sent
        first = next((r for r in results if isinstance(r, ForecastResult)), None)
        logger.log(
            time_s=done - t0,
            **labels,
            latency_s=latency,
            batch_size=batch,
            phase=phase,
            queue_s=first.timings.queue if first is not None else None,
            inference_s=first.timings.inference if first is not None else None,
            ok=ok,
        )
        if phase == "warmup":
            m.warmup_queries += 1
            progress(done, phase, done - t0, m.warmup_queries, latency)
            continue
        m.queries += 1
        m.series += batch
        m.failed += 0 if ok else 1
        if ok:
            m.latencies.append(latency)
            m.busy_s += latency
        elapsed = done - t0 - m.start
        finished = rules.done(elapsed, m.queries)
        progress(done, phase, elapsed, m.queries, latency, final=finished)
        if finished:
            m.end = done - t0
            return m


async def _offline(
    engine: Engine,
    pool: Sequence[ForecastRequest],
    config: BenchConfig,
    logger: CsvMetricsLogger,
    clock: Clock,
    t0: float,
    progress: Progress,
) -> _Measured:
    rules = config.rules
    m = _Measured(start=rules.warmup_s)
    depth = 3 * config.batch
    pending: set[asyncio.Future[ForecastResult]] = set()
    seen = len(logger.rows)
    i = 0
    try:
        while True:
            while len(pending) < depth:
                pending.add(await engine.submit(pool[i % len(pool)]))
                i += 1
            finished, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if clock() - t0 >= rules.warmup_s:
                m.failed += sum(1 for f in finished if not f.cancelled() and f.exception() is not None)
            # The batch rows written by the BatchRecorder since the last look.
            for row in logger.rows[seen:]:
                if row["phase"] == "measured":
                    m.queries += int(row["batch_size"])
                    m.series += int(row["batch_size"])
                    m.latencies.append(float(row["latency_s"]))
                    m.busy_s += float(row["latency_s"])
                else:
                    m.warmup_queries += int(row["batch_size"])
            seen = len(logger.rows)
            now = clock()
            if now - t0 < rules.warmup_s:
                progress(now, "warmup", now - t0, m.warmup_queries, None)
                continue
            elapsed = now - t0 - m.start
            done = rules.done(elapsed, m.queries)
            latest = m.latencies[-1] if m.latencies else None
            progress(now, "measured", elapsed, m.queries, latest, final=done)
            if done:
                m.end = now - t0
                return m
    finally:
        for future in pending:
            future.cancel()


def _labels(config: BenchConfig) -> dict[str, Any]:
    return {
        "series": config.series,
        "model": config.model,
        "context_hours": config.context,
        "horizon_hours": config.horizon,
        "stride": config.stride,
        "scenario": config.scenario,
        "cores": config.k,
    }


# -- one run -------------------------------------------------------------------------------------

SamplerFactory = Callable[[Path, BenchConfig], Any]


def default_sampler(path: Path, config: BenchConfig) -> SystemSampler:
    return SystemSampler(path, interval_s=config.interval_s, per_core=True, sensors=True, clock=time.perf_counter)


def run_benchmark(
    config: BenchConfig,
    *,
    loader: ModelLoader | None = None,
    store: SeriesStore | None = None,
    sampler_factory: SamplerFactory = default_sampler,
    inspect: Callable[[Sequence[int]], dict[str, Any]] = inspect_pinning,
    progress: bool = True,
    clock: Clock = time.perf_counter,
) -> dict[str, Any]:
    """Run ``config`` and return its result (the child writes it as ``result.json``).

    Writes ``batches.csv`` and ``samples.csv`` into ``config.out``. ``loader`` (default: the
    Chronos loader), ``store`` (default: the embedded PM2.5 series), ``sampler_factory``,
    ``inspect`` and ``clock`` are for tests.
    """
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    pool = build_requests(store or SeriesStore.embedded(), config)
    sampler = sampler_factory(out / "samples.csv", config)
    return asyncio.run(_run(config, pool, out, sampler, loader, inspect, progress, clock))


async def _run(
    config: BenchConfig,
    pool: Sequence[ForecastRequest],
    out: Path,
    sampler: Any,
    loader: ModelLoader | None,
    inspect: Callable[[Sequence[int]], dict[str, Any]],
    progress: bool,
    clock: Clock,
) -> dict[str, Any]:
    executor = ThreadExecutor(1, config.k, "edge-infer")
    settings = EngineSettings(
        policy_options={"max_batch": config.batch, "max_wait": MAX_WAIT_S},
        workers=1,
        torch_threads=config.k,
        dtype=config.dtype,
    )
    engine = settings.engine(loader=loader, executor=executor)
    unit = "queries" if config.scenario == "singlestream" else "series"
    async with engine:
        started = clock()
        await engine.warm(config.model)  # load + one tiny forecast: set-up, not timed
        load_s = clock() - started
        spec = engine.spec(config.model)
        assert spec is not None
        pinning = {"after_load": inspect(config.cores)}
        pinning["after_load"]["worker_torch_threads"] = await executor.run(_torch_threads)
        t0 = clock()
        logger = CsvMetricsLogger(out / "batches.csv", extra_fields=EXTRA_FIELDS, t0=t0, clock=clock)
        sampler.t0 = t0
        bar = Progress(config.label, config.rules, unit, enabled=progress)
        with sampler:
            if config.scenario == "singlestream":
                measured = await _single_stream(engine, pool, config, logger, clock, t0, bar)
            else:

                def offline_labels(model: str) -> dict[str, Any]:
                    now = clock() - t0
                    return {**_labels(config), "phase": "warmup" if now < config.rules.warmup_s else "measured"}

                engine.add_observer(BatchRecorder(logger, labels=offline_labels))
                measured = await _offline(engine, pool, config, logger, clock, t0, bar)
        logger.close()
        pinning["at_end"] = inspect(config.cores)
    pinning_ok = bool(pinning["after_load"].get("ok")) and bool(pinning["at_end"].get("ok"))
    return summarize_run(
        config,
        measured,
        list(sampler.samples),
        cores=int(getattr(sampler, "cores", 0) or 0),
        pinning=pinning,
        pinning_ok=pinning_ok,
        load_s=load_s,
        model={
            "name": spec.name,
            "random_weights": spec.random_weights,
            "family": spec.family,
            "num_params": spec.num_params,
            "dtype": config.dtype,
            "source": spec.source,
        },
        sensor_sources=dict(getattr(getattr(sampler, "sensors", None), "sources", {}) or {}),
    )


def _torch_threads() -> dict[str, int] | None:
    """torch's thread counts as an inference worker sees them (None if torch is not loaded)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    return {"num_threads": int(torch.get_num_threads()), "num_interop_threads": int(torch.get_num_interop_threads())}


def summarize_run(
    config: BenchConfig,
    m: _Measured,
    samples: Sequence[Mapping[str, Any]],
    *,
    cores: int,
    pinning: Mapping[str, Any],
    pinning_ok: bool,
    load_s: float,
    model: Mapping[str, Any],
    sensor_sources: Mapping[str, Any],
) -> dict[str, Any]:
    """Statistics, system readings and the verdict of one run, as a JSON-ready dict."""
    rules = config.rules
    duration = max(0.0, m.end - m.start)
    window = R.in_window(samples, m.start, m.end)
    dirty = R.contamination(window, config.cores, cores, rules.contamination_percent)
    throttle = R.throttling(samples)
    early = R.early_stopping_p90(m.latencies) if config.scenario == "singlestream" else None
    verdict, reasons = R.verdict(
        rules,
        measured_s=duration,
        queries=m.queries,
        failed=m.failed,
        early_stopping=early,
        contamination_info=dirty,
        throttling_info=throttle,
        pinning_ok=pinning_ok,
    )
    rss = R.numbers(samples, "proc_rss_bytes")
    energy = R.series_summary(window, "energy_uj")
    energy_j = (energy["end"] - energy["start"]) / 1e6 if energy is not None and len(window) > 1 else None
    return {
        "label": config.label,
        "config": config.to_dict(),
        "model": dict(model),
        "load_seconds": load_s,
        "pinning": dict(pinning),
        "warmup": {"duration_s": m.start, "queries": m.warmup_queries},
        "measured": {
            "start_s": m.start,
            "end_s": m.end,
            "duration_s": duration,
            "queries": m.queries,
            "series": m.series,
            "failed": m.failed,
            "unit": "queries" if config.scenario == "singlestream" else "series",
        },
        "latency_s": R.latency_stats(m.latencies),
        "early_stopping_p90": early,
        "throughput": {
            "series_per_s": m.series / duration if duration > 0 else None,
            "series_per_s_without_harness": m.series / m.busy_s if m.busy_s > 0 else None,
            "queries_per_s": m.queries / duration if duration > 0 and config.scenario == "singlestream" else None,
        },
        "system": {
            "samples": len(samples),
            "samples_measured": len(window),
            "proc_cpu_percent": R.series_summary(window, "proc_cpu_percent"),
            "cpu_percent": R.series_summary(window, "cpu_percent"),
            "peak_rss_bytes": int(max(rss)) if rss else None,
            "rss_bytes": R.series_summary(window, "proc_rss_bytes"),
            "temp_c": R.series_summary(samples, "temp_c"),
            "freq_mhz": R.series_summary(window, "freq_mhz"),
            "throttled": throttle,
            "energy_j": energy_j,
            "energy_j_per_series": energy_j / m.series if energy_j is not None and m.series else None,
            "sensor_sources": dict(sensor_sources),
        },
        "contamination": dirty,
        "verdict": verdict,
        "reasons": reasons,
    }
