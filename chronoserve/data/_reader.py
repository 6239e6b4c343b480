"""The one reader of series files: a header, then one row per time step.

The default layout (:data:`DEFAULT_LAYOUT`, the embedded data's): ``timestamp`` (ISO 8601, rows
exactly one hour apart), any numeric covariate columns, and the ``pm25`` target; an empty cell
(or ``NA``, ``null``...) is a missing value. A :class:`~._table.Layout` maps other files: other
column names, a series-id column (a long table of several series), chosen covariates, a
timestamp format, the delimiter; CSV and Parquet (:mod:`._table`). Timestamps with a UTC offset
are normalised to UTC; rows out of time order are put in order. :func:`read_file` reads the
series of a file, :func:`read_series` the one series of a file, :func:`parse_series` the bytes
of one CSV; they raise :class:`ValueError` naming the file, the line and the problem. The
series store, ``chronoserve forecast`` and ``chronoserve models train`` all read through here.

Only numpy and the standard library: the HTTP server reads its series at start-up.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ._table import Layout, Table, decode, parse_csv, read_table

FloatArray = npt.NDArray[np.float32]

#: The target column every CSV must have; every other column but ``timestamp`` is a covariate.
TARGET = "pm25"
#: The name of the timestamp column (naive local hours, ISO 8601).
TIMESTAMP = "timestamp"
#: The series store's frequency: one row per hour.
FREQ = "h"
#: The layout of the embedded series and of files by default: ``timestamp``, covariates, ``pm25``.
DEFAULT_LAYOUT = Layout(timestamp="timestamp", target="pm25")

HOUR = timedelta(hours=1)
_MISSING = frozenset({"", "NA", "N/A", "na", "n/a", "null", "NULL"})


def iso(t: datetime) -> str:
    return t.isoformat()


@dataclass(frozen=True)
class SeriesInfo:
    """What ``GET /series`` shows about one named series."""

    id: str
    start: datetime
    """The first timestamp (naive: local time as written, or UTC where the file gave offsets)."""
    end: datetime
    """The last timestamp: a default forecast starts one step later."""
    freq: str
    """``"h"`` (one row per hour: every series of the store); ``15min``, ``1d``, ... elsewhere."""
    rows: int
    target: str
    """The target column's name (``pm25`` for the embedded series)."""
    covariates: tuple[str, ...]
    """The other numeric columns, in file order."""
    missing: dict[str, float]
    """Fraction of empty cells per column (covariates and target)."""
    source: str
    """The file path, or a description of the embedded data set."""
    lower_bound: float | None = None
    """The least value the target can take (0: it cannot be negative): forecasts from this series
    are clipped to it unless a request says otherwise. None: no bound."""
    ignored: tuple[str, ...] = ()
    """Columns left out: text, where the covariates were not named."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (timestamps in ISO 8601)."""
        return {
            "id": self.id,
            "start": iso(self.start),
            "end": iso(self.end),
            "freq": self.freq,
            "rows": self.rows,
            "target": self.target,
            "covariates": list(self.covariates),
            "missing": dict(self.missing),
            "source": self.source,
            "lower_bound": self.lower_bound,
            "ignored_columns": list(self.ignored),
        }


@dataclass(frozen=True, eq=False)
class Series:
    """One CSV, read: every column as a read-only float32 array, one value per hour from ``start``
    (NaN for a missing value)."""

    info: SeriesInfo
    target: FloatArray
    covariates: dict[str, FloatArray]
    """By column name, in file order."""

    @property
    def start(self) -> datetime:
        return self.info.start

    @property
    def rows(self) -> int:
        return self.info.rows


def read_series(
    path: str | os.PathLike[str],
    series_id: str | None = None,
    *,
    source: str | None = None,
    layout: Layout = DEFAULT_LAYOUT,
) -> Series:
    """Read the one series in the file at ``path`` (CSV or Parquet, mapped by ``layout``); its id is
    ``series_id`` (default: the file stem), its source ``source`` (default: the resolved path).
    Raises :class:`ValueError` naming the file."""
    p = Path(path)
    found = read_file(p, layout, source=source)
    if len(found) != 1:
        raise ValueError(f"{p}: {len(found)} series (by {layout.id!r}); expected one")
    return found[0] if series_id is None else _renamed(found[0], series_id)


def read_file(
    path: str | os.PathLike[str], layout: Layout = DEFAULT_LAYOUT, *, source: str | None = None, hourly: bool = True
) -> list[Series]:
    """Every series in the file at ``path``: one (named after the file), or one per value of the
    ``layout.id`` column. ``hourly``: rows must be one hour apart (the series store's rule);
    otherwise any constant step. Raises :class:`ValueError` naming the file, the line and the problem."""
    p = Path(path)
    table = read_table(p, layout)
    return _series_of(table, layout, p.stem, str(p), str(p.resolve()) if source is None else source, hourly)


def parse_series(data: bytes, series_id: str, where: str, source: str) -> Series:
    """Parse the bytes of one CSV of the default layout (UTF-8, a BOM allowed). ``where`` names the
    file in error messages."""
    (series,) = _series_of(parse_csv(decode(where, data), where, ","), DEFAULT_LAYOUT, series_id, where, source, True)
    return series


def _renamed(series: Series, series_id: str) -> Series:
    return replace(series, info=replace(series.info, id=series_id))


def _parse_timestamps(cells: Sequence[str], where: str, lines: Sequence[int], fmt: str | None) -> list[datetime]:
    """The timestamps, naive: those with a UTC offset normalised to UTC (all or none may have one)."""
    stamps: list[datetime] = []
    for i, c in enumerate(cells):
        text = c.strip()
        try:
            if fmt is not None:
                t = datetime.strptime(text, fmt)
            else:
                t = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
        except ValueError:
            if fmt is not None:
                expected = f"the format {fmt!r}"
            else:
                expected = "ISO 8601, e.g. 2016-07-01 00:00:00 or 2016-07-01T00:00Z"
                if "/" in text or "." in text.split(" ")[0]:
                    expected += "; for day-first or other dates give --timestamp-format, e.g. '%d/%m/%Y %H:%M'"
            raise ValueError(f"{where}: line {lines[i]}: cannot parse timestamp {c!r} (expected {expected})") from None
        stamps.append(t)
    aware = [t.tzinfo is not None for t in stamps]
    if any(aware) and not all(aware):
        i = aware.index(not aware[0])
        raise ValueError(
            f"{where}: line {lines[i]}: timestamp {cells[i]!r} "
            f"{'has' if aware[i] else 'has no'} UTC offset, unlike line {lines[0]}: give every one or none"
        )
    if aware and aware[0]:
        stamps = [t.astimezone(timezone.utc).replace(tzinfo=None) for t in stamps]
    return stamps


def _check_steps(
    stamps: list[datetime], cells: Sequence[str], where: str, lines: Sequence[int], hourly: bool
) -> timedelta:
    """The series' step (one hour, or with ``hourly`` False any constant step); raises naming the line."""
    step = HOUR if hourly or len(stamps) < 2 else stamps[1] - stamps[0]
    t0 = stamps[0]
    if hourly and (t0.minute or t0.second or t0.microsecond):
        raise ValueError(f"{where}: line {lines[0]}: timestamp {cells[0]!r} is not on the hour")
    for i in range(1, len(stamps)):
        gap = stamps[i] - stamps[i - 1]
        if gap != step:
            if gap <= timedelta(0):
                problem = "timestamps must increase (duplicate or out of order)"
            else:
                every = "one hour" if hourly else f"{step} (the first step)"
                problem = (
                    f"a step of {gap} after {cells[i - 1]!r}; rows must be exactly {every} apart "
                    "(keep a row with empty cells for a time without readings)"
                )
            raise ValueError(f"{where}: line {lines[i]}: timestamp {cells[i]!r}: {problem}")
    return step


def _parse_values(cells: Sequence[str], column: str, where: str, lines: Sequence[int]) -> FloatArray:
    values = _numbers(cells)
    if values is None:
        for i, c in enumerate(cells):
            s = c.strip()
            if s in _MISSING:
                continue
            try:
                float(s)
            except ValueError:
                raise ValueError(
                    f"{where}: line {lines[i]}: column {column!r}: {c!r} is not a number "
                    "(leave the cell empty for a missing value)"
                ) from None
        raise AssertionError("unreachable: a cell failed to parse")  # pragma: no cover
    bad = np.flatnonzero(np.isinf(values))
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"{where}: line {lines[i]}: column {column!r}: {cells[i]!r} is not finite in float32 "
            "(leave the cell empty for a missing value)"
        )
    values.flags.writeable = False
    return values


def _numbers(cells: Sequence[str]) -> FloatArray | None:
    """The cells as float32 (NaN for a missing one), or None if one is not a number."""
    out = np.array(cells, dtype=object)
    out[out == ""] = "nan"
    try:
        return np.asarray(out.astype(np.float64), dtype=np.float32)
    except ValueError:
        pass
    parsed = np.empty(len(cells), dtype=np.float64)
    for i, c in enumerate(cells):
        s = c.strip()
        if s in _MISSING:
            parsed[i] = math.nan
            continue
        try:
            parsed[i] = float(s)
        except ValueError:
            return None
    return parsed.astype(np.float32)


def _text(cells: Sequence[str]) -> bool:
    """True if no cell holds a number (and one holds something): a column of text."""
    seen = False
    for c in cells:
        s = c.strip()
        if s in _MISSING:
            continue
        try:
            float(s)
        except ValueError:
            seen = True
            continue
        return False
    return seen


def _column(lower: list[str], name: str, what: str, option: str, header: list[str], where: str) -> int:
    if name.lower() not in lower:
        raise ValueError(f"{where}: no {what} column {name!r} (the header is {header}; name it with {option})")
    return lower.index(name.lower())


def _series_of(table: Table, layout: Layout, stem: str, where: str, source: str, hourly: bool) -> list[Series]:
    """The series of a table, mapped by ``layout``."""
    header = table.header
    if any(not name for name in header):
        raise ValueError(f"{where}: the header has an empty column name: {header}")
    lower = [name.lower() for name in header]
    dupes = sorted({name for name in header if lower.count(name.lower()) > 1})
    if dupes:
        raise ValueError(f"{where}: duplicate column names in the header: {dupes}")
    ts_col = _column(lower, layout.timestamp, "timestamp", "--timestamp-column", header, where)
    target_col = _column(lower, layout.target, "target", "--target-column", header, where)
    id_col = None if layout.id is None else _column(lower, layout.id, "series id", "--id-column", header, where)
    if layout.covariates is None:
        named = None
        covariate_cols = [j for j in range(len(header)) if j not in (ts_col, target_col, id_col)]
    else:
        named = [_column(lower, c, "covariate", "--covariates", header, where) for c in layout.covariates]
        covariate_cols = named
    if not table.rows:
        raise ValueError(f"{where}: no data rows after the header")
    lines = list(range(table.first_line, table.first_line + len(table.rows)))
    groups: dict[str, list[int]] = {}
    if id_col is None:
        groups[stem] = list(range(len(table.rows)))
    else:
        for i, row in enumerate(table.rows):
            key = row[id_col].strip()
            if not key:
                raise ValueError(f"{where}: line {lines[i]}: an empty series id in {header[id_col]!r}")
            groups.setdefault(key, []).append(i)
    out = []
    for series_id, members in groups.items():
        rows = [table.rows[i] for i in members]
        at = [lines[i] for i in members]
        name = where if id_col is None else f"{where} [{header[id_col]}={series_id}]"
        out.append(
            _one_series(
                rows,
                at,
                header,
                ts_col,
                target_col,
                covariate_cols,
                named is not None,
                layout,
                series_id,
                name,
                source,
                hourly,
            )
        )
    return out


def _one_series(
    rows: list[list[str]],
    lines: list[int],
    header: list[str],
    ts_col: int,
    target_col: int,
    covariate_cols: list[int],
    strict: bool,
    layout: Layout,
    series_id: str,
    where: str,
    source: str,
    hourly: bool,
) -> Series:
    columns = list(zip(*rows, strict=True))
    stamps = _parse_timestamps(columns[ts_col], where, lines, layout.timestamp_format)
    order = sorted(range(len(stamps)), key=stamps.__getitem__)
    if order != list(range(len(stamps))):  # rows out of order: taken in time order
        stamps = [stamps[i] for i in order]
        lines = [lines[i] for i in order]
        columns = [tuple(col[i] for i in order) for col in columns]
    cells = [str(c) for c in columns[ts_col]]
    step = _check_steps(stamps, cells, where, lines, hourly)
    target = _parse_values(columns[target_col], header[target_col], where, lines)
    covariates: dict[str, FloatArray] = {}
    ignored: list[str] = []
    for j in covariate_cols:
        if strict:
            covariates[header[j]] = _parse_values(columns[j], header[j], where, lines)
            continue
        if _text(columns[j]):  # a column of text (a station's name, a wind direction): not a covariate
            ignored.append(header[j])
            continue
        covariates[header[j]] = _parse_values(columns[j], header[j], where, lines)
    n = len(stamps)
    missing = {name: float(np.count_nonzero(np.isnan(arr))) / n for name, arr in covariates.items()}
    missing[header[target_col]] = float(np.count_nonzero(np.isnan(target))) / n
    info = SeriesInfo(
        id=series_id,
        start=stamps[0],
        end=stamps[-1],
        freq=FREQ if step == HOUR else _freq(step),
        rows=n,
        target=header[target_col],
        covariates=tuple(covariates),
        missing=missing,
        source=source,
        lower_bound=layout.lower_bound,
        ignored=tuple(ignored),
    )
    return Series(info=info, target=target, covariates=covariates)


def _freq(step: timedelta) -> str:
    """A step as a short string: ``15min``, ``2h``, ``1d``, else seconds."""
    seconds = int(step.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}" if seconds != size or unit != "h" else FREQ
    return f"{seconds}s"
