"""Accuracy metrics for one forecast window, and the benchmark aggregate across series.

Per window (one series, one forecast start) every metric skips the hours whose target is NaN
(a gap in the data). A window with no observed target hour scores NaN; so does a MASE window
whose scale is undefined or zero, and a WQL window whose observed targets are all zero. The
aggregates below leave NaN windows out and count them (:class:`RelativeScore`). A forecast
value that is NaN or infinite at an observed hour is an error (:class:`ValueError`), never
skipped: a model that fails must not score better for it.

The formulas are those of fev (``src/fev/metrics.py``, autogluon/fev @1bc95fd, identical in
fev 0.10.0 on PyPI) for one item and one target dimension, which also equal gluonts'
``MASE()`` and ``MeanWeightedSumQuantileLoss`` (``src/gluonts/ev/metrics.py``, ``stats.py``
and ``ts_stats.py``) with NaN masked:

- ``mae`` / ``rmse``: mean absolute / root mean squared error of the point forecast (the
  median) over the observed hours.
- ``mase``: ``mae`` divided by the mean absolute seasonal difference ``|x[t] - x[t - season]|``
  of the past values passed as ``context``, over the pairs where both values are observed.
  fev and gluonts compute that scale on the *whole history* before the forecast start, not
  only on the hours the model reads: pass :attr:`EvalWindow.history
  <chronoserve.eval.windows.EvalWindow.history>` to match them. A zero scale gives NaN (fev
  turns the resulting inf into NaN and drops it; gluonts masks the division by zero). A
  history of ``season`` points or fewer gives NaN, as in fev (gluonts falls back to a season
  of 1 there).
- ``wql``: for each level ``q``, ``sum_t 2 * pinball_q(y_t, yhat_t) / sum_t |y_t|`` over the
  observed hours, then the mean over levels. ``2 * pinball`` is ``2 * |(y - yhat) * (1{y <= yhat}
  - q)|``, exactly fev's ``_quantile_loss`` and gluonts' ``quantile_loss``.
- ``coverage``: the fraction of observed hours with ``lower <= y <= upper`` (the 80 % interval
  is the 0.1 to 0.9 quantiles).

Aggregate (:func:`relative_to`, :func:`geometric_mean_relative`), as fev-bench's
``fev.analysis.leaderboard`` does with tasks, here with series (sites): per series the mean of
the metric over its windows (fev's ``evaluation_summary`` averages windows with ``np.mean``),
the model's mean divided by the baseline's (Seasonal-Naive in every published anchor), each
ratio clipped to [0.01, 100], then the geometric mean of the ratios across series. Skill is
``1 - geometric mean``. GIFT-Eval reports the same geometric mean of ratios to Seasonal-Naive
(its per-configuration MASE averages every series-window instance, its CRPS is the WQL above).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Float64Array = npt.NDArray[np.float64]

#: The default season: 24 hours (daily cycle of hourly data), as fev and GIFT-Eval use for "h".
SEASON = 24
#: fev-bench's clip of each model/baseline ratio before the geometric mean.
DEFAULT_CLIP = (0.01, 100.0)


def _as_float(name: str, values: npt.ArrayLike) -> Float64Array:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim == 0:
        raise ValueError(f"{name} must be an array, got a scalar")
    return arr


def _observed(y: npt.ArrayLike, forecasts: dict[str, npt.ArrayLike]) -> tuple[Float64Array, list[Float64Array]]:
    """The observed targets and the forecast values at those hours (checked finite)."""
    target = _as_float("y", y)
    if np.isinf(target).any():
        raise ValueError("y has infinite values (use NaN for a missing target)")
    mask = ~np.isnan(target)
    out = []
    for name, values in forecasts.items():
        arr = _as_float(name, values)
        if arr.shape != target.shape:
            raise ValueError(f"{name} has shape {arr.shape}, y has {target.shape}")
        picked = arr[mask]
        if not np.isfinite(picked).all():
            raise ValueError(f"{name} has NaN or infinite values where the target is observed")
        out.append(picked)
    return target[mask], out


def mae(y: npt.ArrayLike, yhat: npt.ArrayLike) -> float:
    """Mean absolute error over the hours where ``y`` is observed; NaN when none is."""
    obs, (pred,) = _observed(y, {"yhat": yhat})
    if obs.size == 0:
        return math.nan
    return float(np.mean(np.abs(obs - pred)))


def rmse(y: npt.ArrayLike, yhat: npt.ArrayLike) -> float:
    """Root mean squared error over the hours where ``y`` is observed; NaN when none is."""
    obs, (pred,) = _observed(y, {"yhat": yhat})
    if obs.size == 0:
        return math.nan
    return float(np.sqrt(np.mean((obs - pred) ** 2)))


def seasonal_scale(context: npt.ArrayLike, season: int = SEASON) -> float:
    """Mean of ``|x[t] - x[t - season]|`` over the pairs of ``context`` where both are observed.

    NaN when there is no such pair (``len(context) <= season``, or gaps everywhere). This is
    fev's ``_abs_seasonal_error_per_item`` and gluonts' ``seasonal_error`` on a masked array.
    """
    if isinstance(season, bool) or not isinstance(season, (int, np.integer)) or season < 1:
        raise ValueError(f"season must be a positive integer, got {season!r}")
    past = _as_float("context", context).ravel()
    if past.size <= season:
        return math.nan
    diffs = np.abs(past[season:] - past[:-season])
    diffs = diffs[~np.isnan(diffs)]
    if diffs.size == 0:
        return math.nan
    return float(np.mean(diffs))


def mase(y: npt.ArrayLike, yhat: npt.ArrayLike, context: npt.ArrayLike, season: int = SEASON) -> float:
    """Mean absolute scaled error: :func:`mae` over :func:`seasonal_scale` of ``context``.

    ``context`` is the past used for the scale: pass the whole history before the forecast start
    (``EvalWindow.history``) to match fev and gluonts, or only the model's context for a
    context-local scale. NaN when no target is observed, or the scale is NaN or zero.
    """
    error = mae(y, yhat)
    scale = seasonal_scale(context, season)
    if math.isnan(error) or not math.isfinite(scale) or scale == 0.0:
        return math.nan
    return error / scale


def _check_levels(levels: Sequence[float], n: int) -> Float64Array:
    arr = np.asarray(levels, dtype=np.float64)
    if arr.ndim != 1 or arr.size != n:
        raise ValueError(f"levels must be a 1-D sequence of {n} levels (the last axis of quantiles), got {levels!r}")
    if n == 0 or not ((arr > 0.0) & (arr < 1.0)).all():
        raise ValueError(f"levels must be in (0, 1), got {levels!r}")
    return arr


def wql(y: npt.ArrayLike, quantiles: npt.ArrayLike, levels: Sequence[float]) -> float:
    """Weighted quantile loss (fev ``WQL``, gluonts ``MeanWeightedSumQuantileLoss``) of one window.

    ``quantiles`` is ``(H, Q)`` for ``y`` of shape ``(H,)`` (generally ``y.shape + (Q,)``), the
    last axis matching ``levels``. For each level ``q``: ``sum_t 2 * |(y_t - yhat_t) * (1{y_t <=
    yhat_t} - q)| / sum_t |y_t|`` over the observed hours ``t``; the result is the mean over
    levels. NaN when no target is observed or every observed target is 0.
    """
    target = _as_float("y", y)
    pred = _as_float("quantiles", quantiles)
    if pred.shape[:-1] != target.shape:
        raise ValueError(f"quantiles has shape {pred.shape}, expected {target.shape} + (len(levels),)")
    q = _check_levels(levels, pred.shape[-1])
    obs, cols = _observed(target, {f"quantiles[..., {j}]": pred[..., j] for j in range(q.size)})
    if obs.size == 0:
        return math.nan
    denom = float(np.sum(np.abs(obs)))
    if denom == 0.0:
        return math.nan
    per_level = [
        float(np.sum(2.0 * np.abs((obs - col) * ((obs <= col).astype(np.float64) - level)))) / denom
        for col, level in zip(cols, q.tolist(), strict=True)
    ]
    return float(np.mean(per_level))


def coverage(y: npt.ArrayLike, lower: npt.ArrayLike, upper: npt.ArrayLike) -> float:
    """Fraction of observed hours with ``lower <= y <= upper``; NaN when none is observed.

    For the 80 % interval pass the 0.1 and 0.9 quantiles.
    """
    obs, (lo, hi) = _observed(y, {"lower": lower, "upper": upper})
    if obs.size == 0:
        return math.nan
    return float(np.mean((lo <= obs) & (obs <= hi)))


def score_window(
    y: npt.ArrayLike,
    median: npt.ArrayLike,
    quantiles: npt.ArrayLike,
    levels: Sequence[float],
    history: npt.ArrayLike,
    season: int = SEASON,
) -> dict[str, float]:
    """Every metric of one window: ``mae``, ``rmse``, ``mase``, ``wql``, and ``coverage_80`` when
    ``levels`` holds 0.1 and 0.9 (else NaN). ``history`` is the MASE scale's past (see :func:`mase`).
    """
    lv = list(levels)
    pred = _as_float("quantiles", quantiles)
    cov = math.nan
    if 0.1 in lv and 0.9 in lv:
        cov = coverage(y, pred[..., lv.index(0.1)], pred[..., lv.index(0.9)])
    return {
        "mae": mae(y, median),
        "rmse": rmse(y, median),
        "mase": mase(y, median, history, season),
        "wql": wql(y, pred, lv),
        "coverage_80": cov,
    }


# ---------------------------------------------------------------------------------------------
# Aggregates


@dataclass(frozen=True)
class WindowMean:
    """The mean of one series' window scores, NaN windows left out."""

    mean: float
    """NaN when no window has a finite score."""
    windows: int
    """Windows in the mean."""
    excluded: int
    """Windows left out (NaN score)."""


def mean_over_windows(scores: Sequence[float] | npt.ArrayLike) -> WindowMean:
    """The mean of the finite scores (NaN ones are counted in ``excluded``; +-inf is refused)."""
    arr = np.asarray(scores, dtype=np.float64).ravel()
    if np.isinf(arr).any():
        raise ValueError("a window score is infinite (metrics give NaN for undefined windows)")
    ok = ~np.isnan(arr)
    n = int(ok.sum())
    return WindowMean(mean=float(np.mean(arr[ok])) if n else math.nan, windows=n, excluded=int(arr.size - n))


def _paired(
    baseline_scores: Mapping[str, Sequence[float] | npt.ArrayLike],
    model_scores: Mapping[str, Sequence[float] | npt.ArrayLike],
) -> dict[str, tuple[WindowMean, WindowMean]]:
    if set(baseline_scores) != set(model_scores):
        only_b = sorted(set(baseline_scores) - set(model_scores))
        only_m = sorted(set(model_scores) - set(baseline_scores))
        raise ValueError(f"the series differ: only in baseline_scores {only_b}, only in model_scores {only_m}")
    out = {}
    for sid in sorted(baseline_scores):
        b = np.asarray(baseline_scores[sid], dtype=np.float64).ravel()
        m = np.asarray(model_scores[sid], dtype=np.float64).ravel()
        if b.shape != m.shape:
            raise ValueError(f"series {sid!r}: {b.size} baseline windows but {m.size} model windows")
        both = ~(np.isnan(b) | np.isnan(m))
        out[sid] = (
            mean_over_windows(np.where(both, b, np.nan)),
            mean_over_windows(np.where(both, m, np.nan)),
        )
    return out


def _ratio(model: float, baseline: float) -> float:
    if math.isnan(model) or math.isnan(baseline) or (model == 0.0 and baseline == 0.0):
        return math.nan
    if baseline == 0.0:
        return math.inf
    return model / baseline


def relative_to(
    baseline_scores: Mapping[str, Sequence[float] | npt.ArrayLike],
    model_scores: Mapping[str, Sequence[float] | npt.ArrayLike],
) -> dict[str, float]:
    """Per series: the model's mean window score divided by the baseline's.

    Both mappings are ``series id -> one score per window``, the windows in the same order (the
    same windows). A window that is NaN for either is left out of *both* means, so the ratio
    compares the same hours. The ratio is NaN when no window is left (or both means are 0), and
    ``inf`` when only the baseline's mean is 0. Below 1 the model is better. Raises
    :class:`ValueError` when the series or the window counts differ.
    """
    return {sid: _ratio(m.mean, b.mean) for sid, (b, m) in _paired(baseline_scores, model_scores).items()}


@dataclass(frozen=True)
class RelativeScore:
    """The benchmark aggregate: geometric mean across series of model/baseline ratios."""

    value: float
    """Geometric mean of the clipped ratios (NaN when no series has a ratio). Below 1 is better."""
    skill: float
    """``1 - value``: the share of the baseline's error the model removes (fev-bench's skill score)."""
    ratios: dict[str, float]
    """Per series, the ratio before clipping (NaN for excluded series)."""
    series: int
    """Series in the geometric mean."""
    excluded_series: tuple[str, ...]
    """Series left out: no window finite for both (their ratio is NaN)."""
    windows: int
    """Windows in the per-series means, over all series."""
    excluded_windows: int
    """Windows left out because the model's or the baseline's score is NaN."""
    clipped: tuple[str, ...]
    """Series whose ratio was clipped."""


def geometric_mean_relative(
    baseline_scores: Mapping[str, Sequence[float] | npt.ArrayLike],
    model_scores: Mapping[str, Sequence[float] | npt.ArrayLike],
    *,
    clip: tuple[float, float] | None = DEFAULT_CLIP,
) -> RelativeScore:
    """The geometric mean across series of :func:`relative_to`'s ratios, as fev-bench reports.

    Each series' ratio (model mean over windows / baseline mean over the same windows) is
    clipped to ``clip`` (fev-bench's ``leaderboard`` default [0.01, 100]; ``None`` for no clip),
    then ``value = exp(mean(log(ratio)))`` over the series whose ratio is not NaN, and ``skill =
    1 - value``. Excluded series and windows are counted in the result, never hidden.
    """
    pairs = _paired(baseline_scores, model_scores)
    ratios = {sid: _ratio(m.mean, b.mean) for sid, (b, m) in pairs.items()}
    used = {sid: r for sid, r in ratios.items() if not math.isnan(r)}
    clipped: list[str] = []
    logs = []
    for sid, r in used.items():
        if clip is not None:
            lo, hi = clip
            if r < lo or r > hi:
                clipped.append(sid)
            r = min(max(r, lo), hi)
        logs.append(-math.inf if r == 0.0 else math.log(r))
    value = math.exp(math.fsum(logs) / len(logs)) if logs and not (math.inf in logs and -math.inf in logs) else math.nan
    windows = sum(b.windows for b, _ in pairs.values())
    excluded = sum(b.excluded for b, _ in pairs.values())
    return RelativeScore(
        value=value,
        skill=1.0 - value,
        ratios=ratios,
        series=len(used),
        excluded_series=tuple(sid for sid, r in ratios.items() if math.isnan(r)),
        windows=windows,
        excluded_windows=excluded,
        clipped=tuple(clipped),
    )
