"""chronoserve.eval.windows: the count formula against the generated windows, edges, NaN flags,
and windows cut from a SeriesStore."""

from __future__ import annotations

import itertools
import math
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from chronoserve.data import SeriesStore
from chronoserve.eval import count_windows, forecast_starts, rolling_windows, series_data, store_windows

NAN = math.nan


def _brute(n_rows, context, horizon, stride, start, end):
    """Every forecast start i with the window inside [start, min(end, n_rows)), on the stride grid."""
    hi = n_rows if end is None else min(end, n_rows)
    return [
        i
        for i in range(n_rows + 1)
        if i - context >= start and i + horizon <= hi and (i - start - context) % stride == 0
    ]


def test_count_formula_matches_generated_windows_exhaustively():
    for n_rows, c, h, stride, start in itertools.product(range(13), range(1, 5), range(1, 5), range(1, 5), range(4)):
        for end in (None, 0, 3, 7, 12, 20):
            expected = _brute(n_rows, c, h, stride, start, end)
            starts = forecast_starts(n_rows, c, h, stride, start=start, end=end)
            assert starts == expected, (n_rows, c, h, stride, start, end)
            assert count_windows(n_rows, c, h, stride, start=start, end=end) == len(expected)
            for m in (1, 2, 3, 5):
                cut = forecast_starts(n_rows, c, h, stride, start=start, end=end, max_windows=m)
                assert len(cut) == count_windows(n_rows, c, h, stride, start=start, end=end, max_windows=m)
                assert len(cut) == min(m, len(expected))
                assert set(cut) <= set(expected)
                assert cut == sorted(set(cut))


def test_edges():
    # context + horizon exactly fill the span: one window; one hour less: none
    assert forecast_starts(48, 24, 24, 1) == [24]
    assert forecast_starts(47, 24, 24, 1) == []
    assert forecast_starts(100, 24, 24, 5, start=10, end=58) == [34]
    assert count_windows(100, 24, 24, 5, start=10, end=57) == 0
    # a stride that does not divide the room: the last window ends before the span's end
    starts = forecast_starts(100, 24, 24, 10)
    assert starts == [24, 34, 44, 54, 64, 74]
    assert starts[-1] + 24 <= 100 < starts[-1] + 10 + 24
    # the span's end is clipped to the data
    assert forecast_starts(50, 24, 24, 1, end=1000) == [24, 25, 26]
    # start past the data, or end before start
    assert count_windows(50, 1, 1, 1, start=60) == 0
    assert count_windows(50, 1, 1, 1, start=30, end=20) == 0


def test_max_windows_are_evenly_spaced_and_deterministic():
    all_starts = forecast_starts(1000, 24, 24, 1, end=24 + 24 + 9)  # 10 windows
    assert all_starts == list(range(24, 34))
    assert forecast_starts(1000, 24, 24, 1, end=57, max_windows=4) == [24, 27, 30, 33]  # k = 0, 3, 6, 9
    assert forecast_starts(1000, 24, 24, 1, end=57, max_windows=3) == [24, 29, 33]  # k = 0, 4.5 -> 5, 9
    assert forecast_starts(1000, 24, 24, 1, end=57, max_windows=1) == [24]
    assert forecast_starts(1000, 24, 24, 1, end=57, max_windows=10) == all_starts
    assert forecast_starts(1000, 24, 24, 1, end=57, max_windows=99) == all_starts
    # stride and cut together: 4416 rows (the embedded sites), context 336, H 24, daily, 20 windows
    n = count_windows(4416, 336, 24, 24)
    assert n == (4416 - 24 - 336) // 24 + 1 == 170
    cut = forecast_starts(4416, 336, 24, 24, max_windows=20)
    assert len(cut) == 20 and cut[0] == 336 and cut[-1] == 336 + 169 * 24 == 4416 - 24
    assert all((i - 336) % 24 == 0 for i in cut)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"context": 0}, "context"),
        ({"horizon": -1}, "horizon"),
        ({"stride": 0}, "stride"),
        ({"stride": True}, "stride"),
        ({"max_windows": 0}, "max_windows"),
        ({"start": -1}, "start"),
    ],
)
def test_bad_arguments(kwargs, match):
    args = {"context": 2, "horizon": 2, "stride": 1} | kwargs
    with pytest.raises(ValueError, match=match):
        count_windows(10, **args)


def test_rolling_windows_slices_flags_and_views():
    values = np.arange(30, dtype=np.float64)
    values[4:10] = NAN  # context of the window at i=10 (C=6) is all NaN
    values[16:20] = NAN  # horizon of the window at i=16 (H=4) is all NaN
    t0 = datetime(2016, 7, 1)
    windows = list(rolling_windows(values, context=6, horizon=4, stride=2, series="s", first_timestamp=t0))
    assert [w.forecast_start for w in windows] == list(range(6, 27, 2))
    assert [w.number for w in windows] == list(range(len(windows)))
    by_start = {w.forecast_start: w for w in windows}
    w = by_start[10]
    assert w.context_all_nan and not w.target_all_nan and w.flagged
    np.testing.assert_array_equal(w.target, [10, 11, 12, 13])
    assert w.forecast_time == t0 + timedelta(hours=10)
    w = by_start[16]
    assert w.target_all_nan and not w.context_all_nan and w.flagged
    assert (w.context_observed, w.target_observed) == (6, 0)
    assert [x.forecast_start for x in windows if x.flagged] == [6, 10, 16]  # 6: horizon [6, 10) is NaN
    for w in windows:
        i = w.forecast_start
        np.testing.assert_array_equal(w.context, values[i - 6 : i].astype(np.float32))
        np.testing.assert_array_equal(w.target, values[i : i + 4].astype(np.float32))
        np.testing.assert_array_equal(w.history, values[:i].astype(np.float32))
        assert w.context.dtype == np.float32
        assert not w.context.flags.writeable
    values[:] = 0.0  # the windows hold their own copy
    assert windows[0].context[0] == 0.0 and windows[-1].target[-1] == 29.0


def _write(path: Path, pm25: list[float]) -> None:
    rows = ["timestamp,temperature,pm25"]
    t0 = datetime(2016, 7, 1)
    for i, v in enumerate(pm25):
        cell = "" if math.isnan(v) else repr(v)
        rows.append(f"{(t0 + timedelta(hours=i)).isoformat(sep=' ')},20.0,{cell}")
    path.write_text("\n".join(rows) + "\n")


def test_store_windows_on_a_small_store(tmp_path: Path):
    pm = [float(i) for i in range(72)]
    pm[30:40] = [NAN] * 10
    _write(tmp_path / "site.csv", pm)
    _write(tmp_path / "empty.csv", [NAN] * 30)
    store = SeriesStore.from_dir(tmp_path)

    data = series_data(store, "site")
    assert data.values.shape == (72,) and data.start == datetime(2016, 7, 1)
    assert not data.values.flags.writeable
    assert data.row("2016-07-02 00:00:00") == 24
    assert np.isnan(series_data(store, "empty").values).all()  # the store's window() refuses it; we do not

    ws = list(store_windows(store, "site", context=12, horizon=6, stride=6, start="2016-07-01T06:00", end=60))
    assert [w.forecast_start for w in ws] == [18, 24, 30, 36, 42, 48, 54]
    assert ws[-1].forecast_start + 6 <= 60
    assert ws[0].forecast_time == datetime(2016, 7, 1, 18)
    assert [w.forecast_start for w in ws if w.target_all_nan] == [30]
    assert [w.forecast_start for w in ws if w.context_all_nan] == []
    empty = list(store_windows(store, "empty", context=6, horizon=6, stride=6))
    assert len(empty) == 4 and all(w.context_all_nan and w.target_all_nan for w in empty)
    with pytest.raises(ValueError, match="before the first hour"):
        list(store_windows(store, "site", context=6, horizon=6, stride=6, start=datetime(2016, 6, 30)))
    with pytest.raises(ValueError, match="on the hour"):
        list(store_windows(store, "site", context=6, horizon=6, stride=6, end="2016-07-02T00:30"))


def test_store_windows_agree_with_store_window_on_embedded_data():
    store = SeriesStore.embedded()
    ws = list(store_windows(store, "dongsi", context=336, horizon=24, stride=24, max_windows=5))
    assert len(ws) == 5
    for w in ws:
        assert w.forecast_time is not None
        cut = store.window("dongsi", horizon=24, context=336, end=w.forecast_time)
        np.testing.assert_array_equal(w.context, cut.target)
        assert cut.actual is not None
        np.testing.assert_array_equal(w.target, cut.actual)
