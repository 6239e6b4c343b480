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
  worker threads. Baselines (:data:`~chronoserve.eval.baselines.BASELINES`) run in a thread,
  a chunk of windows at a time, alongside the models: two lanes on one event loop
  (:mod:`chronoserve.eval.lanes`), over windows cut once (:mod:`chronoserve.eval.cells`).
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

Resuming (:mod:`chronoserve.eval.rundir`): each finished configuration is written atomically
to ``OUT/configs/<key>.json`` and ``OUT/settings.json`` holds the settings. A run with the
same settings skips the configurations already there; a run with other settings into the
same directory raises :class:`SettingsMismatch` unless ``overwrite``.

Then the tables (:mod:`chronoserve.eval.report`) and the plots (:mod:`chronoserve.eval.plots`,
with the forecasts of :mod:`chronoserve.eval.examples`) are written.

Importing this module is cheap (numpy and the standard library): the engine, the models and
matplotlib are imported when a sweep runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chronoserve.data import SeriesStore
from chronoserve.eval.aggregate import closest
from chronoserve.eval.cells import Cell, WindowSet
from chronoserve.eval.examples import Example, default_plot_days, forecast_examples, plot_starts
from chronoserve.eval.grid import Config, SweepError, SweepSettings, check_settings, configurations
from chronoserve.eval.lanes import run_baseline, run_model
from chronoserve.eval.rundir import ConfigResult, RunDir, SweepProgress

if TYPE_CHECKING:
    from chronoserve.models.base import ModelLoader, ModelSpec


@dataclass
class SweepResult:
    """What :func:`run_sweep` ran, scored and wrote."""

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
    if loader is None:  # the sweep's dtype and backend are among its settings (recorded with its results)
        from chronoserve.models.loader import ChronosLoader

        loader = ChronosLoader(dtype=settings.dtype, backend=settings.backend)
        options["loader"] = loader
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
        c_days, h = closest(settings.context_days, 10), closest(settings.horizons, 24)
        plot_starts(store, sid, days, context_days=c_days, horizon=h)
        example_args = {"series": sid, "days": days, "context_days": c_days, "horizon": h}
    run_dir = RunDir(Path(out))
    run_dir.open_for(settings, overwrite=overwrite)
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
                finished(await run_model(engine, store, config, cells(config), meter))

        async def baseline_lane() -> None:
            for config in baseline_todo:
                finished(await run_baseline(config, cells(config), meter, store))

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
