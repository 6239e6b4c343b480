"""Offline accuracy evaluation: rolling windows, metrics, and baseline forecasters.

- :mod:`chronoserve.eval.windows`: rolling evaluation windows over a store's hourly series.
- :mod:`chronoserve.eval.metrics`: MAE, RMSE, MASE, WQL and coverage per window (NaN targets
  skipped), and the benchmark aggregate (geometric mean across series of the ratio to a
  baseline), with fev's and gluonts' formulas.
- :mod:`chronoserve.eval.baselines`: naive, seasonal-naive (numpy) and statsforecast's
  AutoTheta / AutoARIMA, each returning a model's output (median and quantiles).
- :mod:`chronoserve.eval.grid`: ``chronoserve eval``'s settings and grid of configurations;
  :mod:`chronoserve.eval.rundir`: its resumable run directory and progress lines;
  :mod:`chronoserve.eval.sweep`: its runner (:func:`run_sweep`), on the server's engine, over
  the windows of :mod:`chronoserve.eval.cells`, with the model and baseline lanes of
  :mod:`chronoserve.eval.lanes`;
- :mod:`chronoserve.eval.aggregate`: per-series means and scores relative to seasonal naive;
  :mod:`chronoserve.eval.report` (CSV) and :mod:`chronoserve.eval.markdown` (``summary.md``) its
  tables; :mod:`chronoserve.eval.plots` its PNGs, with the forecasts of
  :mod:`chronoserve.eval.examples`; :mod:`chronoserve.eval.perf` the ``--perf`` mode (:func:`run_perf`).

numpy only at import: the sweep's names are imported on first use, statsforecast when a
statsforecast baseline runs, the engine and matplotlib when a sweep runs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from chronoserve.eval.baselines import BASELINES, Baseline, auto_arima, auto_theta, fill_gaps, naive, seasonal_naive
from chronoserve.eval.metrics import (
    RelativeScore,
    WindowMean,
    coverage,
    geometric_mean_relative,
    mae,
    mase,
    mean_over_windows,
    relative_to,
    rmse,
    score_window,
    seasonal_scale,
    wql,
)
from chronoserve.eval.windows import (
    EvalWindow,
    SeriesData,
    count_windows,
    forecast_starts,
    rolling_windows,
    series_data,
    store_windows,
)

__all__ = [
    "BASELINES",
    "Baseline",
    "Config",
    "ConfigResult",
    "EvalWindow",
    "PerfResult",
    "RelativeScore",
    "SeriesData",
    "SettingsMismatch",
    "SweepError",
    "SweepResult",
    "SweepSettings",
    "WindowMean",
    "auto_arima",
    "auto_theta",
    "configurations",
    "count_windows",
    "coverage",
    "fill_gaps",
    "forecast_starts",
    "geometric_mean_relative",
    "mae",
    "mase",
    "mean_over_windows",
    "naive",
    "relative_to",
    "rmse",
    "rolling_windows",
    "run_perf",
    "run_sweep",
    "score_window",
    "seasonal_naive",
    "seasonal_scale",
    "series_data",
    "store_windows",
    "wql",
]

_LAZY = {
    "Config": "grid",
    "ConfigResult": "rundir",
    "SettingsMismatch": "grid",
    "SweepError": "grid",
    "SweepResult": "sweep",
    "SweepSettings": "grid",
    "configurations": "grid",
    "run_sweep": "sweep",
    "PerfResult": "perf",
    "run_perf": "perf",
}

if TYPE_CHECKING:
    from chronoserve.eval.grid import Config, SettingsMismatch, SweepError, SweepSettings, configurations
    from chronoserve.eval.perf import PerfResult, run_perf
    from chronoserve.eval.rundir import ConfigResult
    from chronoserve.eval.sweep import SweepResult, run_sweep


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'chronoserve.eval' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"chronoserve.eval.{_LAZY[name]}"), name)
    globals()[name] = value
    return value
