"""The series store: named hourly series, loaded and validated up front, looked up by id.

:class:`SeriesStore` holds the series (read by :mod:`chronoserve.data._reader`), finds one by
id (case-insensitively when that is unambiguous) and cuts forecast windows from it
(:func:`chronoserve.data._window.cut_window`). Errors name the store's own parameters
(``series``, ``horizon``, ``context``, ``end``, ``covariates``, ``known_future``, ``column``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable
from datetime import datetime
from importlib import resources
from pathlib import Path

from ..errors import InvalidRequest
from ._reader import DEFAULT_LAYOUT, TARGET, FloatArray, Series, SeriesInfo, parse_series, read_file
from ._table import PARQUET_SUFFIXES, Layout
from ._window import Window, cut_window

_EMBEDDED_PACKAGE = "chronoserve.data"
_EMBEDDED_DIR = "pm25"
_EMBEDDED_SOURCE = (
    "chronoserve (embedded): Beijing PM2.5, site {id}, 2016-07-01 to 2016-12-31 hourly; "
    "UCI Beijing Multi-Site Air-Quality Data, CC BY 4.0 (Zhang et al., 2017)"
)


class SeriesStore:
    """An immutable set of named hourly series, loaded and validated up front.

    Build one with :meth:`embedded` (the 12 Beijing PM2.5 sites shipped in the package) or
    :meth:`from_dir` (every ``*.csv`` of the same layout in a directory).
    """

    def __init__(self, series: Iterable[Series], *, attribution: str | None = None) -> None:
        self._series: dict[str, Series] = {}
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
        """The 12 Beijing PM2.5 sites, July to December 2016, shipped inside the package.

        Parsed once per process: the package's files do not change and the series are read-only,
        so every store shares them.
        """
        series, attribution = _read_embedded()
        return cls(series, attribution=attribution)

    @classmethod
    def from_dir(cls, path: str | Path, layout: Layout = DEFAULT_LAYOUT) -> SeriesStore:
        """The series of ``path``: a file (CSV or Parquet), or every such file in a directory (not
        recursive; hidden files skipped), mapped by ``layout``; a series' id is its file's stem,
        or its value of ``layout.id``.

        Raises :class:`ValueError` naming the file and the problem when one does not fit the
        layout (one row per hour; see :mod:`chronoserve.data._reader`).
        """
        where = Path(path)
        if where.is_file():
            files = [where]
        elif where.is_dir():
            files = sorted(
                p
                for p in where.iterdir()
                if p.suffix.lower() in (".csv", *PARQUET_SUFFIXES) and not p.name.startswith(".") and p.is_file()
            )
            if not files:
                raise ValueError(f"{where}: no *.csv or *.parquet files")
        else:
            raise ValueError(f"{where}: no such file or directory")
        return cls(series for p in files for series in read_file(p, layout))

    def __len__(self) -> int:
        return len(self._series)

    def __contains__(self, series_id: object) -> bool:
        return isinstance(series_id, str) and self._lookup(series_id) is not None

    def ids(self) -> list[str]:
        """The series ids, sorted."""
        return list(self._series)

    def info(self, series_id: str) -> SeriesInfo:
        """Raises :class:`InvalidRequest` (field ``series``) for an unknown id."""
        return self._get(series_id).info

    def values(self, series_id: str, column: str = TARGET) -> FloatArray:
        """A read-only view of one column of a series, every hour from its start (NaN for gaps)."""
        s = self._get(series_id)
        if column in (TARGET, s.info.target):
            array = s.target
        elif column in s.covariates:
            array = s.covariates[column]
        else:
            known = ", ".join([s.info.target, *s.covariates])
            raise InvalidRequest("column", f"{s.info.id!r} has no column {column!r} (columns: {known})")
        view: FloatArray = array.view()
        view.flags.writeable = False
        return view

    def infos(self) -> list[SeriesInfo]:
        return [s.info for s in self._series.values()]

    def _lookup(self, series_id: str) -> Series | None:
        s = self._series.get(series_id)
        if s is None:
            sid = self._folded.get(series_id.casefold())
            s = self._series[sid] if sid is not None else None
        return s

    def _get(self, series_id: object) -> Series:
        if not isinstance(series_id, str):
            raise InvalidRequest("series", f"must be a series id (a string), got {series_id!r}")
        s = self._lookup(series_id)
        if s is None:
            import difflib  # only on this error path: keep the module's import cheap

            ids = list(self._series)
            close = difflib.get_close_matches(series_id.casefold(), ids, n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            known = ", ".join(ids[:6]) + (f", ... ({len(ids)} in all)" if len(ids) > 6 else "")
            raise InvalidRequest("series", f"unknown series {series_id!r}{hint} (known: {known}; see GET /series)")
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

        Raises :class:`InvalidRequest` naming the parameter at fault: ``series``, ``horizon``,
        ``end``, ``context``, ``covariates`` (a series without covariate columns),
        ``known_future``.
        """
        return cut_window(
            self._get(series_id),
            horizon=horizon,
            context=context,
            end=end,
            covariates=covariates,
            known_future=known_future,
            max_context=max_context,
        )


@functools.cache
def _read_embedded() -> tuple[tuple[Series, ...], str | None]:
    root = resources.files(_EMBEDDED_PACKAGE).joinpath(_EMBEDDED_DIR)
    series = []
    attribution: str | None = None
    for entry in root.iterdir():
        if entry.name == "ATTRIBUTION.md":
            attribution = entry.read_text(encoding="utf-8")
        elif entry.name.endswith(".csv") and entry.is_file():
            sid = entry.name[: -len(".csv")]
            where = f"{_EMBEDDED_PACKAGE}/{_EMBEDDED_DIR}/{entry.name}"
            read = parse_series(entry.read_bytes(), sid, where, _EMBEDDED_SOURCE.format(id=sid))
            # PM2.5 is a concentration: a forecast below 0 is clipped to 0 unless a request says otherwise.
            series.append(dataclasses.replace(read, info=dataclasses.replace(read.info, lower_bound=0.0)))
    if not series:
        raise ValueError(f"{_EMBEDDED_PACKAGE}/{_EMBEDDED_DIR}: no embedded CSV files (broken installation?)")
    return tuple(series), attribution
