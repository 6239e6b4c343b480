"""The accuracy sweep behind ``chronoserve eval``: the grid of configurations and its runner.

A *configuration* is one model (a Chronos model or a baseline), one context length, one
horizon and one covariate set. It is scored on the rolling windows of every chosen series
(:func:`~chronoserve.eval.windows.store_windows`: context ``[i - C, i)``, horizon ``[i, i +
H)``, the stride, at most ``max_windows`` per series, inside the span). The windows depend on
the data only, and every configuration forecasts from the same hours: the first forecast
start leaves room for the longest context in the span, the last for the longest horizon,
whatever the configuration's own context and horizon. So error against context and against
horizon compare forecasts of the same hours, and the relative scores pair the same windows.

- Chronos models run through :class:`~chronoserve.Engine`, the server's engine: the requests
  of a configuration are submitted at once and the policy batches them; models run in its
  worker threads.
- Baselines (:data:`~chronoserve.eval.baselines.BASELINES`) run in a thread, a chunk of
  windows at a time, alongside the models (two lanes on one event loop).
- Windows whose horizon has no observed value (nothing to score) or whose context has none
  (nothing to forecast from) are skipped and counted; NaN targets inside a window are skipped
  by the metrics (:func:`~chronoserve.eval.metrics.score_window`).
- Covariates (Chronos-2 only): ``none``, ``all`` (humidity, temperature and wind speed) or
  ``combos`` (all 2³ subsets, the empty one included). Their context values are past-only
  covariates; with ``known_future`` their true horizon values are passed as known-future
  covariates too (the study's optimistic assumption). Other models run once, with none.
- MASE's scale is the mean absolute seasonal (24 h) difference of the whole history before
  the forecast start (:attr:`EvalWindow.history <chronoserve.eval.windows.EvalWindow.history>`),
  as fev and gluonts compute it: the scale of a window is then the same for every context
  length, so MASE against context compares forecasts, not denominators.

Resuming: each finished configuration is written atomically to ``OUT/configs/<key>.json``
and ``OUT/settings.json`` holds the settings. A run with the same settings skips the
configurations already there; a run with other settings into the same directory raises
:class:`SettingsMismatch` unless ``overwrite``.

Importing this module is cheap (numpy and the standard library): the engine, the models and
matplotlib are imported when a sweep runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from chronoserve.data import SeriesStore
from chronoserve.eval.baselines import BASELINES
from chronoserve.eval.grid import (
    BASELINE_CHUNK,
    COVARIATES,
    LEVELS,
    Config,
    SweepError,
    SweepSettings,
    check_settings,
    configurations,
    span_rows,
)
from chronoserve.eval.metrics import SEASON, score_window
from chronoserve.eval.rundir import (
    ConfigResult,
    RunDir,
    SweepProgress,
)
from chronoserve.eval.windows import EvalWindow, series_data, store_windows

if TYPE_CHECKING:
    from chronoserve.engine import Engine
    from chronoserve.models.base import ModelLoader, ModelSpec
    from chronoserve.request import ForecastRequest, ForecastResult


# ---------------------------------------------------------------------------------------------
# Windows and scoring


@dataclass
class Cell:
    """The windows of one (series, context, horizon), shared by every configuration."""

    series: str
    windows: list[EvalWindow]
    usable: list[EvalWindow] = field(default_factory=list)
    skipped_target: int = 0
    skipped_context: int = 0

    def __post_init__(self) -> None:
        for w in self.windows:
            if w.target_all_nan:
                self.skipped_target += 1
            elif w.context_all_nan:
                self.skipped_context += 1
            else:
                self.usable.append(w)

    def counts(self) -> dict[str, int]:
        return {
            "windows": len(self.windows),
            "scored": len(self.usable),
            "skipped_target_nan": self.skipped_target,
            "skipped_context_nan": self.skipped_context,
        }


class WindowSet:
    """Cuts the windows of each (series, context, horizon) once."""

    def __init__(self, store: SeriesStore, settings: SweepSettings) -> None:
        self.store, self.settings = store, settings
        self._cells: dict[tuple[str, int, int], Cell] = {}

    def cell(self, series: str, context: int, horizon: int) -> Cell:
        key = (series, context, horizon)
        if key not in self._cells:
            s = self.settings
            lo, hi = span_rows(self.store, series, s.start, s.end)
            # Every context and horizon forecasts from the same hours: the first start leaves
            # room for the longest context, the last for the longest horizon.
            windows = store_windows(
                self.store,
                series,
                context=context,
                horizon=horizon,
                stride=s.stride,
                start=lo + max(s.context_days) * 24 - context,
                end=hi - max(s.horizons) + horizon,
                max_windows=s.max_windows,
            )
            self._cells[key] = Cell(series, list(windows))
        return self._cells[key]


def _score(config: Config, w: EvalWindow, median: Any, quantiles: Any, levels: Sequence[float]) -> dict[str, Any]:
    scores = score_window(w.target, median, quantiles, levels, w.history, season=SEASON)
    return {
        "series": w.series,
        "model": config.model,
        "random_weights": config.random_weights,
        "context_days": config.context_hours // 24,
        "context_hours": config.context_hours,
        "horizon_hours": config.horizon,
        "covariates": config.covariates_label,
        "covariate_use": config.covariate_use,
        "window": w.number,
        "forecast_start": w.forecast_time.isoformat() if w.forecast_time is not None else str(w.forecast_start),
        "target_observed": w.target_observed,
        **scores,
    }


def window_request(
    store: SeriesStore, config: Config, w: EvalWindow, levels: Sequence[float] = LEVELS
) -> ForecastRequest:
    """The engine request of one window: its context, and the covariates the config asks for."""
    from chronoserve.request import ForecastRequest

    i, c, h = w.forecast_start, config.context_hours, config.horizon
    past = {name: store.values(w.series, name)[i - c : i] for name in config.covariates} or None
    future = None
    if config.known_future and config.covariates:
        future = {name: store.values(w.series, name)[i : i + h] for name in config.covariates}
    return ForecastRequest(
        model=config.model,
        target=w.context,
        horizon=h,
        quantile_levels=tuple(levels),
        past_covariates=past,
        future_covariates=future,
        request_id=f"{w.series}:{c}:{h}:{w.number}",
    )


async def forecast_all(
    engine: Engine, requests: Sequence[ForecastRequest], on_done: Callable[[int], None] | None = None
) -> list[ForecastResult]:
    """Submit every request to ``engine`` at once (its policy batches them) and wait for all;
    ``on_done(1)`` is called as each finishes. The first error cancels the rest and is raised."""
    futures: list[asyncio.Future[ForecastResult]] = []
    try:
        for request in requests:
            future = await engine.submit(request)
            if on_done is not None:
                future.add_done_callback(lambda f: None if f.cancelled() else on_done(1))
            futures.append(future)
        return list(await asyncio.gather(*futures))
    except BaseException:
        for future in futures:
            future.cancel()
        raise


async def _run_model(
    engine: Engine, store: SeriesStore, config: Config, cells: Sequence[Cell], progress: SweepProgress
) -> ConfigResult:
    started = time.monotonic()
    windows = [w for cell in cells for w in cell.usable]
    requests = [window_request(store, config, w) for w in windows]
    results = await forecast_all(engine, requests, progress.windows)
    rows = [_score(config, w, r.median, r.quantiles, r.quantile_levels) for w, r in zip(windows, results, strict=True)]
    counts = {cell.series: cell.counts() for cell in cells}
    return ConfigResult(config, rows, counts, time.monotonic() - started)


async def _run_baseline(config: Config, cells: Sequence[Cell], progress: SweepProgress) -> ConfigResult:
    started = time.monotonic()
    fn = BASELINES[config.model]
    chunk = BASELINE_CHUNK.get(config.model, 16)
    rows: list[dict[str, Any]] = []
    for cell in cells:
        for k in range(0, len(cell.usable), chunk):
            part = cell.usable[k : k + chunk]
            forecasts = await asyncio.to_thread(fn, [w.context for w in part], config.horizon, LEVELS)
            rows.extend(_score(config, w, f.median, f.quantiles, LEVELS) for w, f in zip(part, forecasts, strict=True))
            progress.windows(len(part))
    counts = {cell.series: cell.counts() for cell in cells}
    return ConfigResult(config, rows, counts, time.monotonic() - started)


# ---------------------------------------------------------------------------------------------
# Forecast examples for the forecast-against-truth plot


@dataclass
class Example:
    """One forecast drawn in ``forecast_vs_truth.png``: the truth around it and the 80 % band."""

    model: str
    label: str
    covariates: str
    series: str
    forecast_start: datetime
    history_times: list[datetime]
    history: list[float]
    times: list[datetime]
    truth: list[float]
    median: list[float]
    lower: list[float]
    """q0.1."""
    upper: list[float]
    """q0.9."""


def default_plot_days(settings: SweepSettings, store: SeriesStore, series: str, n: int = 3) -> list[str]:
    """``n`` days evenly spaced in the span, after the longest context and before the last day."""
    lo, hi = span_rows(store, series, settings.start, settings.end)
    first = series_data(store, series).start
    a = lo + max(settings.context_days) * 24
    b = hi - max(settings.horizons)
    if b <= a:
        return []
    days = []
    for k in range(n):
        row = a + (b - a) * (k + 1) // (n + 1)
        day = (first + timedelta(hours=row)).replace(hour=0)
        days.append(day.date().isoformat())
    return sorted(set(days))


def plot_starts(
    store: SeriesStore, series: str, days: Sequence[str], *, context_days: int, horizon: int
) -> list[tuple[datetime, int]]:
    """00:00 of each day and its row in ``series``; :class:`SweepError` (``--plot-days``) for a day
    without the context before it or the horizon after it in the data."""
    data = series_data(store, series)
    out = []
    for day in days:
        start = datetime.fromisoformat(day).replace(hour=0, minute=0, second=0, microsecond=0)
        i = data.row(start)
        if i - context_days * 24 < 0 or i + horizon > data.values.size:
            raise SweepError(
                "--plot-days",
                f"{day}: {series!r} has no {context_days}-day context before it or {horizon} h after it "
                f"(its data runs from {data.start:%Y-%m-%d %H:%M} for {data.values.size} hours)",
            )
        out.append((start, i))
    return out


async def forecast_examples(
    engine: Engine | None,
    store: SeriesStore,
    settings: SweepSettings,
    specs: Mapping[str, ModelSpec],
    series: str,
    days: Sequence[str],
    *,
    context_days: int,
    horizon: int,
) -> list[Example]:
    """Forecasts from 00:00 of each day: every model without covariates (and with all of
    them, for the Chronos-2 models that ran with covariates) and every baseline."""
    data = series_data(store, series)
    c = context_days * 24
    starts = plot_starts(store, series, days, context_days=context_days, horizon=horizon)
    configs: list[Config] = []
    for model in settings.models:
        spec = specs[model]
        configs.append(Config(model, "model", spec.random_weights, c, horizon))
        chosen = settings.covariate_models is None or model in settings.covariate_models
        if spec.supports_covariates and chosen and settings.covariates != "none":
            configs.append(Config(model, "model", spec.random_weights, c, horizon, COVARIATES, settings.known_future))
    configs += [Config(b, "baseline", False, c, horizon) for b in settings.baselines]
    out: list[Example] = []
    for start, i in starts:
        w = EvalWindow(series, 0, i, data.values[i - c : i], data.values[i : i + horizon], data.values[:i], start)
        if w.context_all_nan:
            continue
        shown = min(c, 48)
        for config in configs:
            if config.kind == "baseline":
                (fc,) = await asyncio.to_thread(BASELINES[config.model], [w.context], horizon, LEVELS)
                median, quantiles = fc.median, fc.quantiles
            else:
                assert engine is not None
                result = await engine.forecast(window_request(store, config, w))
                median, quantiles = result.median, result.quantiles
            out.append(
                Example(
                    model=config.model,
                    label=config.label,
                    covariates=config.covariates_label if not config.covariates else f"all ({config.covariate_use})",
                    series=series,
                    forecast_start=start,
                    history_times=[start - timedelta(hours=shown - k) for k in range(shown)],
                    history=[float(v) for v in w.context[-shown:]],
                    times=[start + timedelta(hours=k) for k in range(horizon)],
                    truth=[float(v) for v in w.target],
                    median=[float(v) for v in median],
                    lower=[float(v) for v in np.asarray(quantiles)[:, LEVELS.index(0.1)]],
                    upper=[float(v) for v in np.asarray(quantiles)[:, LEVELS.index(0.9)]],
                )
            )
    return out


# ---------------------------------------------------------------------------------------------
# The runner


@dataclass
class SweepResult:
    settings: SweepSettings
    configs: list[Config]
    results: list[ConfigResult]
    """In grid order."""
    resumed: int
    """Configurations found done in ``out`` and not recomputed."""
    examples: list[Example]
    files: list[Path]
    seconds: float


def resolve_models(names: Sequence[str], loader: ModelLoader) -> dict[str, ModelSpec]:
    """Describe each model without loading it (raises :class:`~chronoserve.errors.UnknownModel`)."""
    return {name: loader.resolve(name) for name in names}


async def run_sweep(
    settings: SweepSettings,
    out: str | os.PathLike[str],
    *,
    store: SeriesStore | None = None,
    engine_options: Mapping[str, Any] | None = None,
    specs: Mapping[str, ModelSpec] | None = None,
    overwrite: bool = False,
    progress: bool | SweepProgress = True,
    plots: bool = True,
    plot_days: Sequence[str] | None = None,
    plot_series: str | None = None,
) -> SweepResult:
    """Run (or resume) the sweep into ``out`` and write its report and plots.

    ``engine_options`` are :class:`~chronoserve.Engine`'s arguments (``policy``,
    ``policy_options``, ``workers``, ``loader``, ``observers``...). ``specs`` may give the
    models' resolved specs (else they are resolved here). Raises :class:`SweepError` for
    settings that cannot run and :class:`SettingsMismatch` for an ``out`` that holds another
    sweep.
    """
    from chronoserve.engine import Engine

    started = time.monotonic()
    store = store if store is not None else _open_store(settings.data)
    options = dict(engine_options or {})
    loader = options.get("loader")
    if loader is None:
        from chronoserve.models.loader import ChronosLoader

        loader = ChronosLoader(device=str(options.get("device", "cpu")), dtype=settings.dtype)
        options["loader"] = loader
    options.setdefault("dtype", settings.dtype)
    if specs is None:
        specs = await asyncio.to_thread(resolve_models, settings.models, loader)
    check_settings(settings, store, specs)
    wants_examples = plots and (plot_days is None or len(plot_days) > 0)
    example_args: dict[str, Any] = {}
    if wants_examples:  # checked now, not after the sweep
        sid = plot_series or settings.series[0]
        if sid not in settings.series:
            raise SweepError("--plot-series", f"{sid!r} is not among the series of the sweep {list(settings.series)}")
        days = list(plot_days) if plot_days is not None else default_plot_days(settings, store, sid)
        c_days, h = _closest(settings.context_days, 10), _closest(settings.horizons, 24)
        plot_starts(store, sid, days, context_days=c_days, horizon=h)
        example_args = {"series": sid, "days": days, "context_days": c_days, "horizon": h}
    run_dir = RunDir(Path(out))
    run_dir.prepare(settings, overwrite=overwrite)
    configs = configurations(settings, specs)
    windows = WindowSet(store, settings)

    def n_windows(config: Config) -> int:
        return sum(len(windows.cell(sid, config.context_hours, config.horizon).usable) for sid in settings.series)

    done = [c for c in configs if run_dir.done(c)]
    todo = [c for c in configs if not run_dir.done(c)]
    meter = (
        progress
        if isinstance(progress, SweepProgress)
        else SweepProgress(len(configs), sum(n_windows(c) for c in configs), enabled=bool(progress))
    )
    meter.resumed(len(done), sum(n_windows(c) for c in done), Path(out))

    def cells(config: Config) -> list[Cell]:
        return [windows.cell(sid, config.context_hours, config.horizon) for sid in settings.series]

    def finished(result: ConfigResult) -> None:
        run_dir.save(result)
        meter.config_done(result.config, len(result.rows), result.seconds)

    examples: list[Example] = []
    model_todo = [c for c in todo if c.kind == "model"]
    baseline_todo = [c for c in todo if c.kind == "baseline"]
    needs_engine = bool(model_todo) or (wants_examples and bool(settings.models))
    engine = Engine(**options) if needs_engine else None
    try:
        if engine is not None:
            await engine.start()

        async def model_lane() -> None:
            for config in model_todo:
                assert engine is not None
                finished(await _run_model(engine, store, config, cells(config), meter))

        async def baseline_lane() -> None:
            for config in baseline_todo:
                finished(await _run_baseline(config, cells(config), meter))

        await _both(model_lane(), baseline_lane())
        meter.finish()
        if wants_examples:
            examples = await forecast_examples(engine, store, settings, specs, **example_args)
    except BaseException:
        if engine is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(engine.close(drain=False))
        raise
    if engine is not None:
        await engine.close()

    results = [run_dir.load(c) for c in configs]
    from chronoserve.eval.report import write_report

    files = write_report(Path(out), settings, results, store=store)
    if plots:
        from chronoserve.eval.plots import plot_sweep

        files += plot_sweep(Path(out), settings, results, examples)
    return SweepResult(settings, configs, results, len(done), examples, files, time.monotonic() - started)


def _closest(values: Sequence[int], target: int) -> int:
    return min(values, key=lambda v: (abs(v - target), -v))


async def _both(*coros: Any) -> None:
    """Run the lanes together; the first error is raised and cancels the other lanes."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _open_store(data: str) -> SeriesStore:
    return SeriesStore.embedded() if data == "embedded" else SeriesStore.from_dir(data)
