"""Baseline forecasters with a model's output: a median and quantiles for a batch of contexts.

Every baseline is called as ``baseline(contexts, horizon, levels)`` and returns one
:class:`~chronoserve.models.base.BackendForecast` per context (``quantiles`` is ``(horizon,
len(levels))`` in the order of ``levels``, float32), like a model backend.

Gaps. statsforecast refuses NaN; fev's wrapper (``models/statsforecast/model.py``) forward-fills
each series' whole history and then fills what is left (leading NaN) with 0. Here the baselines
see only a context cut from a longer series, whose leading NaN fev would have forward-filled
from earlier hours, so :func:`fill_gaps` forward-fills and then gives leading NaN the first
observed value instead of 0 (a 0 would inject a false jump into the context, and switch Theta
to an additive decomposition). Without NaN in the context the two agree. A context with no
observed value raises :class:`ValueError` (:attr:`EvalWindow.context_all_nan
<chronoserve.eval.windows.EvalWindow.context_all_nan>` flags such windows).

Quantiles of the naive baselines are statsforecast's own (``Naive`` / ``SeasonalNaive`` with
``level=``, ``python/statsforecast/models.py`` and ``utils.py``; fev's Seasonal-Naive baseline,
the anchor of fev-bench, GIFT-Eval and Chronos Benchmark II, is exactly that model): normal
intervals around the point forecast, reproduced here in numpy, so the quantile at level ``q`` is
``point + z_q * sigma_h`` with ``z_q`` the standard normal quantile:

- :func:`naive`: point = the last observed value; ``sigma = sqrt(sum(d_t^2) / (n - 1))`` over the
  1-step differences ``d_t`` of the filled context (``n`` points), ``sigma_h = sigma * sqrt(h)``
  for step ``h = 1..H``.
- :func:`seasonal_naive`: point = the value one season earlier (the last ``season`` filled
  values, repeated); ``sigma = sqrt(sum(e_t^2) / (n - season))`` over the seasonal differences
  ``e_t = x_t - x_{t - season}``, ``sigma_h = sigma * sqrt(floor((h - 1) / season) + 1)``.

The statistical models (:func:`auto_theta`, :func:`auto_arima`) run statsforecast itself, as fev
does: the filled context capped to its last ``max_context`` points (fev: 1000), ``model.forecast(y,
h, level=...)`` with its prediction intervals mapped to quantiles: level ``q < 0.5`` is the lower
bound of the ``(1 - 2q) * 100`` % interval, ``q > 0.5`` the upper bound of the ``(2q - 1) * 100`` %
one, and ``q = 0.5`` the 0 % interval (the model's mean for ARIMA; the median of Theta's 200
simulated paths), exactly fev's mapping. The ``median`` of the returned forecast is the model's
mean (fev's point forecast). A model that raises falls back to :func:`seasonal_naive` (fev's
``fallback_model``), with a warning logged. statsforecast is imported only when these run.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Sequence
from statistics import NormalDist
from typing import Any

import numpy as np
import numpy.typing as npt

from chronoserve.models.base import BackendForecast

Float64Array = npt.NDArray[np.float64]
#: ``baseline(contexts, horizon, levels) -> one BackendForecast per context``.
Baseline = Callable[[Sequence[npt.ArrayLike], int, Sequence[float]], list[BackendForecast]]

#: fev's cap on the context given to statsforecast models.
MAX_CONTEXT = 1000
SEASON = 24

logger = logging.getLogger(__name__)


def _levels(levels: Sequence[float]) -> list[float]:
    out = [float(q) for q in levels]
    if not out or not all(0.0 < q < 1.0 for q in out):
        raise ValueError(f"levels must be a non-empty sequence of quantile levels in (0, 1), got {levels!r}")
    return out


def _horizon(horizon: int) -> int:
    if isinstance(horizon, bool) or not isinstance(horizon, (int, np.integer)) or horizon < 1:
        raise ValueError(f"horizon must be a positive integer, got {horizon!r}")
    return int(horizon)


def fill_gaps(context: npt.ArrayLike) -> Float64Array:
    """Forward-fill NaN, then give leading NaN the first observed value (float64 copy).

    Raises :class:`ValueError` when nothing is observed, or a value is infinite.
    """
    x = np.array(context, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"a context must be 1-D, got shape {x.shape}")
    if np.isinf(x).any():
        raise ValueError("a context has infinite values (use NaN for a missing value)")
    observed = ~np.isnan(x)
    if not observed.any():
        raise ValueError("a context has no observed value")
    # index of the last observed value at or before each point (the first observed one before it)
    idx = np.where(observed, np.arange(x.size), 0)
    np.maximum.accumulate(idx, out=idx)
    idx[: int(np.argmax(observed))] = int(np.argmax(observed))
    return x[idx]


def _normal_forecast(point: Float64Array, sigma_h: Float64Array, levels: list[float]) -> BackendForecast:
    z = np.array([NormalDist().inv_cdf(q) for q in levels], dtype=np.float64)
    quantiles = point[:, None] + sigma_h[:, None] * z[None, :]
    return BackendForecast(quantiles=quantiles.astype(np.float32), median=point.astype(np.float32))


def _each(contexts: Sequence[npt.ArrayLike]) -> list[Float64Array]:
    out = []
    for k, ctx in enumerate(contexts):
        try:
            out.append(fill_gaps(ctx))
        except ValueError as exc:
            raise ValueError(f"context {k}: {exc}") from None
    return out


def naive(contexts: Sequence[npt.ArrayLike], horizon: int, levels: Sequence[float]) -> list[BackendForecast]:
    """The last observed value, with statsforecast ``Naive``'s normal quantiles (module docstring)."""
    h, lv = _horizon(horizon), _levels(levels)
    out = []
    for y in _each(contexts):
        n = y.size
        sigma = math.sqrt(float(np.sum(np.diff(y) ** 2)) / (n - 1)) if n > 1 else 0.0
        point = np.full(h, y[-1])
        out.append(_normal_forecast(point, sigma * np.sqrt(np.arange(1, h + 1, dtype=np.float64)), lv))
    return out


def seasonal_naive(
    contexts: Sequence[npt.ArrayLike], horizon: int, levels: Sequence[float], *, season: int = SEASON
) -> list[BackendForecast]:
    """The value one season earlier, with statsforecast ``SeasonalNaive``'s normal quantiles.

    A context shorter than ``season`` raises :class:`ValueError` (statsforecast would return NaN
    for the hours it cannot place).
    """
    h, lv = _horizon(horizon), _levels(levels)
    if isinstance(season, bool) or not isinstance(season, (int, np.integer)) or season < 1:
        raise ValueError(f"season must be a positive integer, got {season!r}")
    out = []
    for k, y in enumerate(_each(contexts)):
        n = y.size
        if n < season:
            raise ValueError(f"context {k}: {n} points, shorter than the season ({season})")
        steps = np.arange(h)
        point = y[n - season + steps % season]
        sigma = math.sqrt(float(np.sum((y[season:] - y[:-season]) ** 2)) / (n - season)) if n > season else 0.0
        out.append(_normal_forecast(point, sigma * np.sqrt(steps // season + 1.0), lv))
    return out


def _interval(q: float) -> float | int:
    """statsforecast's ``level`` (in %) whose interval has ``q`` as its lower or upper bound."""
    width = round(abs(1.0 - 2.0 * q) * 100.0, 9)
    return int(width) if width.is_integer() else width


def _statsforecast(
    name: str,
    contexts: Sequence[npt.ArrayLike],
    horizon: int,
    levels: Sequence[float],
    season: int,
    max_context: int | None,
) -> list[BackendForecast]:
    h, lv = _horizon(horizon), _levels(levels)
    if max_context is not None and (isinstance(max_context, bool) or max_context < 1):
        raise ValueError(f"max_context must be a positive integer or None, got {max_context!r}")
    try:
        from statsforecast import models as sf_models
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise ImportError(f"the {name} baseline needs statsforecast (pip install statsforecast)") from exc
    model: Any = getattr(sf_models, name)(season_length=season)
    intervals = sorted({_interval(q) for q in lv})
    out = []
    for y in _each(contexts):
        if max_context is not None:
            y = y[-max_context:]
        try:
            with warnings.catch_warnings():  # statsforecast and numpy warn during fits, fev silences them too
                warnings.simplefilter("ignore")
                res: dict[str, Any] = model.forecast(y=y, h=h, level=intervals)
            point = np.asarray(res["mean"], dtype=np.float64)
            cols = []
            for q in lv:
                key = f"lo-{_interval(q)}" if q < 0.5 else f"hi-{_interval(q)}"
                cols.append(np.asarray(res[key], dtype=np.float64))
            quantiles = np.stack(cols, axis=-1)
            if point.shape != (h,) or not (np.isfinite(point).all() and np.isfinite(quantiles).all()):
                raise ValueError("non-finite or misshapen forecast")
        except Exception as exc:  # fev falls back on any failure, so do we
            logger.warning("%s failed (%s: %s); falling back to seasonal_naive", name, type(exc).__name__, exc)
            out.extend(seasonal_naive([y], h, lv, season=season))
            continue
        out.append(BackendForecast(quantiles=quantiles.astype(np.float32), median=point.astype(np.float32)))
    return out


def auto_theta(
    contexts: Sequence[npt.ArrayLike],
    horizon: int,
    levels: Sequence[float],
    *,
    season: int = SEASON,
    max_context: int | None = MAX_CONTEXT,
) -> list[BackendForecast]:
    """statsforecast ``AutoTheta(season_length=season)`` on each filled, capped context."""
    return _statsforecast("AutoTheta", contexts, horizon, levels, season, max_context)


def auto_arima(
    contexts: Sequence[npt.ArrayLike],
    horizon: int,
    levels: Sequence[float],
    *,
    season: int = SEASON,
    max_context: int | None = MAX_CONTEXT,
) -> list[BackendForecast]:
    """statsforecast ``AutoARIMA(season_length=season)`` on each filled, capped context (slow:
    seconds per window at a context of a few hundred hours)."""
    return _statsforecast("AutoARIMA", contexts, horizon, levels, season, max_context)


#: The baselines by name, each callable as ``baseline(contexts, horizon, levels)``.
BASELINES: dict[str, Baseline] = {
    "naive": naive,
    "seasonal_naive": seasonal_naive,
    "auto_theta": auto_theta,
    "auto_arima": auto_arima,
}
