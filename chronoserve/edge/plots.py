"""PNG plots of edge-bench runs: one line per run (core count and batch size).

Time runs from the start of the measured part; the warm-up (excluded from every statistic)
is drawn shaded at negative times. Matplotlib's Agg backend, imported only here.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from chronoserve._plotting import legend_outside, plain_log_axis, pyplot, save

_CORE = re.compile(r"^cpu(\d+)_percent$")


@dataclass(frozen=True)
class RunData:
    """One run's rows for plotting: its label, result and CSV rows (strings, empty = unavailable)."""

    label: str
    result: Mapping[str, Any]
    batches: list[dict[str, str]]
    samples: list[dict[str, str]]

    @classmethod
    def load(cls, label: str, run_dir: Path, result: Mapping[str, Any]) -> RunData:
        return cls(label, result, _read(run_dir / "batches.csv"), _read(run_dir / "samples.csv"))

    @property
    def start(self) -> float:
        return float(self.result.get("measured", {}).get("start_s", 0.0))

    def column(self, rows: Sequence[Mapping[str, str]], name: str) -> tuple[np.ndarray, np.ndarray]:
        """(time since the measured start, values) of the rows where ``name`` is available."""
        pairs = [(float(r["time_s"]), float(r[name])) for r in rows if r.get(name) not in (None, "")]
        if not pairs:
            return np.empty(0), np.empty(0)
        t, v = np.array(pairs).T
        return t - self.start, v


def _read(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _title(runs: Sequence[RunData], what: str) -> str:
    model = runs[0].result.get("model", {}) if runs else {}
    name = str(model.get("name", "?"))
    random = " (random weights: timings only)" if model.get("random_weights") else ""
    return f"{what}: {name}{random}"


def _shade_warmup(ax: Any, runs: Sequence[RunData]) -> None:
    warm = max((r.start for r in runs), default=0.0)
    if warm > 0:
        ax.axvspan(-warm, 0, color="0.9", zorder=0, label="warm-up (excluded)")


def _rolling_median(values: np.ndarray, window: int) -> np.ndarray:
    if len(values) < window:
        return values
    half = window // 2
    padded = np.pad(values, (half, window - 1 - half), mode="edge")
    return np.asarray(np.median(np.lib.stride_tricks.sliding_window_view(padded, window), axis=1))


def plot_latency(path: Path, runs: Sequence[RunData]) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(10, 5))
    _shade_warmup(ax, runs)
    medians, lows, tops = [], [], []
    for i, run in enumerate(runs):
        t, v = run.column(run.batches, "latency_s")
        if not len(t):
            continue
        color = f"C{i}"
        window = max(1, min(25, len(v) // 5))
        ax.scatter(t, v * 1000, s=6, alpha=0.35, color=color, linewidths=0)
        verdict = "" if run.result.get("verdict") == "VALID" else ", INVALID"
        label = f"{run.label} (rolling median of {window}{verdict})"
        ax.plot(t, _rolling_median(v * 1000, window), color=color, lw=1.5, label=label)
        medians.append(float(np.median(v * 1000)))
        lows.append(float(np.min(v * 1000)))
        tops.append(float(np.percentile(v * 1000, 99.5)))
    log = bool(medians) and max(medians) > 5 * min(medians)  # runs on different scales: a log axis shows all
    if log:
        ax.set_yscale("log")
        plain_log_axis(ax.yaxis)
        ax.set_ylim(min(lows) * 0.8, max(tops) * 1.5)
    elif tops:
        ax.set_ylim(0, max(tops) * 1.3)  # a few outliers above the top are cut off; summary.json has the max
    ax.set_xlabel("time since the measured part started (s)")
    scenario = runs[0].result.get("config", {}).get("scenario") if runs else None
    what = "query latency, submission to answer" if scenario == "singlestream" else "batch inference time"
    ax.set_ylabel(f"{what} (ms{', log scale' if log else ''})")
    ax.set_title(_title(runs, "Latency over time"))
    legend_outside(ax)
    ax.grid(alpha=0.3)
    return save(fig, path)


def _outside_mean(run: RunData) -> tuple[np.ndarray, np.ndarray]:
    pinned = set(run.result.get("config", {}).get("cores", []))
    columns = run.samples[0] if run.samples else {}
    outside = [k for k in columns if (m := _CORE.match(k)) and int(m.group(1)) not in pinned]
    if not outside:
        return np.empty(0), np.empty(0)
    pairs = []
    for row in run.samples:
        values = [float(row[k]) for k in outside if row.get(k) not in (None, "")]
        if values:
            pairs.append((float(row["time_s"]), sum(values) / len(values)))
    if not pairs:
        return np.empty(0), np.empty(0)
    t, v = np.array(pairs).T
    return t - run.start, v


def _foreign(run: RunData) -> tuple[np.ndarray, np.ndarray]:
    """Busy % summed over the pinned cores minus the process's CPU %: other processes on our cores."""
    pinned = list(run.result.get("config", {}).get("cores", []))
    pairs = []
    for row in run.samples:
        busy = [row.get(f"cpu{c}_percent") for c in pinned]
        own = row.get("proc_cpu_percent")
        if own in (None, "") or any(b in (None, "") for b in busy):
            continue
        pairs.append((float(row["time_s"]), max(0.0, sum(float(b) for b in busy if b) - float(own))))
    if not pairs:
        return np.empty(0), np.empty(0)
    t, v = np.array(pairs).T
    return t - run.start, v


def plot_cpu(path: Path, runs: Sequence[RunData]) -> Path:
    plt = pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(13, 7), sharex=True)
    for ax in (top, bottom):
        _shade_warmup(ax, runs)
    outside_drawn = 0
    for i, run in enumerate(runs):
        t, v = run.column(run.samples, "proc_cpu_percent")
        top.plot(t, v, color=f"C{i}", marker=".", label=f"{run.label} (pinned to {run.result['config']['cores']})")
        t, v = _outside_mean(run)
        if len(t):
            bottom.plot(t, v, color=f"C{i}", marker=".", label=f"{run.label}: mean busy % of the other cores")
            outside_drawn += 1
        t, v = _foreign(run)
        if len(t):
            label = f"{run.label}: other processes on the pinned cores"
            bottom.plot(t, v, color=f"C{i}", ls=":", marker="x", label=label)
    threshold = runs[0].result.get("contamination", {}).get("threshold_percent") if runs else None
    if threshold is not None:
        bottom.axhline(threshold, color="red", ls="--", lw=1, label=f"contamination threshold ({threshold:g}%)")
    if not outside_drawn:
        bottom.text(0.02, 0.9, "(no core outside the pinned set)", transform=bottom.transAxes, color="0.4")
    top.set_ylabel("benchmark process CPU (% of one core)")
    top.set_title(_title(runs, "CPU over time"))
    bottom.set_ylabel("load beside the benchmark\n(% of one core)")
    bottom.set_xlabel("time since the measured part started (s)")
    bottom.set_ylim(bottom=0)
    for ax in (top, bottom):
        legend_outside(ax)  # beside the data, not over it
        ax.grid(alpha=0.3)
    return save(fig, path)


def plot_rss(path: Path, runs: Sequence[RunData]) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(10, 4.5))
    _shade_warmup(ax, runs)
    top = 0.0
    for i, run in enumerate(runs):
        t, v = run.column(run.samples, "proc_rss_bytes")
        ax.plot(t, v / 2**20, color=f"C{i}", marker=".", label=run.label)
        top = max(top, float(v.max()) / 2**20) if len(v) else top
    ax.set_xlabel("time since the measured part started (s)")
    ax.set_ylabel("process RSS (MiB)")
    ax.set_ylim(0, top * 1.15 if top > 0 else 1)
    ax.set_title(_title(runs, "Resident memory over time"))
    legend_outside(ax)
    ax.grid(alpha=0.3)
    return save(fig, path)


def plot_temperature(path: Path, runs: Sequence[RunData]) -> Path | None:
    """Temperature over time, or None (no file) where no run could read a sensor."""
    readings = [(i, run, *run.column(run.samples, "temp_c")) for i, run in enumerate(runs)]
    readings = [r for r in readings if len(r[2])]
    if not readings:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(10, 4.5))
    for i, run, t, v in readings:
        ax.plot(t, v, color=f"C{i}", marker=".", label=run.label)
    _shade_warmup(ax, runs)
    ax.set_xlabel("time since the measured part started (s)")
    ax.set_ylabel("CPU temperature (°C)")
    ax.set_title(_title(runs, "Temperature over time"))
    source = runs[0].result.get("system", {}).get("sensor_sources", {}).get("temp_c")
    legend_outside(ax, title=f"source: {source}" if source else None)
    ax.grid(alpha=0.3)
    return save(fig, path)


def plot_batch_sweep(path: Path, results: Sequence[Mapping[str, Any]]) -> Path:
    """Median (and p90) latency and throughput against batch size, one line per core count."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    sizes: set[int] = set()
    medians: list[float] = []
    invalid = False
    by_cores: dict[int, list[Mapping[str, Any]]] = {}
    for r in results:
        by_cores.setdefault(len(r["config"]["cores"]), []).append(r)
    for i, (k, rows) in enumerate(sorted(by_cores.items())):
        rows = sorted(rows, key=lambda r: int(r["config"]["batch"]))
        batch = [int(r["config"]["batch"]) for r in rows]
        p50 = [(r["latency_s"].get("p50") or np.nan) * 1000 for r in rows]
        p90 = [(r["latency_s"].get("p90") or np.nan) * 1000 for r in rows]
        rate = [r["throughput"].get("series_per_s") or np.nan for r in rows]
        name = f"{k} core{'s' if k > 1 else ''}"
        left.plot(batch, p50, color=f"C{i}", marker="o", label=f"{name}: median")
        left.plot(batch, p90, color=f"C{i}", marker="x", ls="--", lw=1, label=f"{name}: p90")
        right.plot(batch, rate, color=f"C{i}", marker="o", label=name)
        bad = [j for j, r in enumerate(rows) if r.get("verdict", "VALID") != "VALID"]
        if bad:
            ring = {"s": 160, "facecolors": "none", "edgecolors": "red", "linewidths": 1.2, "zorder": 3}
            left.scatter([batch[j] for j in bad], [p50[j] for j in bad], **ring)
            right.scatter([batch[j] for j in bad], [rate[j] for j in bad], **ring)
            invalid = True
        sizes.update(batch)
        medians += [v for v in p50 if v == v]
    if invalid:
        for ax in (left, right):
            ax.scatter([], [], s=160, facecolors="none", edgecolors="red", label="INVALID run (see summary.json)")
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(sizes), [str(b) for b in sorted(sizes)])
        ax.minorticks_off()
        ax.set_xlabel("batch size (series per query)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if medians and max(medians) > 10 * min(medians):
        left.set_yscale("log")
        left.set_ylabel("latency per query (ms, log scale)")
    else:
        left.set_ylabel("latency per query (ms)")
        left.set_ylim(bottom=0)
    right.set_ylabel("throughput (series/s)")
    right.set_ylim(bottom=0)
    model = results[0].get("model", {}) if results else {}
    random = " (random weights: timings only)" if model.get("random_weights") else ""
    fig.suptitle(f"Latency and throughput against batch size: {model.get('name', '?')}{random}")
    return save(fig, path)


def plot_all(out: Path, runs: Sequence[RunData]) -> list[Path]:
    """Every plot of an invocation; the batch-size plot only for a sweep of batch sizes."""
    files = [
        plot_latency(out / "latency_over_time.png", runs),
        plot_cpu(out / "cpu_over_time.png", runs),
        plot_rss(out / "rss_over_time.png", runs),
    ]
    temperature = plot_temperature(out / "temperature_over_time.png", runs)  # none without a sensor
    if temperature is not None:
        files.append(temperature)
    if len({int(r.result["config"]["batch"]) for r in runs}) > 1:
        files.append(plot_batch_sweep(out / "latency_vs_batch.png", [r.result for r in runs]))
    return files
