"""Named series for the server: the embedded Beijing PM2.5 sites, or a directory of CSVs.

``SeriesStore.embedded()`` loads the 12 Beijing PM2.5 monitoring sites (hourly, 2016-07-01 to
2016-12-31) shipped in ``chronoserve/data/pm25`` (CC BY 4.0, see ``ATTRIBUTION.md`` there);
``SeriesStore.from_dir(path, layout)`` loads a file, or every ``*.csv`` and ``*.parquet`` in a
directory: by default ``timestamp`` (one row per hour), any numeric covariate columns, and the
``pm25`` target, empty cells for missing values; a :class:`Layout` maps other columns, a
series-id column, timestamp formats and CSV dialects. ``SeriesStore.window`` cuts the context and
the horizon for one forecast. ``read_series(path)`` reads one such CSV on its own (the one
reader of the format: the store and ``chronoserve models train`` both use it).

- :mod:`chronoserve.data._table`: a file as a table (CSV dialects sniffed, Parquet), :class:`Layout`;
- :mod:`chronoserve.data._reader`: the series of a table (:class:`Series`, :class:`SeriesInfo`);
- :mod:`chronoserve.data._window`: :class:`Window` and the checks of one forecast's window;
- :mod:`chronoserve.data._store`: :class:`SeriesStore`.

Importing this module is cheap: numpy and the standard library only (no torch, no pandas).
"""

from __future__ import annotations

from ._reader import DEFAULT_LAYOUT, FREQ, TARGET, TIMESTAMP, Series, SeriesInfo, read_file, read_series
from ._store import SeriesStore
from ._table import Layout
from ._window import MAX_HORIZON, Window

__all__ = [
    "DEFAULT_LAYOUT",
    "FREQ",
    "Layout",
    "MAX_HORIZON",
    "TARGET",
    "TIMESTAMP",
    "Series",
    "SeriesInfo",
    "SeriesStore",
    "Window",
    "read_file",
    "read_series",
]
