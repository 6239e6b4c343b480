"""One configuration on its windows: the engine requests and the two lanes that run them.

- Chronos models run through :class:`~chronoserve.Engine`, the server's engine
  (:func:`run_model`): the requests of a configuration (:func:`window_request`) are submitted
  at once and the policy batches them; models run in its worker threads.
- Baselines (:data:`~chronoserve.eval.baselines.BASELINES`) run in a thread, a chunk of
  windows at a time (:func:`run_baseline`), alongside the models (two lanes on one event loop).

Each scored window becomes a row of ``windows.csv`` (:func:`score_row`; NaN targets inside a
window are skipped by :func:`~chronoserve.eval.metrics.score_window`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from chronoserve.data import SeriesStore
from chronoserve.eval.baselines import BASELINES
from chronoserve.eval.cells import Cell
from chronoserve.eval.grid import BASELINE_CHUNK, LEVELS, Config
from chronoserve.eval.metrics import SEASON, score_window
from chronoserve.eval.rundir import ConfigResult, SweepProgress
from chronoserve.eval.windows import EvalWindow
from chronoserve.request import clip_below

if TYPE_CHECKING:
    from chronoserve.engine import Engine
    from chronoserve.request import ForecastRequest, ForecastResult


def score_row(config: Config, w: EvalWindow, median: Any, quantiles: Any, levels: Sequence[float]) -> dict[str, Any]:
    """The ``windows.csv`` row of one forecast of ``w`` (:data:`~chronoserve.eval.grid.WINDOW_FIELDS`)."""
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
        lower_bound=store.info(w.series).lower_bound,  # PM2.5 cannot go below 0: nor may its forecast
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


async def run_model(
    engine: Engine, store: SeriesStore, config: Config, cells: Sequence[Cell], progress: SweepProgress
) -> ConfigResult:
    """The model lane: every usable window of ``cells`` forecast by ``config``'s model on ``engine``."""
    started = time.monotonic()
    windows = [w for cell in cells for w in cell.usable]
    requests = [window_request(store, config, w) for w in windows]
    results = await forecast_all(engine, requests, progress.windows)
    rows = [
        score_row(config, w, r.median, r.quantiles, r.quantile_levels) for w, r in zip(windows, results, strict=True)
    ]
    counts = {cell.series: cell.counts() for cell in cells}
    return ConfigResult(config, rows, counts, time.monotonic() - started)


async def run_baseline(
    config: Config, cells: Sequence[Cell], progress: SweepProgress, store: SeriesStore | None = None
) -> ConfigResult:
    """The baselines lane: ``config``'s baseline on the usable windows of ``cells``, a chunk at a time in a
    thread; clipped to each series' lower bound (``store``'s) as the models' forecasts are."""
    started = time.monotonic()
    fn = BASELINES[config.model]
    chunk = BASELINE_CHUNK.get(config.model, 16)
    rows: list[dict[str, Any]] = []
    for cell in cells:
        for k in range(0, len(cell.usable), chunk):
            part = cell.usable[k : k + chunk]
            forecasts = await asyncio.to_thread(fn, [w.context for w in part], config.horizon, LEVELS)
            bound = None if store is None else store.info(cell.series).lower_bound
            for w, f in zip(part, forecasts, strict=True):
                quantiles, median, _ = clip_below(f.quantiles, f.median, bound)
                rows.append(score_row(config, w, median, quantiles, LEVELS))
            progress.windows(len(part))
    counts = {cell.series: cell.counts() for cell in cells}
    return ConfigResult(config, rows, counts, time.monotonic() - started)
