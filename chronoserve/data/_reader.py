"""The one reader of the series CSV format: a header, then one row per hour.

The layout: ``timestamp`` (naive local hours, ISO 8601, rows exactly one hour apart), any
numeric covariate columns, and the ``pm25`` target; an empty cell (or ``NA``, ``null``...) is a
missing value. :func:`read_series` reads one file, :func:`parse_series` the bytes of one; both
return a :class:`Series`, or raise :class:`ValueError` naming the file, the line and the problem.
The series store and ``chronoserve models train`` both read CSVs through here.

Only numpy and the standard library: the HTTP server reads its series at start-up.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]

#: The target column every CSV must have; every other column but ``timestamp`` is a covariate.
TARGET = "pm25"
#: The name of the timestamp column (naive local hours, ISO 8601).
TIMESTAMP = "timestamp"
#: The only frequency supported: one row per hour.
FREQ = "h"

HOUR = timedelta(hours=1)
_MISSING = frozenset({"", "NA", "N/A", "na", "n/a", "null", "NULL"})


def iso(t: datetime) -> str:
    return t.isoformat()


@dataclass(frozen=True)
class SeriesInfo:
    """What ``GET /series`` shows about one named series."""

    id: str
    start: datetime
    """The first timestamp (naive local time)."""
    end: datetime
    """The last timestamp (naive local time): a default forecast starts one hour later."""
    freq: str
    """Always ``"h"``."""
    rows: int
    target: str
    """Always ``"pm25"``."""
    covariates: tuple[str, ...]
    """The other numeric columns, in file order."""
    missing: dict[str, float]
    """Fraction of empty cells per column (covariates and target)."""
    source: str
    """The file path, or a description of the embedded data set."""
    lower_bound: float | None = None
    """The least value the target can take (0: it cannot be negative): forecasts from this series
    are clipped to it unless a request says otherwise. None: no bound."""

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


def read_series(path: str | os.PathLike[str], series_id: str | None = None, *, source: str | None = None) -> Series:
    """Read the CSV at ``path``; its id is ``series_id`` (default: the file stem), its source
    ``source`` (default: the resolved path). Raises :class:`ValueError` naming the file."""
    p = Path(path)
    where = str(p)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ValueError(f"{where}: cannot read ({exc.strerror or exc})") from None
    return parse_series(
        data, p.stem if series_id is None else series_id, where, str(p.resolve()) if source is None else source
    )


def parse_series(data: bytes, series_id: str, where: str, source: str) -> Series:
    """Parse the bytes of one CSV (UTF-8, a BOM allowed). ``where`` names the file in error messages."""
    return _parse_csv(_decode(where, data), series_id, where, source)


def _decode(where: str, data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{where}: not UTF-8 text ({exc})") from None


def _parse_timestamps(cells: Sequence[str], where: str, lines: Sequence[int]) -> list[datetime]:
    try:
        stamps = [datetime.fromisoformat(c) for c in cells]
    except ValueError:
        stamps = []
        for i, c in enumerate(cells):
            try:
                stamps.append(datetime.fromisoformat(c.strip()))
            except ValueError:
                raise ValueError(
                    f"{where}: line {lines[i]}: cannot parse timestamp {c!r} "
                    "(expected ISO 8601 local time, e.g. 2016-07-01 00:00:00)"
                ) from None
    for i, t in enumerate(stamps):
        if t.tzinfo is not None:
            raise ValueError(
                f"{where}: line {lines[i]}: timestamp {cells[i]!r} has a UTC offset; "
                "timestamps must be naive local hours"
            )
    t0 = stamps[0]
    if t0.minute or t0.second or t0.microsecond:
        raise ValueError(f"{where}: line {lines[0]}: timestamp {cells[0]!r} is not on the hour")
    for i in range(1, len(stamps)):
        step = stamps[i] - stamps[i - 1]
        if step != HOUR:
            if step <= timedelta(0):
                problem = "timestamps must increase (duplicate or out of order)"
            else:
                problem = (
                    f"a step of {step} after {cells[i - 1]!r}; rows must be exactly one hour apart "
                    "(keep a row with empty cells for an hour without readings)"
                )
            raise ValueError(f"{where}: line {lines[i]}: timestamp {cells[i]!r}: {problem}")
    return stamps


def _parse_values(cells: Sequence[str], column: str, where: str, lines: Sequence[int]) -> FloatArray:
    out = np.array(cells, dtype=object)
    out[out == ""] = "nan"
    try:
        out = out.astype(np.float64)
    except ValueError:
        out = np.empty(len(cells), dtype=np.float64)
        for i, c in enumerate(cells):
            s = c.strip()
            if s in _MISSING:
                out[i] = math.nan
                continue
            try:
                out[i] = float(s)
            except ValueError:
                raise ValueError(
                    f"{where}: line {lines[i]}: column {column!r}: {c!r} is not a number "
                    "(leave the cell empty for a missing value)"
                ) from None
    values = out.astype(np.float32)
    bad = np.flatnonzero(np.isinf(values))
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"{where}: line {lines[i]}: column {column!r}: {cells[i]!r} is not finite in float32 "
            "(leave the cell empty for a missing value)"
        )
    values.flags.writeable = False
    return values


def _parse_csv(text: str, series_id: str, where: str, source: str) -> Series:
    """Parse one CSV of the PM2.5 layout. ``where`` names the file in error messages."""
    lines_of_text = text.splitlines()
    if '"' in text or "\0" in text:
        try:
            table = list(csv.reader(lines_of_text))
        except csv.Error as exc:
            raise ValueError(f"{where}: not valid CSV ({exc})") from None
    else:  # no quoting: a plain split is what the csv module would do, twice as fast
        table = [line.split(",") if line else [] for line in lines_of_text]
    while table and not table[-1]:
        table.pop()  # trailing blank lines
    skip = 0
    while skip < len(table) and not table[skip]:
        skip += 1  # leading blank lines
    if skip == len(table):
        raise ValueError(f"{where}: the file is empty (expected a header: {TIMESTAMP},...,{TARGET})")
    header = [name.strip() for name in table[skip]]
    rows = table[skip + 1 :]
    first = skip + 2  # the line number of rows[0]
    lines = range(first, first + len(rows))
    if set(map(len, rows)) - {len(header)}:
        i = next(i for i, row in enumerate(rows) if len(row) != len(header))
        found = f"{len(rows[i])} fields" if rows[i] else "an empty line"
        raise ValueError(f"{where}: line {lines[i]}: {found}, the header has {len(header)} fields")
    if any(not name for name in header):
        raise ValueError(f"{where}: the header has an empty column name: {header}")
    lower = [name.lower() for name in header]
    dupes = sorted({name for name in header if lower.count(name.lower()) > 1})
    if dupes:
        raise ValueError(f"{where}: duplicate column names in the header: {dupes}")
    if TIMESTAMP not in lower:
        raise ValueError(f"{where}: no {TIMESTAMP!r} column (the header is {header})")
    if TARGET not in lower:
        raise ValueError(f"{where}: no {TARGET!r} target column (the header is {header})")
    if not rows:
        raise ValueError(f"{where}: no data rows after the header")
    ts_col, target_col = lower.index(TIMESTAMP), lower.index(TARGET)
    columns = list(zip(*rows, strict=True))
    stamps = _parse_timestamps(columns[ts_col], where, lines)
    values = {
        (TARGET if j == target_col else name): _parse_values(columns[j], name, where, lines)
        for j, name in enumerate(header)
        if j != ts_col
    }
    target = values.pop(TARGET)
    n = len(stamps)
    missing = {name: float(np.count_nonzero(np.isnan(arr))) / n for name, arr in values.items()}
    missing[TARGET] = float(np.count_nonzero(np.isnan(target))) / n
    info = SeriesInfo(
        id=series_id,
        start=stamps[0],
        end=stamps[-1],
        freq=FREQ,
        rows=n,
        target=TARGET,
        covariates=tuple(values),
        missing=missing,
        source=source,
    )
    return Series(info=info, target=target, covariates=values)
