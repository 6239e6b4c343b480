"""Named series for the server: the embedded Beijing PM2.5 sites, or a directory of CSVs.

``SeriesStore.embedded()`` loads the 12 Beijing PM2.5 monitoring sites (hourly, 2016-07-01 to
2016-12-31) shipped in ``chronoserve/data/pm25`` (CC BY 4.0, see ``ATTRIBUTION.md`` there);
``SeriesStore.from_dir(path)`` loads every ``*.csv`` of the same layout in ``path``:
``timestamp`` (naive local hours, one row per hour), any numeric covariate columns, and the
``pm25`` target; empty cells are missing values. ``SeriesStore.window`` cuts the context and
the horizon for one forecast.

Importing this module is cheap: numpy and the standard library only (no torch, no pandas).
"""

from __future__ import annotations

from ._store import FREQ, MAX_HORIZON, TARGET, TIMESTAMP, SeriesInfo, SeriesStore, Window

__all__ = ["FREQ", "MAX_HORIZON", "TARGET", "TIMESTAMP", "SeriesInfo", "SeriesStore", "Window"]
