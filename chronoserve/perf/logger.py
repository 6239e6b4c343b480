"""Per-batch performance rows: :class:`CsvMetricsLogger`.

The seed study's CSV logger, done once for every mode that measures (``eval --perf``,
``replay --system-stats``, ``edge-bench``): one row per batch with the time it finished,
what ran (series, model, context, horizon, stride) and how long it took. Rows are kept in
memory (``.rows``) for summaries and plots, and written and flushed one at a time, so a run
that is killed keeps every row it finished.
"""

from __future__ import annotations

import csv
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

#: The batch columns, after ``time_s`` and before the logger's ``extra_fields``.
BATCH_FIELDS: tuple[str, ...] = (
    "series",
    "model",
    "context_hours",
    "horizon_hours",
    "latency_s",
    "batch_size",
    "stride",
)


def csv_cell(value: Any) -> Any:
    """What a CSV cell holds for ``value``: empty for None (unavailable), never ``0`` or ``None``."""
    return "" if value is None else value


class CsvMetricsLogger:
    """Thread-safe per-batch rows: ``time_s``, then :data:`BATCH_FIELDS`, then ``extra_fields``.

    ``time_s`` is monotonic seconds since ``t0`` (default: when the logger was created),
    unless :meth:`log` is given one. Fields not passed to :meth:`log` are left empty (None in
    ``.rows``); a name that is not a column raises :class:`ValueError` naming it, so a typo
    never becomes a silently missing column. ``path=None`` keeps the rows in memory only.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None,
        extra_fields: Sequence[str] = (),
        *,
        t0: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        extra = tuple(extra_fields)
        clashes = sorted(set(extra) & {"time_s", *BATCH_FIELDS})
        if clashes:
            raise ValueError(f"extra_fields: {clashes} are already columns")
        if len(set(extra)) != len(extra):
            raise ValueError(f"extra_fields: duplicate names in {list(extra)}")
        self.fields: tuple[str, ...] = ("time_s", *BATCH_FIELDS, *extra)
        self.path = Path(path) if path is not None else None
        self._clock = clock
        self.t0 = clock() if t0 is None else t0
        self.rows: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._handle: IO[str] | None = None
        self._writer: csv.DictWriter[str] | None = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = self.path.open("w", newline="", encoding="utf-8")
            self._writer = csv.DictWriter(self._handle, fieldnames=self.fields)
            self._writer.writeheader()
            self._handle.flush()

    def log(self, *, time_s: float | None = None, **values: Any) -> dict[str, Any]:
        """Record one row and return it. Unknown field names raise :class:`ValueError`."""
        unknown = sorted(set(values) - set(self.fields))
        if unknown:
            raise ValueError(f"unknown field(s) {unknown}; the columns are {list(self.fields)}")
        row: dict[str, Any] = dict.fromkeys(self.fields)
        row.update(values)
        row["time_s"] = self._clock() - self.t0 if time_s is None else time_s
        with self._lock:
            self.rows.append(row)
            if self._writer is not None and self._handle is not None:
                self._writer.writerow({k: csv_cell(v) for k, v in row.items()})
                self._handle.flush()
        return row

    def close(self) -> None:
        """Close the file (idempotent); the rows stay in memory."""
        with self._lock:
            if self._handle is not None:
                self._handle.close()
                self._handle = None
                self._writer = None

    def __enter__(self) -> CsvMetricsLogger:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def read_rows(path: str | os.PathLike[str]) -> list[Mapping[str, str]]:
    """The rows of a CSV written by this package, as strings (empty cell: unavailable)."""
    with Path(path).open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))
