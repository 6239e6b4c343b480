"""``chronoserve eval --perf``: forecast continuously for a wall-clock budget per configuration
and log what it costs.

For each (model, context, horizon, covariate set) of the sweep's grid (Chronos models only:
the baselines do not run on the engine), ``in_flight`` callers each forecast one window after
another (cycling over the configuration's windows of every series) until the budget is spent:
a closed loop that keeps the engine's batches full, as a steady load would. Every engine
batch becomes a row of ``batches.csv`` (:class:`~chronoserve.perf.CsvMetricsLogger` through a
:class:`~chronoserve.perf.BatchRecorder`: ``latency_s`` is the batch's inference time) and a
:class:`~chronoserve.perf.SystemSampler` writes ``system_stats.csv`` on the same time base.

Each model gets its own engine: it is loaded (and warmed with one forecast, logged with
``phase=warmup``) before its first configuration, and released after its last, so its memory
is measured on its own. ``perf_summary.csv`` has one row per configuration; the plots are
``perf_over_time.png`` (batch latency, CPU and RSS against time) and ``perf_per_model.png``
(latency, throughput and memory per model).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import itertools
import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from chronoserve.data import SeriesStore
from chronoserve.eval.cells import WindowSet
from chronoserve.eval.grid import Config, SweepSettings, configurations, display_covariates, model_label
from chronoserve.eval.lanes import window_request

if TYPE_CHECKING:
    from chronoserve.models.base import ModelSpec
    from chronoserve.perf import CsvMetricsLogger, SystemSampler

#: Extra columns of ``batches.csv`` after the shared ones.
EXTRA_FIELDS: tuple[str, ...] = ("covariates", "phase")
SUMMARY_FIELDS: tuple[str, ...] = (
    "model",
    "random_weights",
    "context_hours",
    "horizon_hours",
    "covariates",
    "seconds",
    "forecasts",
    "forecasts_per_s",
    "batches",
    "mean_batch",
    "batch_latency_p50_ms",
    "batch_latency_p95_ms",
    "ms_per_forecast",
    "cpu_mean_percent",
    "peak_rss_mb",
)


@dataclass
class PerfRow:
    """What one configuration cost."""

    config: Config
    seconds: float
    forecasts: int
    batches: list[tuple[float, int]] = field(default_factory=list)
    """(latency_s, batch_size) of each measured batch."""
    cpu: list[float] = field(default_factory=list)
    rss: list[int] = field(default_factory=list)
    start_s: float = 0.0
    end_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        lat = np.array([b[0] for b in self.batches], dtype=np.float64)
        sizes = np.array([b[1] for b in self.batches], dtype=np.float64)
        c = self.config
        return {
            "model": c.model,
            "random_weights": c.random_weights,
            "context_hours": c.context_hours,
            "horizon_hours": c.horizon,
            "covariates": c.covariates_label,
            "seconds": self.seconds,
            "forecasts": self.forecasts,
            "forecasts_per_s": self.forecasts / self.seconds if self.seconds > 0 else math.nan,
            "batches": len(self.batches),
            "mean_batch": float(sizes.mean()) if sizes.size else math.nan,
            "batch_latency_p50_ms": float(np.percentile(lat, 50) * 1000) if lat.size else math.nan,
            "batch_latency_p95_ms": float(np.percentile(lat, 95) * 1000) if lat.size else math.nan,
            "ms_per_forecast": float(lat.sum() / sizes.sum() * 1000) if sizes.sum() else math.nan,
            "cpu_mean_percent": float(np.mean(self.cpu)) if self.cpu else math.nan,
            "peak_rss_mb": max(self.rss) / 2**20 if self.rss else math.nan,
        }


@dataclass
class PerfResult:
    rows: list[PerfRow]
    files: list[Path]
    model_bytes: dict[str, int]
    """Each model's estimated weight size (parameters times dtype size)."""

    def format_table(self) -> str:
        """The summary, one line per configuration, for the terminal."""
        lines = [
            f"{'model':<44} {'ctx':>5} {'H':>4} {'covariates':<22} {'fc/s':>8} {'batch':>6} "
            f"{'p50 ms':>8} {'p95 ms':>8} {'ms/fc':>7} {'RSS MB':>7}"
        ]
        for row in self.rows:
            d = row.to_dict()
            label = model_label(d["model"], d["random_weights"])
            lines.append(
                f"{label:<44.44} {d['context_hours']:>4}h {d['horizon_hours']:>3}h "
                f"{display_covariates(d['covariates']):<22.22} {d['forecasts_per_s']:>8.1f} {d['mean_batch']:>6.1f} "
                f"{d['batch_latency_p50_ms']:>8.1f} {d['batch_latency_p95_ms']:>8.1f} {d['ms_per_forecast']:>7.2f} "
                f"{d['peak_rss_mb']:>7.0f}"
            )
        if any(r.config.random_weights for r in self.rows):
            lines.append("([random weights]: the timings are real, the forecasts are not)")
        return "\n".join(lines)


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def _series_label(series: Sequence[str]) -> str:
    return "+".join(series) if len(series) <= 3 else f"all {len(series)}"


def _in_flight(engine_options: Mapping[str, Any]) -> int:
    """Enough callers to fill a batch on every worker and one waiting: 2 * max_batch * workers."""
    options = engine_options.get("policy_options") or {}
    batch = int(options.get("max_batch", 32))
    workers = int(engine_options.get("workers") or 2)
    return max(1, 2 * batch * workers)


async def _drive(engine: Any, requests: Sequence[Any], budget: float, in_flight: int) -> int:
    """``in_flight`` callers forecast request after request (cycling) until ``budget`` seconds
    have passed; returns how many forecasts finished."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + budget
    source = itertools.cycle(requests)

    async def caller() -> int:
        n = 0
        while loop.time() < deadline:
            await engine.forecast(next(source))
            n += 1
        return n

    return sum(await asyncio.gather(*(caller() for _ in range(in_flight))))


async def run_perf(
    settings: SweepSettings,
    out: str | Path,
    *,
    store: SeriesStore,
    specs: Mapping[str, ModelSpec],
    engine_options: Mapping[str, Any],
    budget: float,
    interval: float = 1.0,
    in_flight: int | None = None,
    progress: bool = True,
    plots: bool = True,
) -> PerfResult:
    """Measure every model configuration of ``settings`` for ``budget`` seconds (module docstring)."""
    from chronoserve.engine import Engine
    from chronoserve.perf import BatchRecorder, CsvMetricsLogger, SystemSampler

    out_dir = Path(out)
    await asyncio.to_thread(out_dir.mkdir, parents=True, exist_ok=True)
    configs = [c for c in configurations(settings, specs) if c.kind == "model"]
    windows = WindowSet(store, settings)
    callers = in_flight if in_flight is not None else _in_flight(engine_options)
    current: dict[str, Any] = {"phase": "warmup"}
    series = _series_label(settings.series)

    def labels(model: str) -> dict[str, Any]:
        return {"series": series, "stride": settings.stride, **current}

    rows: list[PerfRow] = []
    logger = CsvMetricsLogger(out_dir / "batches.csv", extra_fields=EXTRA_FIELDS)
    sampler = SystemSampler(out_dir / "system_stats.csv", interval_s=interval, t0=logger.t0)
    say = _Say(progress)
    with logger, sampler:
        for model, group in itertools.groupby(configs, key=lambda c: c.model):
            recorder = BatchRecorder(logger, labels)
            engine = Engine(**{**engine_options, "observers": [recorder]})
            await engine.start()
            try:
                current.update(phase="warmup", context_hours=None, horizon_hours=None, covariates=None)
                left = len(configs) - len(rows)
                say(
                    f"loading {model_label(model, specs[model].random_weights)} ... "
                    f"({left} configurations left, about {_minutes(left * budget)})"
                )
                await engine.warm(model)
                for config in group:
                    cells = [windows.cell(sid, config.context_hours, config.horizon) for sid in settings.series]
                    requests = [window_request(store, config, w) for cell in cells for w in cell.usable]
                    if not requests:
                        continue
                    current.update(
                        phase="measure",
                        context_hours=config.context_hours,
                        horizon_hours=config.horizon,
                        covariates=config.covariates_label,
                    )
                    first_row = len(logger.rows)
                    first_sample = len(sampler.samples)
                    start = time.monotonic()
                    ticker = asyncio.ensure_future(_tick(say, config, budget, start, logger, first_row))
                    try:
                        forecasts = await _drive(engine, requests, budget, callers)
                    finally:
                        ticker.cancel()
                    end = time.monotonic()
                    row = _perf_row(config, logger, sampler, first_row, first_sample, start, end, forecasts)
                    rows.append(row)
                    say(
                        f"[{len(rows)}/{len(configs)}] {config.describe()}: {forecasts} forecasts in "
                        f"{row.seconds:.1f} s ({row.to_dict()['forecasts_per_s']:.1f}/s)"
                    )
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.shield(engine.close(drain=False))
    files = [out_dir / "batches.csv", out_dir / "system_stats.csv", _write_summary(out_dir, rows)]
    model_bytes = {m: specs[m].est_nbytes for m in settings.models}
    if plots and rows:
        from chronoserve.eval.plots import plot_perf

        files += plot_perf(out_dir, settings, rows, logger.rows, sampler.samples, model_bytes, budget)
    return PerfResult(rows, files, model_bytes)


def _perf_row(
    config: Config,
    logger: CsvMetricsLogger,
    sampler: SystemSampler,
    first_row: int,
    first_sample: int,
    start: float,
    end: float,
    forecasts: int,
) -> PerfRow:
    batches = [
        (float(r["latency_s"]), int(r["batch_size"])) for r in logger.rows[first_row:] if r.get("phase") == "measure"
    ]
    samples = sampler.samples[first_sample:]
    cpu = [float(s["cpu_percent"]) for s in samples if s.get("cpu_percent") is not None]  # type: ignore[arg-type]
    rss = [int(s["proc_rss_bytes"]) for s in samples if s.get("proc_rss_bytes") is not None]  # type: ignore[arg-type]
    return PerfRow(
        config,
        end - start,
        forecasts,
        batches,
        cpu,
        rss,
        start_s=start - logger.t0,
        end_s=end - logger.t0,
    )


def _write_summary(out: Path, rows: Sequence[PerfRow]) -> Path:
    path = out / "perf_summary.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(SUMMARY_FIELDS))
        writer.writeheader()
        for row in rows:
            d = row.to_dict()
            writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()})
    return path


async def _tick(say: _Say, config: Config, budget: float, start: float, logger: CsvMetricsLogger, first: int) -> None:
    """A status line every few seconds while a configuration runs."""
    while True:
        await asyncio.sleep(say.every)
        batches = len(logger.rows) - first
        say(f"  perf: {config.describe()}: {time.monotonic() - start:.0f} of {budget:.0f} s, {batches} batches")


class _Say:
    def __init__(self, enabled: bool, every: float = 5.0) -> None:
        self.enabled = enabled
        self.every = every

    def __call__(self, line: str) -> None:
        if self.enabled:
            print(line, file=sys.stderr, flush=True)
