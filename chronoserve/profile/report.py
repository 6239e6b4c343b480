"""The cost table's files: the journal a run appends to, ``profile.csv``, ``profile.json``, the
summary on stdout, and :class:`Profile`, what a server or replay loads (``--profile``).

``profile.json`` holds the settings the rows were measured under, the machine, and the rows;
:meth:`Profile.seed` teaches a :class:`~chronoserve.costs.CostModel` every row's median batch
latency before the first live batch, and :meth:`Profile.figures` is what ``GET /models`` shows.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..costs import BatchFeatures, CostModel
from .runner import row_key

FORMAT = "chronoserve-profile/1"

#: ``profile.csv``'s columns, in order (one row per configuration).
COLUMNS: tuple[str, ...] = (
    "model",
    "family",
    "random_weights",
    "class",
    "context",
    "horizon",
    "covariates",
    "output_steps",
    "batch",
    "workers",
    "torch_threads",
    "backend",
    "batches_measured",
    "latency_p50_ms",
    "latency_p95_ms",
    "latency_p99_ms",
    "series_per_s",
    "cpu_s_per_1k",
    "peak_rss_mb",
    "energy_j_per_forecast",
    "gflop_per_batch",
    "rows_per_batch",
    "steps_per_batch",
    "slo_p95_ms",
    "max_wait_ms",
    "msrr_per_s",
    "msrr_p95_ms",
    "msrr_resolution_per_s",
    "seconds",
)


def read_journal(path: Path) -> list[dict[str, Any]]:
    """The rows a run appended so far; a last line cut short by an interruption is ignored."""
    if not path.is_file():
        return []
    rows: dict[tuple[Any, ...], dict[str, Any]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and all(k in row for k in ("model", "class", "batch", "workers", "torch_threads")):
            rows[row_key(row)] = row  # a row measured again replaces the earlier one
    return list(rows.values())


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for row in rows:
            writer.writerow([_cell(row.get(c)) for c in COLUMNS])
    return path


def write_json(path: Path, rows: Sequence[Mapping[str, Any]], meta: Mapping[str, Any]) -> Path:
    document = {"format": FORMAT, **meta, "rows": list(rows)}
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return path


def sort_rows(rows: Iterable[Mapping[str, Any]], classes: Sequence[str] = ()) -> list[dict[str, Any]]:
    order = {name: i for i, name in enumerate(classes)}
    return sorted(
        (dict(r) for r in rows),
        key=lambda r: (
            r["model"],
            order.get(r["class"], len(order)),
            r["class"],
            r["workers"],
            r["torch_threads"],
            r["batch"],
        ),
    )


def _fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The summary printed at the end of ``chronoserve profile``."""
    header = ("MODEL", "CLASS", "B", "WxT", "P50 MS", "P95 MS", "SERIES/S", "CPU-S/1K", "RSS MB", "MSRR/S")
    lines = [header]
    for r in rows:
        name = str(r["model"]) + (" [random weights]" if r.get("random_weights") else "")
        lines.append(
            (
                name,
                str(r["class"]),
                str(r["batch"]),
                f"{r['workers']}x{r['torch_threads']}",
                _fmt(r.get("latency_p50_ms"), ".1f"),
                _fmt(r.get("latency_p95_ms"), ".1f"),
                _fmt(r.get("series_per_s"), ".0f"),
                _fmt(r.get("cpu_s_per_1k"), ".2f"),
                _fmt(r.get("peak_rss_mb"), ".0f"),
                _fmt(r.get("msrr_per_s"), ".1f"),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in lines)


@dataclass(frozen=True)
class Profile:
    """A loaded ``profile.json``: the rows and the settings they were measured under."""

    rows: tuple[Mapping[str, Any], ...]
    settings: Mapping[str, Any]
    path: str

    @property
    def models(self) -> list[str]:
        return sorted({str(r["model"]) for r in self.rows})

    def seed(self, costs: CostModel, canonical: Any = None) -> int:
        """Teach ``costs`` each row's median batch latency (beside the other workers' batches);
        returns the rows taught. ``canonical`` maps a row's model name to the engine's."""
        taught = 0
        for r in self.rows:
            p50, gflop, rows = r.get("latency_p50_ms"), r.get("gflop_per_batch"), r.get("rows_per_batch")
            if p50 is None or gflop is None or rows is None:
                continue
            model = str(r["model"]) if canonical is None else canonical(str(r["model"]))
            steps = int(r.get("steps_per_batch") or 1)
            alone = BatchFeatures(model, float(gflop), int(rows), 0.0, steps)
            # Every worker was busy: each batch ran beside (workers - 1) batches like itself.
            beside = (int(r["workers"]) - 1) * alone.passes_per_second(float(p50) / 1000.0)
            features = dataclasses.replace(alone, colocated=beside)
            costs.observe_batch(features, float(p50) / 1000.0)
            taught += 1
        return taught

    def figures(self, model: str) -> list[dict[str, Any]]:
        """What ``GET /models`` shows of ``model``: per class, batch and workers x threads, the
        latency, throughput and maximum serviceable rate."""
        keys = (
            "class",
            "context",
            "horizon",
            "covariates",
            "batch",
            "workers",
            "torch_threads",
            "latency_p50_ms",
            "latency_p95_ms",
            "series_per_s",
            "cpu_s_per_1k",
            "msrr_per_s",
        )
        return [{k: r.get(k) for k in keys} for r in self.rows if r["model"] == model]


def load_profile(path: str | Path) -> Profile:
    """Read a ``profile.json`` written by ``chronoserve profile``; ValueError saying what is wrong."""
    file = Path(path)
    try:
        document = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{file}: no such file (write one with `chronoserve profile --out DIR`)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{file}: not a profile ({exc})") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ValueError(f'{file}: not a chronoserve profile (expected "format": "{FORMAT}")')
    rows = document.get("rows")
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "model" in r for r in rows):
        raise ValueError(f'{file}: "rows" must be a list of rows, each naming its model')
    return Profile(tuple(rows), document.get("settings", {}), str(file))
