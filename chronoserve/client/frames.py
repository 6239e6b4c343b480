"""``predict_df``: a long-format pandas DataFrame planned into forecast bodies, and the answers assembled.

:func:`_plan_frame` checks the frame, infers its frequency, builds the future frame and one
body per series; :func:`_assemble_frame` puts the forecasts into upstream Chronos' output frame.
_normalize_df, _infer_freq and _make_future_df follow chronos.df_utils (chronos-forecasting 2.x,
Apache-2.0) step for step, so the frames and timestamps are the same; importing chronos itself
would import torch. pandas is imported when a frame is planned, not with this module.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ChronoserveError
from .answers import Forecast
from .bodies import _iso, _values

if TYPE_CHECKING:
    import pandas as pd  # type: ignore[import-untyped,unused-ignore]

DF_QUANTILES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def _pandas() -> Any:
    import pandas  # type: ignore[import-untyped,unused-ignore]

    return pandas


def _normalize_df(df: pd.DataFrame, id_column: str, timestamp_column: str) -> pd.DataFrame:
    """Timestamps as datetimes, rows grouped by id in first-appearance order, sorted by time within."""
    pandas = _pandas()
    if not pandas.api.types.is_datetime64_any_dtype(df[timestamp_column]):
        df = df.assign(**{timestamp_column: pandas.to_datetime(df[timestamp_column])})
    codes, _ = pandas.factorize(df[id_column])
    ts = pandas.DatetimeIndex(df[timestamp_column]).asi8  # upstream's .view("int64") fails on tz-aware columns
    code_diff = np.diff(codes)
    grouped = bool(np.all(code_diff >= 0))
    sorted_within = grouped and bool(np.all((np.diff(ts) >= 0) | (code_diff > 0)))
    if not sorted_within:
        df = df.iloc[np.lexsort([ts, codes])].reset_index(drop=True)
    return df


def _infer_one(index: Any) -> str | None:
    """``pandas.infer_freq`` as a string, without pandas 3.1's warning that it will return an offset."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="A future version of pandas will return a BaseOffset")
        freq = _pandas().infer_freq(index)
    return freq if freq is None or isinstance(freq, str) else str(freq.freqstr)


def _infer_freq(df: pd.DataFrame, id_column: str, timestamp_column: str) -> str:
    """The frequency all series (of 3 points or more) share, as ``pandas.infer_freq`` names it."""
    pandas = _pandas()
    series_lengths = df[id_column].value_counts(sort=False).to_list()
    item_ids = df[id_column].to_numpy()
    timestamp_index = pandas.DatetimeIndex(df[timestamp_column])
    freqs: set[str] = set()
    start = 0
    for length in series_lengths:
        if length >= 3:
            freq = _infer_one(timestamp_index[start : start + length])
            if freq is None:
                raise ValueError(f"Could not infer frequency for series {item_ids[start]}")
            freqs.add(freq)
        start += length
    if len(freqs) > 1:
        raise ValueError("All time series must have the same frequency")
    if not freqs:
        raise ValueError(
            "Could not infer frequency: no time series has at least 3 regularly-spaced observations. "
            "Please provide an explicit `freq`."
        )
    return freqs.pop()


def _make_future_df(
    df: pd.DataFrame, prediction_length: int, freq: str, id_column: str, timestamp_column: str
) -> pd.DataFrame:
    """``prediction_length`` future timestamps per series, after each one's last timestamp."""
    pandas = _pandas()
    series_lengths = df[id_column].value_counts(sort=False).to_list()
    indptr = np.concatenate([[0], np.cumsum(series_lengths)]).astype("int64")
    last_ts = pandas.DatetimeIndex(df[timestamp_column].to_numpy()[indptr[1:] - 1])
    item_ids = df[id_column].to_numpy()[indptr[:-1]]
    offset = pandas.tseries.frequencies.to_offset(freq)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=pandas.errors.PerformanceWarning)
        future_ts = np.stack([last_ts + step * offset for step in range(1, prediction_length + 1)], axis=1).ravel()
    return pandas.DataFrame(
        {id_column: np.repeat(item_ids, prediction_length), timestamp_column: pandas.DatetimeIndex(future_ts)}
    )


def _freq_hours(freq: str) -> float | None:
    """The frequency in hours, when it is a fixed duration (``h``, ``15min``, ``D``); else None."""
    pandas = _pandas()
    try:
        hours = pandas.Timedelta(pandas.tseries.frequencies.to_offset(freq)) / pandas.Timedelta(hours=1)
    except (TypeError, ValueError):
        return None
    return float(hours) if hours > 0 else None


@dataclass
class _FramePlan:
    """What ``predict_df`` sends, and the frame its answers go into."""

    future: pd.DataFrame
    ids: list[Any]
    bodies: list[dict[str, Any]]
    target: str
    quantile_levels: list[Any]
    prediction_length: int


def _plan_frame(
    df: pd.DataFrame,
    *,
    id_column: str,
    timestamp_column: str,
    target: Any,
    prediction_length: int,
    quantile_levels: Sequence[Any],
    model_name: str | None,
    context_hours: int | None,
    freq: str | None,
) -> _FramePlan:
    pandas = _pandas()
    if not isinstance(target, str):
        raise ValueError(
            f"Expected `target` to be str, but found {type(target)}. chronoserve only supports univariate forecasting."
        )
    if target not in df.columns:
        raise ValueError(f"df does not contain the target column '{target}'")
    missing = {id_column, timestamp_column} - set(df.columns)
    if missing:
        raise ValueError(f"df does not contain all expected columns. Missing columns: {missing}")
    if not pandas.api.types.is_numeric_dtype(df[target]):
        raise ValueError(f"Target column '{target}' must be numeric, got dtype {df[target].dtype}")
    if isinstance(prediction_length, bool) or not isinstance(prediction_length, int) or prediction_length < 1:
        raise ValueError(f"prediction_length must be a positive integer, got {prediction_length!r}")
    if context_hours is not None and (
        isinstance(context_hours, bool) or not isinstance(context_hours, int) or context_hours < 1
    ):
        raise ValueError(f"context_hours must be a positive integer or None, got {context_hours!r}")
    levels = list(quantile_levels)
    if not levels or any(not (0.0 < float(q) < 1.0) for q in levels) or len({float(q) for q in levels}) < len(levels):
        raise ValueError(f"quantile_levels must be distinct levels strictly between 0 and 1, got {levels}")
    if len(df) == 0:
        raise ValueError("df has no rows")

    df = _normalize_df(df, id_column, timestamp_column)
    if freq is None:
        freq = _infer_freq(df, id_column, timestamp_column)
    future = _make_future_df(df, prediction_length, freq, id_column, timestamp_column)
    hours = _freq_hours(freq)
    step = timedelta(hours=hours) if hours is not None else None

    lengths = df[id_column].value_counts(sort=False).to_list()
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype("int64")
    values = df[target].to_numpy(dtype=np.float64, na_value=np.nan)
    stamps = pandas.DatetimeIndex(df[timestamp_column])
    future_stamps = pandas.DatetimeIndex(future[timestamp_column])
    ids = df[id_column].to_numpy()[indptr[:-1]].tolist()
    common: dict[str, Any] = {"horizon_hours": prediction_length, "quantile_levels": [float(q) for q in levels]}
    if model_name is not None:
        common["model_name"] = model_name
    bodies = []
    for i in range(len(lengths)):
        lo, hi = int(indptr[i]), int(indptr[i + 1])
        if context_hours is not None:
            lo = max(lo, hi - context_hours)
        body = {"target": _values("target", values[lo:hi]), **common}
        if step is not None:
            # Label the server's answer too, when its arithmetic (start + k * freq_hours) gives
            # the timestamps upstream's offsets give; the frame uses the latter either way.
            start = stamps[lo].to_pydatetime(warn=False)
            offsets = pandas.to_timedelta([step * (hi - lo + h) for h in range(prediction_length)])
            expected = future_stamps[i * prediction_length : (i + 1) * prediction_length]
            if bool(((pandas.Timestamp(start) + offsets) == expected).all()):
                body["start"] = _iso(start)
                body["freq_hours"] = hours
        bodies.append(body)
    return _FramePlan(future, ids, bodies, target, levels, prediction_length)


def _assemble_frame(plan: _FramePlan, results: Sequence[Forecast]) -> pd.DataFrame:
    """Upstream's output: id, timestamp, ``target_name``, ``predictions``, one column per level (float32)."""
    h = plan.prediction_length
    median = np.concatenate([r.median for r in results]) if results else np.empty(0)
    quantiles = np.empty((len(results) * h, len(plan.quantile_levels)), dtype=np.float64)
    for i, r in enumerate(results):
        if r.horizon != h:
            raise ChronoserveError(f"series {plan.ids[i]!r}: the server answered {r.horizon} steps, not {h}")
        if len(r.quantile_levels) != len(plan.quantile_levels):
            raise ChronoserveError(f"series {plan.ids[i]!r}: the server answered levels {r.quantile_levels}")
        quantiles[i * h : (i + 1) * h] = r.quantiles  # the server keeps the order of the levels asked for
    result = plan.future.copy()
    result["target_name"] = plan.target
    result["predictions"] = median.astype(np.float32)
    for j, q in enumerate(plan.quantile_levels):
        result[str(q)] = quantiles[:, j].astype(np.float32)
    return result
