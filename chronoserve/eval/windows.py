"""Rolling evaluation windows over an hourly series.

For a series of ``T`` rows (one per hour, NaN for a missing reading), a context of ``C`` hours,
a horizon of ``H`` hours and a ``stride``, the forecast starts ``i`` are taken in a span
``[start, end)`` of row indices (``end`` clipped to ``T``, default ``T``):

- the context is rows ``[i - C, i)`` and the horizon rows ``[i, i + H)``; both lie inside the
  span, so a window never reads past the span's end, and the context never reads the horizon;
- the first start is ``start + C`` and the next ones step by ``stride``:
  ``i_k = start + C + k * stride`` while ``i_k + H <= end``. There are
  ``n = (end - H - start - C) // stride + 1`` of them when ``end - start >= C + H``, else none
  (:func:`count_windows`);
- with ``max_windows = m < n``, ``m`` of them are kept, evenly spaced and deterministic: the
  ``k_j = round(j * (n - 1) / (m - 1))`` for ``j = 0 .. m - 1`` (halves rounded up), which
  keeps the first and the last start (``m = 1`` keeps the first).

Windows whose context or horizon has no observed value are still produced, with
:attr:`EvalWindow.context_all_nan` / :attr:`EvalWindow.target_all_nan` set: the caller decides
(and reports) what to do with them; the metrics score an all-NaN horizon NaN.

This differs from fev's ``Task`` in one convention: fev anchors its windows at the end of the
data (the last window ends on the last row); here they start at the beginning of the span.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import numpy.typing as npt

from chronoserve.data import SeriesStore

FloatArray = npt.NDArray[np.float32]

_HOUR = timedelta(hours=1)


def _positive(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _bounds(n_rows: int, start: int, end: int | None) -> tuple[int, int]:
    if isinstance(n_rows, bool) or not isinstance(n_rows, (int, np.integer)) or n_rows < 0:
        raise ValueError(f"n_rows must be a non-negative integer, got {n_rows!r}")
    for name, value in (("start", start), ("end", end)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0):
            raise ValueError(f"{name} must be a non-negative row index, got {value!r}")
    hi = int(n_rows) if end is None else min(int(end), int(n_rows))
    return int(start), hi


def count_windows(
    n_rows: int,
    context: int,
    horizon: int,
    stride: int,
    *,
    start: int = 0,
    end: int | None = None,
    max_windows: int | None = None,
) -> int:
    """How many windows :func:`forecast_starts` gives: ``min(n, max_windows)`` with
    ``n = (min(end, n_rows) - horizon - start - context) // stride + 1``, or 0 when the span
    ``[start, min(end, n_rows))`` is shorter than ``context + horizon``.
    """
    c, h, s = _positive("context", context), _positive("horizon", horizon), _positive("stride", stride)
    lo, hi = _bounds(n_rows, start, end)
    room = hi - h - (lo + c)
    n = room // s + 1 if room >= 0 else 0
    return n if max_windows is None else min(n, _positive("max_windows", max_windows))


def forecast_starts(
    n_rows: int,
    context: int,
    horizon: int,
    stride: int,
    *,
    start: int = 0,
    end: int | None = None,
    max_windows: int | None = None,
) -> list[int]:
    """The forecast start rows ``i`` of the windows (see the module docstring), ascending."""
    n = count_windows(n_rows, context, horizon, stride, start=start, end=end)
    first = int(start) + int(context)
    ks = list(range(n))
    if max_windows is not None:
        m = _positive("max_windows", max_windows)
        if m < n:
            ks = [0] if m == 1 else [(2 * j * (n - 1) + (m - 1)) // (2 * (m - 1)) for j in range(m)]
    return [first + k * int(stride) for k in ks]


@dataclass(frozen=True, eq=False)
class EvalWindow:
    """One rolling window. The arrays are read-only views of the series (copy them to modify)."""

    series: str
    number: int
    """Position among the windows of this configuration (0-based)."""
    forecast_start: int
    """Row index ``i`` of the first forecast hour."""
    context: FloatArray
    """Rows ``[i - C, i)``: what the model reads."""
    target: FloatArray
    """Rows ``[i, i + H)``: the truth to score (NaN where missing)."""
    history: FloatArray
    """Rows ``[0, i)``: the whole past, for the MASE scale as fev and gluonts compute it."""
    forecast_time: datetime | None
    """Timestamp of row ``i`` (None when the series' first timestamp was not given)."""

    @property
    def context_observed(self) -> int:
        return int(np.count_nonzero(~np.isnan(self.context)))

    @property
    def target_observed(self) -> int:
        return int(np.count_nonzero(~np.isnan(self.target)))

    @property
    def context_all_nan(self) -> bool:
        """No observed value in the context: no model can forecast from it."""
        return self.context_observed == 0

    @property
    def target_all_nan(self) -> bool:
        """No observed value in the horizon: every metric is NaN for this window."""
        return self.target_observed == 0

    @property
    def flagged(self) -> bool:
        """``context_all_nan or target_all_nan``."""
        return self.context_all_nan or self.target_all_nan


def rolling_windows(
    values: npt.ArrayLike,
    *,
    context: int,
    horizon: int,
    stride: int,
    start: int = 0,
    end: int | None = None,
    max_windows: int | None = None,
    series: str = "",
    first_timestamp: datetime | None = None,
) -> Iterator[EvalWindow]:
    """The windows of one series given as an array (one value per hour, NaN for missing)."""
    arr = np.array(values, dtype=np.float32)  # a private copy that the views below share
    if arr.ndim != 1:
        raise ValueError(f"values must be 1-D, got shape {arr.shape}")
    arr.flags.writeable = False
    starts = forecast_starts(arr.size, context, horizon, stride, start=start, end=end, max_windows=max_windows)
    return _emit(arr, starts, context, horizon, series, first_timestamp)


def _emit(
    arr: FloatArray, starts: list[int], context: int, horizon: int, series: str, first: datetime | None
) -> Iterator[EvalWindow]:
    for number, i in enumerate(starts):
        yield EvalWindow(
            series=series,
            number=number,
            forecast_start=i,
            context=arr[i - context : i],
            target=arr[i : i + horizon],
            history=arr[:i],
            forecast_time=None if first is None else first + i * _HOUR,
        )


@dataclass(frozen=True, eq=False)
class SeriesData:
    """One series of a :class:`~chronoserve.data.SeriesStore`: the target and its first hour."""

    id: str
    values: FloatArray
    """The whole target (read-only), NaN where missing."""
    start: datetime
    """Timestamp of ``values[0]``; row ``r`` is ``start + r`` hours."""

    def row(self, when: datetime | str) -> int:
        """The row index of a timestamp on the hour (may lie outside the data)."""
        t = datetime.fromisoformat(when) if isinstance(when, str) else when
        if t.tzinfo is not None or t.minute or t.second or t.microsecond:
            raise ValueError(f"{when!r} must be a naive local time on the hour")
        return (t - self.start) // _HOUR


def series_data(store: SeriesStore, series_id: str) -> SeriesData:
    """The whole target of ``series_id`` (a read-only view) and its first hour."""
    info = store.info(series_id)
    return SeriesData(id=info.id, values=store.values(info.id), start=info.start)


def store_windows(
    store: SeriesStore,
    series_id: str,
    *,
    context: int,
    horizon: int,
    stride: int,
    start: datetime | str | int | None = None,
    end: datetime | str | int | None = None,
    max_windows: int | None = None,
) -> Iterator[EvalWindow]:
    """:func:`rolling_windows` over a store's series; the span bounds may be row indices or
    timestamps (``end`` exclusive; ``None`` for the data's first row / the hour after its last).
    A bound before the data's first hour is refused; one after its last hour is clipped."""
    data = series_data(store, series_id)

    def to_row(name: str, value: datetime | str | int | None, default: int) -> int:
        if value is None:
            return default
        row = value if isinstance(value, int) and not isinstance(value, bool) else None
        if row is None:
            if not isinstance(value, (datetime, str)):
                raise ValueError(f"{name} must be a row index or a timestamp, got {value!r}")
            row = data.row(value)
        if row < 0:
            raise ValueError(f"{name}={value!r} is before the first hour of {data.id!r} ({data.start.isoformat()})")
        return row

    lo = to_row("start", start, 0)
    hi = to_row("end", end, data.values.size)
    arr = data.values
    starts = forecast_starts(arr.size, context, horizon, stride, start=lo, end=hi, max_windows=max_windows)
    return _emit(arr, starts, context, horizon, data.id, data.start)
