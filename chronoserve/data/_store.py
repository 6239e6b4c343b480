"""Named hourly series read from CSV files, and the forecast windows cut from them.

Only numpy and the standard library: the HTTP server loads a store at start-up, so this
module must import fast and never pull in torch or pandas.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import InvalidRequest
from ..limits import MAX_HORIZON as LIMITS_MAX_HORIZON

FloatArray = npt.NDArray[np.float32]

#: The target column every CSV must have; every other column but ``timestamp`` is a covariate.
TARGET = "pm25"
#: The name of the timestamp column (naive local hours, ISO 8601).
TIMESTAMP = "timestamp"
#: The only frequency supported: one row per hour.
FREQ = "h"
#: A ceiling on ``horizon`` (:data:`chronoserve.limits.MAX_HORIZON`) so that a silly request
#: cannot allocate millions of values; the model's own limit (checked later) is far lower.
MAX_HORIZON = LIMITS_MAX_HORIZON

_HOUR = timedelta(hours=1)
_MISSING = frozenset({"", "NA", "N/A", "na", "n/a", "null", "NULL"})
_EMBEDDED_PACKAGE = "chronoserve.data"
_EMBEDDED_DIR = "pm25"
_EMBEDDED_SOURCE = (
    "chronoserve (embedded): Beijing PM2.5, site {id}, 2016-07-01 to 2016-12-31 hourly; "
    "UCI Beijing Multi-Site Air-Quality Data, CC BY 4.0 (Zhang et al., 2017)"
)


def _iso(t: datetime) -> str:
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

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (timestamps in ISO 8601)."""
        return {
            "id": self.id,
            "start": _iso(self.start),
            "end": _iso(self.end),
            "freq": self.freq,
            "rows": self.rows,
            "target": self.target,
            "covariates": list(self.covariates),
            "missing": dict(self.missing),
            "source": self.source,
        }


@dataclass(frozen=True, eq=False)
class Window:
    """What a forecast from a named series needs: the context, and what is known of the horizon.

    Every array is a fresh float32 copy, so callers may modify it.
    """

    series: str
    target: FloatArray
    """The context, oldest first; NaN marks a missing reading."""
    past_covariates: dict[str, FloatArray] | None
    """Each covariate over the context (same length as ``target``), when covariates were asked for."""
    future_covariates: dict[str, FloatArray] | None
    """Each covariate's real values over the horizon, only when ``known_future`` was asked for."""
    context_start: datetime
    context_end: datetime
    """First and last timestamp of the context; the forecast starts one hour after ``context_end``."""
    horizon: int
    actual: FloatArray | None
    """The real target over the horizon (NaN where missing or past the end of the data); ``None`` when
    no hour of the horizon is in the data."""

    @property
    def forecast_start(self) -> datetime:
        """The first forecast hour."""
        return self.context_end + _HOUR

    @property
    def forecast_timestamps(self) -> list[datetime]:
        """Every forecast hour (built on demand: a server builds them only for the answer it gives)."""
        start = self.forecast_start
        return [start + i * _HOUR for i in range(self.horizon)]

    @property
    def context_length(self) -> int:
        return int(self.target.shape[0])


@dataclass(frozen=True, eq=False)
class _Series:
    info: SeriesInfo
    target: FloatArray
    covariates: dict[str, FloatArray]

    @property
    def start(self) -> datetime:
        return self.info.start

    @property
    def rows(self) -> int:
        return self.info.rows


# ---------------------------------------------------------------------------------------------
# Loading


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
        if step != _HOUR:
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


def _parse_csv(text: str, series_id: str, where: str, source: str) -> _Series:
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
    return _Series(info=info, target=target, covariates=values)


def _read_text(where: str, data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{where}: not UTF-8 text ({exc})") from None


# ---------------------------------------------------------------------------------------------
# Request checks


def _check_int(field: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InvalidRequest(field, f"must be an integer, got {value!r}")
    if value < minimum:
        raise InvalidRequest(field, f"must be at least {minimum}, got {value}")
    return int(value)


def _check_end(end: object) -> datetime:
    if isinstance(end, str):
        try:
            end = datetime.fromisoformat(end.strip())
        except ValueError:
            raise InvalidRequest("end", f"{end!r} is not an ISO 8601 timestamp (e.g. 2016-12-01T00:00)") from None
    if not isinstance(end, datetime):
        raise InvalidRequest("end", f"must be a timestamp, got {end!r}")
    if end.tzinfo is not None:
        raise InvalidRequest("end", f"{_iso(end)} has a time zone; give naive local time, like the data's timestamps")
    if end.minute or end.second or end.microsecond:
        raise InvalidRequest("end", f"{_iso(end)} is not on the hour (the data is hourly)")
    return end


# ---------------------------------------------------------------------------------------------
# The store


class SeriesStore:
    """An immutable set of named hourly series, loaded and validated up front.

    Build one with :meth:`embedded` (the 12 Beijing PM2.5 sites shipped in the package) or
    :meth:`from_dir` (every ``*.csv`` of the same layout in a directory).
    """

    def __init__(self, series: Iterable[_Series], *, attribution: str | None = None) -> None:
        self._series: dict[str, _Series] = {}
        for s in sorted(series, key=lambda s: s.info.id):
            if s.info.id in self._series:
                raise ValueError(f"duplicate series id {s.info.id!r}")
            self._series[s.info.id] = s
        folded: dict[str, list[str]] = {}
        for sid in self._series:
            folded.setdefault(sid.casefold(), []).append(sid)
        self._folded = {key: ids[0] for key, ids in folded.items() if len(ids) == 1}
        self.attribution = attribution
        """The data's attribution text (ATTRIBUTION.md) for the embedded set, else ``None``."""

    @classmethod
    def embedded(cls) -> SeriesStore:
        """The 12 Beijing PM2.5 sites, July to December 2016, shipped inside the package."""
        root = resources.files(_EMBEDDED_PACKAGE).joinpath(_EMBEDDED_DIR)
        series = []
        attribution: str | None = None
        for entry in root.iterdir():
            if entry.name == "ATTRIBUTION.md":
                attribution = entry.read_text(encoding="utf-8")
            elif entry.name.endswith(".csv") and entry.is_file():
                sid = entry.name[: -len(".csv")]
                where = f"{_EMBEDDED_PACKAGE}/{_EMBEDDED_DIR}/{entry.name}"
                text = _read_text(where, entry.read_bytes())
                series.append(_parse_csv(text, sid, where, _EMBEDDED_SOURCE.format(id=sid)))
        if not series:
            raise ValueError(f"{_EMBEDDED_PACKAGE}/{_EMBEDDED_DIR}: no embedded CSV files (broken installation?)")
        return cls(series, attribution=attribution)

    @classmethod
    def from_dir(cls, path: str | Path) -> SeriesStore:
        """Every ``*.csv`` file in ``path`` (not recursive; hidden files skipped); id = file stem.

        Raises :class:`ValueError` naming the file and the problem when one does not have the
        layout (``timestamp``, numeric covariates, ``pm25``; one row per hour).
        """
        directory = Path(path)
        if not directory.is_dir():
            raise ValueError(f"{directory}: not a directory")
        files = sorted(
            p for p in directory.iterdir() if p.suffix.lower() == ".csv" and not p.name.startswith(".") and p.is_file()
        )
        if not files:
            raise ValueError(f"{directory}: no *.csv files")
        series = []
        for p in files:
            where = str(p)
            try:
                data = p.read_bytes()
            except OSError as exc:
                raise ValueError(f"{where}: cannot read ({exc.strerror or exc})") from None
            series.append(_parse_csv(_read_text(where, data), p.stem, where, str(p.resolve())))
        return cls(series)

    def __len__(self) -> int:
        return len(self._series)

    def __contains__(self, series_id: object) -> bool:
        return isinstance(series_id, str) and self._lookup(series_id) is not None

    def ids(self) -> list[str]:
        """The series ids, sorted."""
        return list(self._series)

    def info(self, series_id: str) -> SeriesInfo:
        """Raises :class:`InvalidRequest` (field ``city``) for an unknown id."""
        return self._get(series_id).info

    def values(self, series_id: str, column: str = TARGET) -> FloatArray:
        """A read-only view of one column of a series, every hour from its start (NaN for gaps)."""
        s = self._get(series_id)
        if column == TARGET:
            array = s.target
        elif column in s.covariates:
            array = s.covariates[column]
        else:
            known = ", ".join([TARGET, *s.covariates])
            raise InvalidRequest("column", f"{s.info.id!r} has no column {column!r} (columns: {known})")
        view: FloatArray = array.view()
        view.flags.writeable = False
        return view

    def infos(self) -> list[SeriesInfo]:
        return [s.info for s in self._series.values()]

    def _lookup(self, series_id: str) -> _Series | None:
        s = self._series.get(series_id)
        if s is None:
            sid = self._folded.get(series_id.casefold())
            s = self._series[sid] if sid is not None else None
        return s

    def _get(self, series_id: object) -> _Series:
        if not isinstance(series_id, str):
            raise InvalidRequest("city", f"must be a series id (a string), got {series_id!r}")
        s = self._lookup(series_id)
        if s is None:
            import difflib  # only on this error path: keep the module's import cheap

            ids = list(self._series)
            close = difflib.get_close_matches(series_id.casefold(), ids, n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            known = ", ".join(ids[:6]) + (f", ... ({len(ids)} in all)" if len(ids) > 6 else "")
            raise InvalidRequest("city", f"unknown series {series_id!r}{hint} (known: {known}; see GET /series)")
        return s

    def window(
        self,
        series_id: str,
        *,
        horizon: int,
        context: int | None = None,
        end: datetime | str | None = None,
        covariates: bool = False,
        known_future: bool = False,
        max_context: int | None = None,
    ) -> Window:
        """Cut the context (and what is known of the horizon) for a forecast from ``series_id``.

        ``end`` is the first forecast hour, naive local time on the hour (a datetime or an ISO
        string; timezone-aware values are refused); by default the hour after the last row.
        The context is the ``context`` hours strictly before ``end``; by default all of them,
        capped at ``max_context`` when given (an explicit ``context`` above ``max_context`` is
        refused). ``covariates`` adds every covariate over the context as past covariates;
        ``known_future`` also adds their real values over the horizon as future covariates
        (the optimistic "known future" assumption), which needs the data to cover the horizon.

        Raises :class:`InvalidRequest` naming the HTTP field at fault: ``city``,
        ``horizon_hours``, ``end``, ``context_hours``, ``use_covariates`` (a series without covariate
        columns), ``known_future_covariates``.
        """
        s = self._get(series_id)
        h = _check_int("horizon_hours", horizon, 1)
        if h > MAX_HORIZON:
            raise InvalidRequest("horizon_hours", f"{h} exceeds the limit of {MAX_HORIZON} hours")
        if max_context is not None and (isinstance(max_context, bool) or max_context < 1):
            raise ValueError(f"max_context must be a positive integer, got {max_context!r}")
        if known_future and not covariates:
            raise InvalidRequest("known_future_covariates", "needs the covariates: set use_covariates too")

        last = s.info.end
        if end is None:
            e, end_dt = s.rows, last + _HOUR
        else:
            end_dt = _check_end(end)
            lo, hi = s.start + _HOUR, last + _HOUR
            if not lo <= end_dt <= hi:
                raise InvalidRequest(
                    "end",
                    f"{_iso(end_dt)} is outside what {s.info.id!r} allows: from {_iso(lo)} "
                    f"(one hour of history) to {_iso(hi)} (the hour after its last row)",
                )
            e = (end_dt - s.start) // _HOUR
        when = _iso(end_dt)

        if context is None:
            n = e if max_context is None else min(e, max_context)
        else:
            n = _check_int("context_hours", context, 1)
            if n > e:
                raise InvalidRequest(
                    "context_hours", f"{n} hours asked, but {s.info.id!r} has only {e} hours of history before {when}"
                )
            if max_context is not None and n > max_context:
                raise InvalidRequest("context_hours", f"{n} exceeds the maximum context of {max_context} hours")

        if covariates and not s.covariates:
            raise InvalidRequest("use_covariates", f"series {s.info.id!r} has no covariate columns")
        available = s.rows - e  # rows at or after ``end``
        if known_future and available < h:
            raise InvalidRequest(
                "known_future_covariates",
                f"the data of {s.info.id!r} ends at {_iso(last)}; a {h}-hour horizon from {when} needs "
                f"covariate values until {_iso(end_dt + (h - 1) * _HOUR)}",
            )

        target = s.target[e - n : e].copy()
        if not np.any(~np.isnan(target)):
            raise InvalidRequest("context_hours", f"no observed PM2.5 value in the {n} hours before {when}")

        past = {name: arr[e - n : e].copy() for name, arr in s.covariates.items()} if covariates else None
        future = {name: arr[e : e + h].copy() for name, arr in s.covariates.items()} if known_future else None
        actual: FloatArray | None = None
        if available > 0:
            actual = np.full(h, np.nan, dtype=np.float32)
            k = min(h, available)
            actual[:k] = s.target[e : e + k]
        return Window(
            series=s.info.id,
            target=target,
            past_covariates=past,
            future_covariates=future,
            context_start=end_dt - n * _HOUR,
            context_end=end_dt - _HOUR,
            horizon=h,
            actual=actual,
        )
