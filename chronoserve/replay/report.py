"""HDR histograms of a replay, the printed summary, and the files written to ``--out``."""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hdrh.histogram import HdrHistogram

from .runner import Record
from .slo import SloSummary, format_slo, summarize_slo

PERCENTILES = (50.0, 90.0, 95.0, 99.0, 99.9, 100.0)
METRICS = ("end_to_end", "queue", "load", "inference")
_LOWEST_US, _HIGHEST_US, _DIGITS = 1, 3_600_000_000, 3  # 1 µs to 1 h, 3 significant digits


def _histogram(values_s: Sequence[float]) -> HdrHistogram:
    hist = HdrHistogram(_LOWEST_US, _HIGHEST_US, _DIGITS)
    for v in values_s:
        hist.record_value(min(_HIGHEST_US, max(_LOWEST_US, round(v * 1e6))))
    return hist


@dataclass
class Summary:
    """What one replay measured. Percentiles are in seconds, from HDR histograms (3 significant digits)."""

    label: str
    requests: int
    ok: int
    duration: float
    """From the first scheduled send to the last answer."""
    throughput: float
    """Successful forecasts per second over ``duration``."""
    errors: dict[str, int]
    cold_starts: int
    mean_batch: float | None
    percentiles: dict[str, dict[float, float]]
    means: dict[str, float]
    histograms: dict[str, HdrHistogram] = field(repr=False)
    meta: dict[str, Any] = field(default_factory=dict)
    slo: SloSummary | None = None
    """Goodput and attainment, when requests had deadlines."""
    cpu_seconds: float | None = None
    """CPU time the serving side used during the replay (see :meth:`Target.cpu_seconds`), if known."""

    @property
    def cpu_per_forecast(self) -> float | None:
        """CPU-seconds per answered forecast: the energy stand-in where no counter is readable."""
        return self.cpu_seconds / self.ok if self.cpu_seconds is not None and self.ok else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "requests": self.requests,
            "ok": self.ok,
            "duration_s": self.duration,
            "throughput_per_s": self.throughput,
            "errors": self.errors,
            "cold_starts": self.cold_starts,
            "mean_batch": self.mean_batch,
            "percentiles_s": {m: {f"p{p:g}": v for p, v in ps.items()} for m, ps in self.percentiles.items()},
            "means_s": self.means,
            "cpu_seconds": self.cpu_seconds,
            "cpu_s_per_forecast": self.cpu_per_forecast,
            "deadlines": self.slo.to_dict() if self.slo is not None else None,
            "meta": self.meta,
        }


def summarize(
    records: Sequence[Record], label: str, meta: dict[str, Any] | None = None, *, cpu_seconds: float | None = None
) -> Summary:
    ok = [r for r in records if r.ok]
    series: dict[str, list[float]] = {
        "end_to_end": [r.latency for r in ok],
        "queue": [r.queue for r in ok if r.queue is not None],
        "load": [r.load for r in ok if r.load is not None],
        "inference": [r.inference for r in ok if r.inference is not None],
    }
    histograms = {name: _histogram(values) for name, values in series.items()}
    percentiles = {
        name: {
            p: hist.get_value_at_percentile(p) / 1e6 if hist.get_total_count() else float("nan") for p in PERCENTILES
        }
        for name, hist in histograms.items()
    }
    means = {name: (sum(v) / len(v) if v else float("nan")) for name, v in series.items()}
    duration = (max(r.received for r in records) - min(r.scheduled for r in records)) if records else 0.0
    errors = Counter(r.error_kind or f"http_{r.status}" for r in records if not r.ok)
    batches = [r.batch_size for r in ok if r.batch_size is not None]
    return Summary(
        label=label,
        requests=len(records),
        ok=len(ok),
        duration=duration,
        throughput=len(ok) / duration if duration > 0 else float("nan"),
        errors=dict(sorted(errors.items())),
        cold_starts=sum(1 for r in ok if r.cold_start),
        mean_batch=sum(batches) / len(batches) if batches else None,
        percentiles=percentiles,
        means=means,
        histograms=histograms,
        meta=dict(meta or {}),
        slo=summarize_slo(records, duration),
        cpu_seconds=cpu_seconds,
    )


def format_table(summaries: Sequence[Summary]) -> str:
    """One block per metric; one row per replay (policy or target), in milliseconds."""
    lines = []
    head = f"{'':<12s}" + "".join(f"{'p' + format(p, 'g') if p < 100 else 'max':>10s}" for p in PERCENTILES)
    head += f"{'mean':>10s}"
    for metric in METRICS:
        lines.append(f"{metric.replace('_', '-')} latency (ms)")
        lines.append(head)
        for s in summaries:
            row = f"{s.label:<12s}" + "".join(f"{s.percentiles[metric][p] * 1000:10.1f}" for p in PERCENTILES)
            lines.append(row + f"{s.means[metric] * 1000:10.1f}")
        lines.append("")
    lines.append(f"{'':<12s}{'requests':>10s}{'ok':>8s}{'req/s':>9s}{'duration':>10s}{'cold':>6s}{'batch':>7s}  errors")
    for s in summaries:
        errors = ", ".join(f"{k}: {v}" for k, v in s.errors.items()) or "none"
        batch = f"{s.mean_batch:7.1f}" if s.mean_batch is not None else f"{'-':>7s}"
        lines.append(
            f"{s.label:<12s}{s.requests:>10d}{s.ok:>8d}{s.throughput:>9.1f}{s.duration:>9.1f}s"
            f"{s.cold_starts:>6d}{batch}  {errors}"
        )
    if any(s.slo is not None or s.cpu_seconds is not None for s in summaries):
        lines.append("")
        lines.append(format_slo([(s.label, s.slo, s.cpu_per_forecast) for s in summaries]))
    return "\n".join(lines)


def write_outputs(out: Path, records: Sequence[Record], summary: Summary) -> list[Path]:
    """Per-request CSV and JSONL, one ``.hgrm`` per metric, and ``summary.json``."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    rows = [r.to_dict() for r in records]
    csv_path = out / "requests.csv"
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["index"])
        writer.writeheader()
        writer.writerows(rows)
    written.append(csv_path)
    jsonl_path = out / "requests.jsonl"
    jsonl_path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    written.append(jsonl_path)
    for name, hist in summary.histograms.items():
        path = out / f"{name}.hgrm"
        with path.open("wb") as handle:
            # Values were recorded in microseconds; the file shows milliseconds.
            hist.output_percentile_distribution(handle, 1000.0)
        written.append(path)
    summary_path = out / "summary.json"
    summary_path.write_text(json.dumps(summary.to_dict(), indent=2, default=str))
    written.append(summary_path)
    return written
