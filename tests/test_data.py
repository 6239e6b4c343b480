"""chronoserve.data: the embedded PM2.5 series, CSV loading and validation, forecast windows."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from chronoserve.data import SeriesInfo, SeriesStore, Window
from chronoserve.errors import InvalidRequest

SITES = [
    "aotizhongxin",
    "changping",
    "dingling",
    "dongsi",
    "guanyuan",
    "gucheng",
    "huairou",
    "nongzhanguan",
    "shunyi",
    "tiantan",
    "wanliu",
    "wanshouxigong",
]
COVARIATES = ("relative_humidity", "temperature", "wind_speed")
START = datetime(2016, 7, 1, 0)
LAST = datetime(2016, 12, 31, 23)
ROWS = 4416
HOUR = timedelta(hours=1)

EMBEDDED_DIR = Path(__file__).resolve().parents[1] / "chronoserve" / "data" / "pm25"
SHARED_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "pm25"


@pytest.fixture(scope="module")
def store() -> SeriesStore:
    return SeriesStore.embedded()


def read_rows(site: str) -> list[dict[str, str]]:
    with (EMBEDDED_DIR / f"{site}.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def as_f32(cell: str) -> float:
    return float(np.float32(cell)) if cell else math.nan


def field_of(excinfo: pytest.ExceptionInfo[InvalidRequest]) -> str:
    return excinfo.value.field


# --- the embedded store -------------------------------------------------------------------------


def test_embedded_has_the_twelve_sites(store: SeriesStore) -> None:
    assert store.ids() == SITES
    assert len(store) == 12
    assert [i.id for i in store.infos()] == SITES
    for site in SITES:
        info = store.info(site)
        assert isinstance(info, SeriesInfo)
        assert (info.start, info.end, info.rows, info.freq) == (START, LAST, ROWS, "h")
        assert info.target == "pm25"
        assert info.covariates == COVARIATES
        assert set(info.missing) == {*COVARIATES, "pm25"}
        assert 0.0 < info.missing["pm25"] < 0.06
        assert all(0.0 <= v < 0.01 for k, v in info.missing.items() if k != "pm25")
        assert info.source.startswith("chronoserve (embedded): Beijing PM2.5")
    assert store.attribution is not None
    assert "CC BY 4.0" in store.attribution
    assert "20170457" in store.attribution


def test_missing_fractions_match_the_csv(store: SeriesStore) -> None:
    rows = read_rows("dingling")
    info = store.info("dingling")
    for column in (*COVARIATES, "pm25"):
        expected = sum(1 for r in rows if not r[column]) / len(rows)
        assert info.missing[column] == pytest.approx(expected)


def test_info_to_dict_is_json_ready(store: SeriesStore) -> None:
    import json

    d = store.info("dongsi").to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["start"] == "2016-07-01T00:00:00"
    assert d["end"] == "2016-12-31T23:00:00"
    assert d["covariates"] == list(COVARIATES)
    assert d["rows"] == ROWS
    assert d["freq"] == "h"


def test_lookup_is_case_insensitive(store: SeriesStore) -> None:
    assert store.info("Dongsi").id == "dongsi"
    assert "DONGSI" in store
    assert "paris" not in store
    assert store.window("Dongsi", horizon=1).series == "dongsi"


def test_embedded_csvs_equal_the_shared_data() -> None:
    if not SHARED_DIR.is_dir():
        pytest.skip(f"{SHARED_DIR} is absent")
    shared = sorted(p.name for p in SHARED_DIR.glob("*.csv"))
    embedded = sorted(p.name for p in EMBEDDED_DIR.glob("*.csv"))
    assert embedded == shared == [f"{s}.csv" for s in SITES]
    for name in shared:
        assert (EMBEDDED_DIR / name).read_bytes() == (SHARED_DIR / name).read_bytes(), name


def test_import_pulls_in_neither_torch_nor_pandas() -> None:
    code = (
        "import sys, chronoserve.data\n"
        "chronoserve.data.SeriesStore.embedded().window('dongsi', horizon=24, covariates=True)\n"
        "bad = sorted(m for m in ('torch', 'pandas') if m in sys.modules)\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --- windows ------------------------------------------------------------------------------------


def test_default_window_forecasts_the_real_future(store: SeriesStore) -> None:
    w = store.window("aotizhongxin", horizon=24)
    assert isinstance(w, Window)
    assert w.series == "aotizhongxin"
    assert w.target.dtype == np.float32
    assert w.target.shape == (ROWS,)
    assert (w.context_start, w.context_end) == (START, LAST)
    assert w.forecast_timestamps == [LAST + (i + 1) * HOUR for i in range(24)]
    assert w.horizon == 24
    assert w.context_length == ROWS
    assert w.actual is None
    assert w.past_covariates is None
    assert w.future_covariates is None
    rows = read_rows("aotizhongxin")
    expected = np.array([as_f32(r["pm25"]) for r in rows], dtype=np.float32)
    np.testing.assert_array_equal(w.target, expected)


def test_max_context_caps_the_default_context(store: SeriesStore) -> None:
    w = store.window("dongsi", horizon=12, max_context=512)
    assert w.context_length == 512
    assert w.context_end == LAST
    assert w.context_start == LAST - 511 * HOUR
    # history shorter than the cap: all of it
    w = store.window("dongsi", horizon=12, end=START + 10 * HOUR, max_context=512)
    assert w.context_length == 10
    assert w.context_start == START
    with pytest.raises(InvalidRequest) as excinfo:
        store.window("dongsi", horizon=12, context=600, max_context=512)
    assert field_of(excinfo) == "context"


def test_window_arithmetic_matches_the_csv_rows(store: SeriesStore) -> None:
    rows = read_rows("dingling")
    end = datetime(2016, 10, 1, 6)
    w = store.window("dingling", horizon=48, context=100, end=end, covariates=True, known_future=True)
    e = next(i for i, r in enumerate(rows) if r["timestamp"] == "2016-10-01 06:00:00")
    assert (e, w.context_end, w.context_start) == ((end - START) // HOUR, end - HOUR, end - 100 * HOUR)
    assert w.forecast_timestamps[0] == end
    assert w.forecast_timestamps[-1] == end + 47 * HOUR
    assert [datetime.fromisoformat(r["timestamp"]) for r in rows[e - 100 : e]][0] == w.context_start
    context, horizon = rows[e - 100 : e], rows[e : e + 48]
    np.testing.assert_array_equal(w.target, [as_f32(r["pm25"]) for r in context])
    assert w.actual is not None
    assert w.actual.dtype == np.float32
    np.testing.assert_array_equal(w.actual, [as_f32(r["pm25"]) for r in horizon])
    assert w.past_covariates is not None
    assert w.future_covariates is not None
    assert list(w.past_covariates) == list(COVARIATES) == list(w.future_covariates)
    for name in COVARIATES:
        assert w.past_covariates[name].shape == w.target.shape
        assert w.past_covariates[name].dtype == np.float32
        np.testing.assert_array_equal(w.past_covariates[name], [as_f32(r[name]) for r in context])
        np.testing.assert_array_equal(w.future_covariates[name], [as_f32(r[name]) for r in horizon])


def test_window_keeps_gaps_as_nan(store: SeriesStore) -> None:
    rows = read_rows("dingling")
    gap = next(i for i, r in enumerate(rows) if i > 100 and not r["pm25"])
    end = START + (gap + 1) * HOUR
    w = store.window("dingling", horizon=1, context=24, end=end)
    assert math.isnan(w.target[-1])
    assert not np.isnan(w.target).all()


def test_covariates_without_known_future(store: SeriesStore) -> None:
    w = store.window("shunyi", horizon=6, context=10, end=datetime(2016, 8, 1), covariates=True)
    assert w.past_covariates is not None
    assert w.future_covariates is None
    assert w.actual is not None
    assert all(v.shape == (10,) for v in w.past_covariates.values())


def test_actual_is_padded_past_the_end_of_the_data(store: SeriesStore) -> None:
    w = store.window("tiantan", horizon=5, end=LAST - HOUR)  # two horizon hours are in the data
    assert w.actual is not None
    assert w.actual.shape == (5,)
    assert not np.isnan(w.actual[:2]).any()
    assert np.isnan(w.actual[2:]).all()


def test_end_at_the_first_allowed_hour(store: SeriesStore) -> None:
    w = store.window("wanliu", horizon=3, end=START + HOUR)
    assert w.context_length == 1
    assert w.context_start == w.context_end == START


def test_end_may_be_an_iso_string(store: SeriesStore) -> None:
    a = store.window("gucheng", horizon=2, context=5, end="2016-11-05T13:00")
    b = store.window("gucheng", horizon=2, context=5, end=datetime(2016, 11, 5, 13))
    np.testing.assert_array_equal(a.target, b.target)
    assert a.forecast_timestamps == b.forecast_timestamps


def test_window_arrays_are_fresh_copies(store: SeriesStore) -> None:
    w = store.window("huairou", horizon=4, context=8, end=datetime(2016, 9, 1), covariates=True, known_future=True)
    w.target[:] = -1.0
    assert w.past_covariates is not None
    w.past_covariates["temperature"][:] = -1.0
    again = store.window("huairou", horizon=4, context=8, end=datetime(2016, 9, 1), covariates=True)
    assert again.past_covariates is not None
    assert not (again.target == -1.0).any()
    assert not (again.past_covariates["temperature"] == -1.0).any()


# --- request errors name their field -------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"horizon": 0}, "horizon"),
        ({"horizon": -3}, "horizon"),
        ({"horizon": True}, "horizon"),
        ({"horizon": 2.5}, "horizon"),
        ({"horizon": 10**9}, "horizon"),
        ({"horizon": 24, "context": 0}, "context"),
        ({"horizon": 24, "context": ROWS + 1}, "context"),
        ({"horizon": 24, "context": "48"}, "context"),
        ({"horizon": 24, "end": datetime(2016, 7, 1, 0)}, "end"),  # no history before it
        ({"horizon": 24, "end": datetime(2016, 6, 1)}, "end"),
        ({"horizon": 24, "end": datetime(2017, 1, 1, 1)}, "end"),  # after last + 1h
        ({"horizon": 24, "end": datetime(2016, 8, 1, 0, 30)}, "end"),
        ({"horizon": 24, "end": datetime(2016, 8, 1, 0, 0, 1)}, "end"),
        ({"horizon": 24, "end": datetime(2016, 8, 1, tzinfo=timezone.utc)}, "end"),
        ({"horizon": 24, "end": "2016-08-01T00:00+08:00"}, "end"),
        ({"horizon": 24, "end": "yesterday"}, "end"),
        ({"horizon": 24, "end": 1470000000}, "end"),
        ({"horizon": 24, "known_future": True}, "known_future"),
        ({"horizon": 24, "covariates": True, "known_future": True}, "known_future"),  # past the data
        (
            {"horizon": 24, "end": datetime(2016, 12, 31, 1), "covariates": True, "known_future": True},
            "known_future",
        ),
    ],
)
def test_errors_name_their_field(store: SeriesStore, kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidRequest) as excinfo:
        store.window("dongsi", **kwargs)  # type: ignore[arg-type]
    assert field_of(excinfo) == field


def test_unknown_series_names_city_and_lists_known_ids(store: SeriesStore) -> None:
    with pytest.raises(InvalidRequest) as excinfo:
        store.window("dongsy", horizon=24)
    assert field_of(excinfo) == "series"
    assert "dongsi" in excinfo.value.message
    assert "12 in all" in excinfo.value.message
    with pytest.raises(InvalidRequest) as excinfo:
        store.info("paris")
    assert field_of(excinfo) == "series"
    assert "aotizhongxin" in excinfo.value.message


def test_context_longer_than_the_history_says_what_is_available(store: SeriesStore) -> None:
    with pytest.raises(InvalidRequest, match="only 10 hours") as excinfo:
        store.window("dongsi", horizon=1, context=11, end=START + 10 * HOUR)
    assert field_of(excinfo) == "context"


def test_context_without_any_observation(tmp_path: Path) -> None:
    lines = ["timestamp,temperature,pm25"]
    lines += [f"2020-01-01 {h:02d}:00:00,{h}.5,{'' if 3 <= h < 8 else h}" for h in range(12)]
    (tmp_path / "holey.csv").write_text("\n".join(lines) + "\n")
    store = SeriesStore.from_dir(tmp_path)
    with pytest.raises(InvalidRequest, match="no observed PM2.5 value in the 5 hours") as excinfo:
        store.window("holey", horizon=1, context=5, end=datetime(2020, 1, 1, 8))
    assert field_of(excinfo) == "context"
    w = store.window("holey", horizon=1, context=6, end=datetime(2020, 1, 1, 8))
    assert np.isnan(w.target[1:]).all()
    assert w.target[0] == 2.0


def test_covariates_asked_of_a_series_without_any(tmp_path: Path) -> None:
    (tmp_path / "bare.csv").write_text("timestamp,pm25\n2020-01-01 00:00,1\n2020-01-01 01:00,2\n")
    store = SeriesStore.from_dir(tmp_path)
    assert store.info("bare").covariates == ()
    with pytest.raises(InvalidRequest) as excinfo:
        store.window("bare", horizon=1, covariates=True)
    assert field_of(excinfo) == "covariates"


# --- from_dir and CSV validation -------------------------------------------------------------------


def write_small(path: Path) -> None:
    path.write_text(
        "timestamp,relative_humidity,temperature,wind_speed,pm25,pressure\n"
        "2021-03-01 22:00:00,50.0,1.5,2.0,10,1012\n"
        "2021-03-01 23:00:00,,1.0,2.1,,1013\n"
        "2021-03-02 00:00:00,52.0,0.5,,14,1013\n"
        "2021-03-02 01:00:00,53.0,0.0,1.9,15,1014\n"
    )


def test_from_dir_loads_every_csv(tmp_path: Path) -> None:
    write_small(tmp_path / "site_a.csv")
    write_small(tmp_path / "site_b.csv")
    (tmp_path / "notes.txt").write_text("not data")
    (tmp_path / ".hidden.csv").write_text("garbage")
    store = SeriesStore.from_dir(str(tmp_path))
    assert store.ids() == ["site_a", "site_b"]
    assert store.attribution is None
    info = store.info("site_a")
    assert (info.start, info.end, info.rows) == (datetime(2021, 3, 1, 22), datetime(2021, 3, 2, 1), 4)
    assert info.covariates == ("relative_humidity", "temperature", "wind_speed", "pressure")
    assert info.missing == {
        "relative_humidity": 0.25,
        "temperature": 0.0,
        "wind_speed": 0.25,
        "pressure": 0.0,
        "pm25": 0.25,
    }
    assert info.source == str((tmp_path / "site_a.csv").resolve())
    w = store.window("site_a", horizon=2, end=datetime(2021, 3, 2), covariates=True, known_future=True)
    np.testing.assert_array_equal(w.target, np.array([10.0, np.nan], dtype=np.float32))
    assert w.actual is not None
    np.testing.assert_array_equal(w.actual, [14.0, 15.0])
    assert w.past_covariates is not None
    assert w.future_covariates is not None
    np.testing.assert_array_equal(w.past_covariates["pressure"], [1012.0, 1013.0])
    np.testing.assert_array_equal(w.future_covariates["wind_speed"], np.array([np.nan, 1.9], dtype=np.float32))
    assert w.forecast_timestamps == [datetime(2021, 3, 2, 0), datetime(2021, 3, 2, 1)]


def test_from_dir_tolerates_bom_crlf_blank_lines_quotes_and_na(tmp_path: Path) -> None:
    text = '\ufeff"timestamp","pm25","temp"\r\n2021-01-01T00:00:00,NA,"1.0"\r\n2021-01-01T01:00:00, 7 ,2\r\n\r\n'
    (tmp_path / "x.csv").write_bytes(text.encode("utf-8"))
    store = SeriesStore.from_dir(tmp_path)
    info = store.info("x")
    assert info.rows == 2
    assert info.covariates == ("temp",)
    w = store.window("x", horizon=1, covariates=True)
    np.testing.assert_array_equal(w.target, np.array([np.nan, 7.0], dtype=np.float32))


def test_from_dir_needs_a_directory_with_csvs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no such file or directory"):
        SeriesStore.from_dir(tmp_path / "nope")
    with pytest.raises(ValueError, match=r"no \*\.csv or \*\.parquet files"):
        SeriesStore.from_dir(tmp_path)


GOOD_HEAD = "timestamp,temperature,pm25\n"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "empty"),
        ("temperature,pm25\n1,2\n", "no timestamp column 'timestamp'.*--timestamp-column"),
        ("timestamp,temperature\n2020-01-01 00:00,1\n", "no target column 'pm25'.*--target-column"),
        (GOOD_HEAD, "no data rows"),
        (GOOD_HEAD + "2020-01-01 00:00,1,2\nsoon,1,2\n", "line 3: cannot parse timestamp 'soon'"),
        (GOOD_HEAD + "2020-01-01 00:00,1,2\n2020-01-01 02:00,1,2\n", "line 3: .*exactly one hour apart"),
        (GOOD_HEAD + "2020-01-01 00:00,1,2\n2020-01-01 00:30,1,2\n", "line 3: .*exactly one hour apart"),
        (GOOD_HEAD + "2020-01-01 01:00,1,2\n2020-01-01 01:00,1,2\n", "line 3: .*must increase"),
        (GOOD_HEAD + "2020-01-01 00:15,1,2\n2020-01-01 01:15,1,2\n", "line 2: .*not on the hour"),
        (GOOD_HEAD + "2020-01-01 00:00+08:00,1,2\n2020-01-01 01:00,1,2\n", "line 3: .*has no UTC offset, unlike"),
        (GOOD_HEAD + "2020-01-01 00:00,1,2\n2020-01-01 01:00,warm,2\n", "line 3: column 'temperature': 'warm'"),
        (GOOD_HEAD + "2020-01-01 00:00,1,inf\n", "line 2: column 'pm25'.*not finite"),
        (GOOD_HEAD + "2020-01-01 00:00,1,2\n2020-01-01 01:00,1\n", "line 3: 2 fields, the header has 3"),
        (GOOD_HEAD + "2020-01-01 00:00,1,2\n\n2020-01-01 01:00,1,2\n", "line 3: an empty line"),
        ("timestamp,pm25,pm25\n2020-01-01 00:00,1,2\n", "duplicate column names"),
        ("timestamp,,pm25\n2020-01-01 00:00,1,2\n", "empty column name"),
    ],
)
def test_bad_csv_raises_value_error_naming_the_file(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "broken.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=problem) as excinfo:
        SeriesStore.from_dir(tmp_path)
    assert not isinstance(excinfo.value, InvalidRequest)
    assert str(excinfo.value).startswith(f"{path}: ")


def test_non_utf8_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "latin.csv"
    path.write_bytes(b"timestamp,pm25\n2020-01-01 00:00,1\n" + b"\xff\xfe,\n")
    with pytest.raises(ValueError, match="not UTF-8") as excinfo:
        SeriesStore.from_dir(tmp_path)
    assert str(excinfo.value).startswith(str(path))


def test_embedded_loads_the_same_series_every_time() -> None:
    # Behaviour, not speed (it loads in ~0.05 s; how fast is for a benchmark, not a test).
    first, again = SeriesStore.embedded(), SeriesStore.embedded()
    assert again.ids() == first.ids() == SITES
    assert again.infos() == first.infos()
    for sid in SITES:
        for column in ("pm25", *COVARIATES):
            np.testing.assert_array_equal(again.values(sid, column), first.values(sid, column))


def test_values_is_a_read_only_view_of_a_column():
    store = SeriesStore.embedded()
    pm25 = store.values("dongsi")
    assert pm25.shape == (4416,) and not pm25.flags.writeable
    np.testing.assert_array_equal(pm25[-24:], store.window("dongsi", horizon=1, context=24).target)
    assert store.values("dongsi", "temperature").shape == (4416,)
    with pytest.raises(InvalidRequest) as info:
        store.values("dongsi", "ozone")
    assert info.value.field == "column"
