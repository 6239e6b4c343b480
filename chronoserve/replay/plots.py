"""PNG plots of a replay, and of several replays side by side (``--compare``)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from chronoserve._plotting import plain_log_axis, pyplot, save

from .report import PERCENTILES, Summary
from .runner import Record


def _by_model(records: Sequence[Record]) -> dict[str, list[Record]]:
    groups: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        groups[r.model].append(r)
    return dict(sorted(groups.items()))


def _title(summary: Summary) -> str:
    weights = " (random weights: timings only)" if summary.meta.get("random_weights") else ""
    return f"{summary.meta.get('trace', 'trace')}: {summary.label}{weights}"


def _time_axis(records: Sequence[Record]) -> tuple[str, str]:
    """Plot against the scheduled send time; for a burst (all sent at once), against the answer time."""
    sent = [r.scheduled for r in records]
    if sent and max(sent) - min(sent) > 1e-6:
        return "scheduled", "scheduled send time (s)"
    return "received", "time of the answer (s; a burst: every request was sent at 0)"


def plot_replay(out: Path, records: Sequence[Record], summary: Summary) -> list[Path]:
    """Latency over send time, requests per second, the time breakdown, latency histograms per model."""
    plt = pyplot()
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    groups = _by_model(records)
    when, when_label = _time_axis(records)

    fig, ax = plt.subplots(figsize=(10, 5))
    for model, rs in groups.items():
        ok = [r for r in rs if r.ok]
        ax.scatter([getattr(r, when) for r in ok], [r.latency * 1000 for r in ok], s=8, alpha=0.7, label=model)
    failed = [r for r in records if not r.ok]
    if failed:
        ax.scatter([getattr(r, when) for r in failed], [r.latency * 1000 for r in failed], marker="x", c="red", s=20,
                   label=f"errors ({len(failed)})")  # fmt: skip
    ax.set_xlabel(when_label)
    ax.set_ylabel("end-to-end latency (ms, from the scheduled time)")
    ax.set_title(f"Latency over time — {_title(summary)}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    paths.append(save(fig, out / "latency_over_time.png"))

    fig, ax = plt.subplots(figsize=(10, 4))
    end = max([r.received for r in records] + [1.0])
    bins = np.arange(0.0, np.ceil(end) + 1.0, 1.0)
    ax.hist([r.scheduled for r in records], bins=bins, histtype="step", linewidth=1.5, label="sent (scheduled)")
    ax.hist([r.received for r in records if r.ok], bins=bins, histtype="step", linewidth=1.5, label="answered")
    if failed:
        ax.hist([r.received for r in failed], bins=bins, histtype="step", linewidth=1.5, label="failed", color="red")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("requests per second")
    ax.set_title(f"Requests per second — {_title(summary)}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    paths.append(save(fig, out / "requests_per_second.png"))

    ok = [r for r in records if r.ok]
    fig, ax = plt.subplots(figsize=(10, 5))
    if ok:
        # Mean of each part over windows of send time: readable for any number of requests.
        last = max(getattr(r, when) for r in ok)
        n_bins = max(1, min(30, len(ok) // 5))
        edges = np.linspace(0.0, last + 1e-9, n_bins + 1)
        index = np.clip(np.digitize([getattr(r, when) for r in ok], edges) - 1, 0, n_bins - 1)
        parts = {
            "queue": [r.queue or 0.0 for r in ok],
            "load": [r.load or 0.0 for r in ok],
            "inference": [r.inference or 0.0 for r in ok],
            "client and network": [max(0.0, r.latency - (r.server_total or 0.0)) for r in ok],
        }
        counts = np.bincount(index, minlength=n_bins)
        centers = (edges[:-1] + edges[1:]) / 2
        width = (edges[1] - edges[0]) * 0.9 if n_bins > 1 else 1.0
        bottom = np.zeros(n_bins)
        for name, part in parts.items():
            means = np.bincount(index, weights=np.array(part) * 1000, minlength=n_bins) / np.maximum(counts, 1)
            ax.bar(centers, means, width, bottom=bottom, label=name)
            bottom += means
        ax.legend(loc="upper left", fontsize=8)
    ax.set_xlabel(f"{when_label}; each bar: the mean of the requests in that window")
    ax.set_ylabel("mean time per request (ms)")
    ax.set_title(f"Where the time went — {_title(summary)}")
    ax.grid(alpha=0.3, axis="y")
    paths.append(save(fig, out / "breakdown.png"))

    n = max(1, len(groups))
    fig, axes = plt.subplots(n, 1, figsize=(10, 2.6 * n), squeeze=False)
    for ax, (model, rs) in zip(axes[:, 0], groups.items(), strict=False):
        lat = np.array([r.latency * 1000 for r in rs if r.ok])
        if lat.size:
            edges = np.logspace(np.log10(max(lat.min(), 0.1)), np.log10(lat.max() * 1.01 + 0.1), 40)
            ax.hist(lat, bins=edges)
            ax.set_xscale("log")
            plain_log_axis(ax.xaxis)
            for p in (50, 99):
                v = float(np.percentile(lat, p))
                ax.axvline(v, color="black", linestyle="--", linewidth=1)
                right = p == 99  # the p99 label left of its line: at the axis' end it would run off it
                text = f"p{p} {v:,.0f} ms " if right else f" p{p} {v:,.0f} ms"
                ax.text(v, ax.get_ylim()[1] * 0.9, text, fontsize=8, ha="right" if right else "left")
        ax.set_title(f"{model} ({lat.size} ok)", fontsize=9)
        ax.set_ylabel("requests")
    axes[-1, 0].set_xlabel("end-to-end latency (ms, log scale)")
    fig.suptitle(f"Latency per model — {_title(summary)}", fontsize=10)
    paths.append(save(fig, out / "latency_histograms.png"))
    return paths


def plot_compare(path: Path, runs: Sequence[tuple[Summary, Sequence[Record]]]) -> Path:
    """One figure for ``--compare``: percentiles, throughput, latency over time and CDFs per run."""
    plt = pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    labels = [s.label for s, _ in runs]

    ax = axes[0, 0]
    shown = PERCENTILES[:-1]
    width = 0.8 / len(shown)
    top = 0.0
    for k, p in enumerate(shown):
        values = [s.percentiles["end_to_end"][p] * 1000 for s, _ in runs]
        at = np.arange(len(runs)) + k * width
        ax.bar(at, values, width, label=f"p{p:g}")
        for x, v in zip(at, values, strict=True):  # bars from 0 on a linear axis, each with its number
            ax.text(x, v, f"{v:,.0f}", ha="center", va="bottom", fontsize=7, rotation=90)
        top = max([top, *values])
    ax.set_xticks(np.arange(len(runs)) + width * (len(shown) - 1) / 2, labels)
    ax.set_ylim(0, top * 1.2 if top > 0 else 1)  # room for the numbers
    ax.set_ylabel("end-to-end latency (ms)")
    from matplotlib.ticker import FuncFormatter

    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.set_title("Latency percentiles")
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(alpha=0.3, axis="y")

    ax = axes[0, 1]
    ax.bar(labels, [s.throughput for s, _ in runs], color="tab:green")
    for i, (s, _) in enumerate(runs):
        ax.text(i, s.throughput, f"{s.throughput:.1f}/s\n{s.ok}/{s.requests} ok", ha="center", va="bottom", fontsize=8)
    ax.set_ylim(0, max([s.throughput for s, _ in runs] + [1.0]) * 1.25)  # room for the labels
    ax.set_ylabel("successful forecasts per second")
    ax.set_title("Throughput")
    ax.grid(alpha=0.3, axis="y")

    ax = axes[1, 0]
    when, when_label = _time_axis([r for _, records in runs for r in records])
    for s, records in runs:
        ok = sorted((r for r in records if r.ok), key=lambda r: getattr(r, when))
        xs = [getattr(r, when) for r in ok]
        ax.plot(xs, [r.latency * 1000 for r in ok], ".", markersize=3, alpha=0.6, label=s.label)
    ax.set_yscale("log")
    plain_log_axis(ax.yaxis)
    ax.set_xlabel(when_label)
    ax.set_ylabel("latency (ms, log scale)")
    ax.set_title("Latency over time")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)

    ax = axes[1, 1]
    for s, records in runs:
        cdf = np.sort([r.latency * 1000 for r in records if r.ok])
        if cdf.size:
            ax.plot(cdf, np.arange(1, cdf.size + 1) / cdf.size, label=s.label)
    ax.set_xscale("log")
    plain_log_axis(ax.xaxis)
    ax.set_xlabel("end-to-end latency (ms, log scale)")
    ax.set_ylabel("fraction of requests")
    ax.set_title("Latency CDF")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)

    first = runs[0][0]
    weights = " — random weights: timings only" if first.meta.get("random_weights") else ""
    fig.suptitle(f"{first.meta.get('trace', 'trace')}: {' vs '.join(labels)}{weights}")
    return save(fig, path)
