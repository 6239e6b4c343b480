"""Offline accuracy evaluation: rolling windows, metrics, and baseline forecasters.

- :mod:`chronoserve.eval.windows`: rolling evaluation windows over a store's hourly series.
- :mod:`chronoserve.eval.metrics`: MAE, RMSE, MASE, WQL and coverage per window (NaN targets
  skipped), and the benchmark aggregate (geometric mean across series of the ratio to a
  baseline), with fev's and gluonts' formulas.
- :mod:`chronoserve.eval.baselines`: naive, seasonal-naive (numpy) and statsforecast's
  AutoTheta / AutoARIMA, each returning a model's output (median and quantiles).

numpy only at import; statsforecast is imported when a statsforecast baseline runs.
"""

from __future__ import annotations

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
    "EvalWindow",
    "RelativeScore",
    "SeriesData",
    "WindowMean",
    "auto_arima",
    "auto_theta",
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
    "score_window",
    "seasonal_naive",
    "seasonal_scale",
    "series_data",
    "store_windows",
    "wql",
]
