"""Users' own data: column mapping, a series-id column, timestamps with offsets (to UTC) and in other
formats, CSV dialects sniffed, Parquet; through ``serve --data`` and the series store."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest
from test_server import FAKE, client_for

from chronoserve.data import Layout, SeriesStore, read_file
from chronoserve.testing import server_settings

HOURS = [f"2024-03-01 {h:02d}:00" for h in range(6)]


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("delimiter", [";", "\t", "|", ","])
def test_the_csv_dialect_is_sniffed(tmp_path: Path, delimiter: str) -> None:
    rows = "".join(f"{t}{delimiter}{i}{delimiter}{i * 2}.5\n" for i, t in enumerate(HOURS))
    path = write(tmp_path, "s.csv", f"timestamp{delimiter}temp{delimiter}pm25\n{rows}")
    (series,) = read_file(path)
    assert series.info.covariates == ("temp",) and series.target.tolist() == [i * 2 + 0.5 for i in range(6)]


def test_a_given_delimiter_wins_and_a_wrong_one_is_explained(tmp_path: Path) -> None:
    path = write(tmp_path, "s.csv", "timestamp;pm25\n" + "".join(f"{t};{i}\n" for i, t in enumerate(HOURS)))
    with pytest.raises(ValueError, match="no timestamp column"):
        read_file(path, Layout(delimiter=","))


def test_columns_are_mapped_and_a_long_table_holds_several_series(tmp_path: Path) -> None:
    # newest first, two stations, a text column, a covariate not wanted
    rows = [
        f"{s},{t},{10 * k + i},{i},NW,{i * 3}" for k, s in enumerate(("north", "south")) for i, t in enumerate(HOURS)
    ]
    path = write(tmp_path, "all.csv", "station,time,value,humidity,wind_dir,noise\n" + "\n".join(reversed(rows)) + "\n")
    layout = Layout(timestamp="time", target="value", id="station")
    north, south = sorted(read_file(path, layout), key=lambda s: s.info.id)
    assert (north.info.id, south.info.id) == ("north", "south")
    assert north.target.tolist() == [0, 1, 2, 3, 4, 5] and south.target.tolist() == [10, 11, 12, 13, 14, 15]
    assert north.info.start == datetime(2024, 3, 1) and north.info.target == "value"
    assert north.info.covariates == ("humidity", "noise") and north.info.ignored == ("wind_dir",)
    chosen = read_file(path, Layout(timestamp="time", target="value", id="station", covariates=("humidity",)))
    assert {s.info.covariates for s in chosen} == {("humidity",)}
    with pytest.raises(ValueError, match="column 'wind_dir': 'NW' is not a number"):  # named: must be numbers
        read_file(path, Layout(timestamp="time", target="value", id="station", covariates=("wind_dir",)))
    with pytest.raises(ValueError, match="no series id column 'site'.*--id-column"):
        read_file(path, Layout(timestamp="time", target="value", id="site"))


def test_timestamps_with_offsets_become_utc_and_must_all_have_one(tmp_path: Path) -> None:
    rows = "".join(f"2024-03-01T{8 + i:02d}:00+08:00,{i}\n" for i in range(3))
    (series,) = read_file(write(tmp_path, "s.csv", "timestamp,pm25\n" + rows))
    assert series.info.start == datetime(2024, 3, 1, 0, 0) and series.info.end == datetime(2024, 3, 1, 2, 0)
    zulu = "".join(f"2024-03-01T{i:02d}:00:00Z,{i}\n" for i in range(3))
    assert read_file(write(tmp_path, "z.csv", "timestamp,pm25\n" + zulu))[0].info.start == datetime(2024, 3, 1)
    mixed = "timestamp,pm25\n2024-03-01T00:00Z,1\n2024-03-01 01:00,2\n"
    with pytest.raises(ValueError, match="line 3: .*has no UTC offset, unlike line 2"):
        read_file(write(tmp_path, "m.csv", mixed))


def test_day_first_and_other_formats_need_the_format_said(tmp_path: Path) -> None:
    rows = "".join(f"0{1 + i // 24}/03/2024 {i % 24:02d}:00,{i}\n" for i in range(30))
    path = write(tmp_path, "d.csv", "timestamp,pm25\n" + rows)
    with pytest.raises(ValueError, match="line 2: cannot parse timestamp '01/03/2024 00:00'.*--timestamp-format"):
        read_file(path)
    (series,) = read_file(path, Layout(timestamp_format="%d/%m/%Y %H:%M"))
    assert series.info.start == datetime(2024, 3, 1) and series.info.end == datetime(2024, 3, 2, 5)
    with pytest.raises(ValueError, match="timestamp format"):
        Layout(timestamp_format="%Q")


def test_a_step_that_is_not_an_hour_is_read_where_hours_are_not_required(tmp_path: Path) -> None:
    rows = "".join(f"2024-03-{1 + i:02d},{i}\n" for i in range(5))
    path = write(tmp_path, "daily.csv", "timestamp,pm25\n" + rows)
    with pytest.raises(ValueError, match="exactly one hour apart"):
        read_file(path)  # the series store serves hourly series
    (daily,) = read_file(path, hourly=False)
    assert daily.info.freq == "1d" and daily.info.rows == 5


def test_parquet(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    stamps = [datetime(2024, 3, 1, h) for h in range(4)]
    table = pa.table({"ts": stamps, "level": [1.0, None, 3.0, 4.0], "site": ["a"] * 4})
    path = tmp_path / "s.parquet"
    pq.write_table(table, path)
    (series,) = read_file(path, Layout(timestamp="ts", target="level"))
    assert series.info.start == stamps[0] and series.info.rows == 4 and series.info.ignored == ("site",)
    assert series.target[0] == 1.0 and series.target[1] != series.target[1]  # the missing value is NaN
    store = SeriesStore.from_dir(tmp_path, Layout(timestamp="ts", target="level"))
    assert store.ids() == ["s"]


async def test_serve_data_from_a_users_file(tmp_path: Path) -> None:
    hours = [(datetime(2024, 3, 1) + timedelta(hours=i)).isoformat() + "Z" for i in range(48)]
    rows = [f"{s};{i};{t}" for s in ("east", "west") for i, t in enumerate(hours)]
    path = write(tmp_path, "sites.csv", "site;count;when\n" + "\n".join(rows) + "\n")
    layout = Layout(timestamp="when", target="count", id="site", lower_bound=0.0)
    settings = server_settings(
        default_model=FAKE, data=str(path), data_layout=layout, policy_options={"max_wait": 0.001}
    )
    async with client_for(settings) as client:
        series = (await client.get("/series")).json()["series"]
        assert [(s["id"], s["target"], s["lower_bound"]) for s in series] == [
            ("east", "count", 0.0),
            ("west", "count", 0.0),
        ]
        r = await client.post("/forecast", json={"city": "west", "horizon_hours": 3})
        assert r.status_code == 200, r.text
        assert r.json()["timestamps"][0] == "2024-03-03T00:00:00" and r.json()["lower_bound"] == 0.0
