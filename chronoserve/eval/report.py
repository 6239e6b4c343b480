"""The sweep's tables: per-window CSV, per-series summary, scores relative to seasonal naive.

The numbers come from :mod:`chronoserve.eval.aggregate`; this module lays them out. Files
written to ``OUT`` by :func:`write_report`:

- ``windows.csv``: one row per scored window and configuration (:data:`~chronoserve.eval.grid.WINDOW_FIELDS`).
- ``summary.csv``: one row per (series, model, context, horizon, covariates): the mean of each
  metric over the windows (NaN windows left out), and the windows generated, scored and
  skipped (all-NaN target or context).
- ``relative.csv``: per (model, context, horizon, covariates), and over every context and
  horizon at once, the geometric mean across series of the model's mean MASE (WQL) divided by
  seasonal naive's on the same windows (:func:`~chronoserve.eval.metrics.geometric_mean_relative`,
  fev-bench's aggregate with series as tasks).
- ``summary.md``: the settings, the relative table, mean RMSE against context and horizon, the
  best context for a 24 h horizon and the best horizon for a 10-day context per series and
  model, coverage; random-weight models marked everywhere.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from chronoserve._files import write_atomic
from chronoserve.data import SeriesStore
from chronoserve.eval.aggregate import relative_rows, summary_rows
from chronoserve.eval.grid import METRICS, WINDOW_FIELDS, SweepSettings
from chronoserve.eval.markdown import format_markdown
from chronoserve.eval.rundir import ConfigResult

SUMMARY_FIELDS: tuple[str, ...] = (
    "series",
    "model",
    "random_weights",
    "context_days",
    "horizon_hours",
    "covariates",
    "covariate_use",
    "windows",
    "scored",
    "skipped_target_nan",
    "skipped_context_nan",
    *METRICS,
    "mase_excluded",
)
RELATIVE_FIELDS: tuple[str, ...] = (
    "model",
    "random_weights",
    "context_days",
    "horizon_hours",
    "covariates",
    "covariate_use",
    "relative_mase",
    "relative_wql",
    "skill_mase",
    "skill_wql",
    "tasks",
    "excluded_tasks",
    "windows",
    "excluded_windows",
)


def _write_csv(path: Path, fields: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> Path:
    def write(tmp: Path) -> None:
        with tmp.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(fields), extrasaction="ignore")
            writer.writeheader()
            for row in rows:
                writer.writerow({k: _cell(row.get(k)) for k in fields})

    write_atomic(path, write)
    return path


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return value


def write_report(
    out: Path, settings: SweepSettings, results: Sequence[ConfigResult], *, store: SeriesStore | None = None
) -> list[Path]:
    """Write ``windows.csv``, ``summary.csv``, ``relative.csv`` and ``summary.md`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    summary = summary_rows(results)
    relative = relative_rows(results)
    files = [
        _write_csv(out / "windows.csv", WINDOW_FIELDS, (row for r in results for row in r.rows)),
        _write_csv(out / "summary.csv", SUMMARY_FIELDS, summary),
        _write_csv(out / "relative.csv", RELATIVE_FIELDS, relative),
    ]
    md = out / "summary.md"
    md.write_text(format_markdown(settings, results, relative), encoding="utf-8")
    files.append(md)
    return files
