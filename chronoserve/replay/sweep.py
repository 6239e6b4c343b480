"""``replay --load-sweep``: one trace replayed at scaled rates, per policy; a table, a CSV and a plot.

A factor ``f`` divides every send time by ``f``: the same requests, offered ``f`` times as fast.
Each (policy, factor) is a replay of its own on a fresh engine; this module holds what the
sweep adds over those replays: the points, their files and the goodput/attainment figure.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .report import Summary

#: The most factors one sweep takes (each is a whole replay per policy).
MAX_FACTORS = 12


def parse_factors(text: str) -> tuple[float, ...]:
    """``"0.5,1,1.5,2"`` -> (0.5, 1.0, 1.5, 2.0); a ValueError says what is wrong."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise ValueError("give comma-separated rate factors, e.g. 0.5,1,1.5,2")
    if len(parts) > MAX_FACTORS:
        raise ValueError(f"at most {MAX_FACTORS} factors, got {len(parts)}")
    factors = []
    for part in parts:
        try:
            value = float(part)
        except ValueError:
            raise ValueError(f"{part!r} is not a number") from None
        if not (math.isfinite(value) and 0 < value <= 1000):
            raise ValueError(f"factors must lie in (0, 1000], got {part}")
        factors.append(value)
    if len(set(factors)) != len(factors):
        raise ValueError(f"factors must be distinct, got {text!r}")
    return tuple(sorted(factors))


def factor_label(factor: float) -> str:
    """The directory name of one factor's replays: ``x0.5``, ``x1``, ``x1.5``."""
    return f"x{factor:g}"


@dataclass(frozen=True)
class SweepPoint:
    policy: str
    factor: float
    offered: float
    """Offered load: requests per second sent (the scaled trace's mean rate)."""
    summary: Summary

    def to_dict(self) -> dict[str, Any]:
        return {"policy": self.policy, **load_point(self.factor, self.offered, self.summary)}


def load_point(factor: float, offered: float, summary: Summary) -> dict[str, Any]:
    """One replay at one load, as a row: what a sweep (or a bench comparing policies) tabulates."""
    slo = summary.slo
    return {
        "factor": factor,
        "offered_per_s": offered,
        "requests": summary.requests,
        "ok": summary.ok,
        "throughput_per_s": summary.throughput,
        "goodput_per_s": slo.goodput if slo is not None else None,
        "attainment": slo.overall.attainment if slo is not None else None,
        **{k: slo.overall.counts[k] if slo is not None else None for k in ("late", "shed", "expired")},
        "p99_ms": summary.percentiles["end_to_end"][99.0] * 1000,
        "cpu_s_per_forecast": summary.cpu_per_forecast,
    }


def write_sweep(base: Path, points: Sequence[SweepPoint]) -> list[Path]:
    """``sweep.csv``, ``sweep.json`` (every point, with its per-class outcomes) and ``sweep.png``."""
    base.mkdir(parents=True, exist_ok=True)
    rows = [p.to_dict() for p in points]
    csv_path = base / "sweep.csv"
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    json_path = base / "sweep.json"
    full = [
        {**row, "deadlines": p.summary.slo.to_dict() if p.summary.slo else None}
        for row, p in zip(rows, points, strict=True)
    ]
    json_path.write_text(json.dumps(full, indent=2))
    return [csv_path, json_path, plot_sweep(base / "sweep.png", points)]


def format_sweep(points: Sequence[SweepPoint]) -> str:
    head = (
        f"{'policy':<12s}{'factor':>7s}{'offered/s':>10s}{'goodput/s':>10s}{'attain':>8s}"
        f"{'late':>6s}{'shed':>6s}{'expired':>8s}{'p99 ms':>9s}{'CPU-s/fc':>10s}"
    )
    lines = ["load sweep (goodput: answers within their deadline per second)", head]

    def cell(value: float | None, text: str, width: int) -> str:
        return f"{'-' if value is None else text:>{width}s}"

    for p in points:
        d = p.to_dict()
        attain, goodput, cpu = d["attainment"], d["goodput_per_s"], d["cpu_s_per_forecast"]
        lines.append(
            f"{p.policy:<12s}{p.factor:>7g}{p.offered:10.1f}"
            + cell(goodput, f"{goodput or 0:.2f}", 10)
            + cell(attain, f"{(attain or 0) * 100:.1f}%", 8)
            + "".join(cell(d[k], str(d[k]), w) for k, w in (("late", 6), ("shed", 6), ("expired", 8)))
            + f"{d['p99_ms']:9.0f}"
            + cell(cpu, f"{cpu or 0:.4f}", 10)
        )
    return "\n".join(lines)


def plot_sweep(path: Path, points: Sequence[SweepPoint]) -> Path:
    """Goodput and SLO attainment against offered load, one line per policy."""
    from chronoserve._plotting import pyplot, save

    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    policies = list(dict.fromkeys(p.policy for p in points))
    top = 0.0
    for policy in policies:
        mine = sorted((p for p in points if p.policy == policy), key=lambda p: p.factor)
        xs = [p.offered for p in mine]
        goodput = [p.summary.slo.goodput if p.summary.slo else p.summary.throughput for p in mine]
        attain = [p.summary.slo.overall.attainment * 100 if p.summary.slo else math.nan for p in mine]
        top = max([top, *goodput, *xs])
        left.plot(xs, goodput, marker="o", label=policy)
        right.plot(xs, attain, marker="o", label=policy)
    every = sorted({p.offered for p in points})
    left.plot(every, every, color="grey", linestyle=":", linewidth=1, label="offered (all met)")
    left.set_xlabel("offered load (requests per second)")
    left.set_ylabel("goodput (answers within deadline per second)")
    left.set_title("Goodput")
    left.set_ylim(0, top * 1.08 if top > 0 else 1)
    right.set_xlabel("offered load (requests per second)")
    right.set_ylabel("SLO attainment (% of requests met)")
    right.set_title("Deadline attainment (refused, expired and late all miss)")
    right.set_ylim(0, 102)
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    first = points[0].summary.meta if points else {}
    weights = " — random weights: timings only" if first.get("random_weights") else ""
    fig.suptitle(f"{first.get('trace', 'trace')}: load sweep{weights}", fontsize=11)
    return save(fig, path)
