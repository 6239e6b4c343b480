"""The files and the table of an edge-bench invocation (one or many runs)."""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from chronoserve._units import format_bytes


def overall_verdict(results: Sequence[Mapping[str, Any]]) -> str:
    """VALID only when every run is."""
    return "VALID" if results and all(r.get("verdict") == "VALID" for r in results) else "INVALID"


def write_summary(
    out: Path, results: Sequence[Mapping[str, Any]], command: Sequence[str], machine: Mapping[str, Any]
) -> Path:
    """``summary.json``: the command, the machine (as the parent sees it, unpinned), the
    software (from the first run's process), every run."""
    first = results[0] if results else {}
    model = dict(first.get("model", {}))
    summary = {
        "command": list(command),
        "model": model,
        "random_weights": bool(model.get("random_weights")),
        "note": (
            "random weights: the timings are real, the forecasts are not" if model.get("random_weights") else None
        ),
        "verdict": overall_verdict(results),
        "machine": dict(machine),
        "software": first.get("software"),
        "runs": [{k: v for k, v in r.items() if k != "software"} for r in results],
    }
    path = out / "summary.json"
    path.write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
    return path


def combine_csv(out: Path, name: str, runs: Sequence[tuple[str, Path]]) -> Path:
    """``out/name``: the rows of every run's ``name``, with the run's label as the first column."""
    path = out / name
    header: list[str] | None = None
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        for label, run_dir in runs:
            source = run_dir / name
            if not source.is_file():
                continue
            with source.open(newline="", encoding="utf-8") as src:
                reader = csv.reader(src)
                run_header = next(reader, None)
                if run_header is None:
                    continue
                if header is None:
                    header = ["run", *run_header]
                    writer.writerow(header)
                elif ["run", *run_header] != header:
                    raise ValueError(f"{source}: its columns differ from the other runs' {name}")
                for row in reader:
                    writer.writerow([label, *row])
    return path


def _count(measured: Mapping[str, Any]) -> str:
    """``1151 queries`` (SingleStream) or ``1184 series`` (Offline)."""
    if "queries" not in measured:
        return "-"
    return f"{measured['queries']} {measured.get('unit', 'queries')}"


def _ms(value: Any) -> str:
    return f"{value * 1000:.1f}" if isinstance(value, (int, float)) else "-"


def _num(value: Any, digits: int = 1) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "-"


def format_table(results: Sequence[Mapping[str, Any]]) -> str:
    """The readable table printed at the end: one row per run, then each INVALID run's reasons."""
    header = [
        "run", "verdict", "measured", "p50 ms", "p90 ms", "p90 ES ms", "p99 ms", "max ms", "mean ms",
        "series/s", "proc CPU %", "outside %", "peak RSS", "max °C",
    ]  # fmt: skip
    rows = [header]
    for r in results:
        lat = r.get("latency_s", {})
        early = r.get("early_stopping_p90") or {}
        system = r.get("system", {})
        cpu = system.get("proc_cpu_percent") or {}
        temp = system.get("temp_c") or {}
        outside = [v for v in (r.get("contamination", {}).get("outside_mean_percent") or {}).values() if v is not None]
        peak = system.get("peak_rss_bytes")
        rows.append(
            [
                str(r.get("label")),
                str(r.get("verdict")),
                _count(r.get("measured", {})),
                _ms(lat.get("p50")),
                _ms(lat.get("p90")),
                _ms(early.get("estimate")),
                _ms(lat.get("p99")),
                _ms(lat.get("max")),
                _ms(lat.get("mean")),
                _num(r.get("throughput", {}).get("series_per_s")),
                _num(cpu.get("mean"), 0),
                _num(max(outside), 0) if outside else "-",
                format_bytes(int(peak)) if isinstance(peak, (int, float)) else "-",
                _num(temp.get("max")),
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for row in rows:
        cells = [cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(cells))
    for r in results:
        for reason in r.get("reasons", []):
            lines.append(f"{r.get('label')}: {reason}")
    return "\n".join(lines)
