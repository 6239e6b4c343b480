"""The cost table as PNGs: latency and throughput against batch size, and the MSRR of every configuration.

One panel per model; a colour per query class and a line style per workers x threads. Axes
start at zero (no log scale hiding a p50 beside a p95). Matplotlib's Agg backend, imported
only here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from chronoserve._plotting import pyplot, save

_STYLES = ("-", "--", ":", "-.")


def _models(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    return sorted({str(r["model"]) for r in rows})


def _label(model: str, rows: Sequence[Mapping[str, Any]]) -> str:
    random = any(r.get("random_weights") for r in rows if r["model"] == model)
    return f"{model} (random weights: timings only)" if random else model


def _lines(rows: Sequence[Mapping[str, Any]], model: str) -> dict[tuple[str, str], list[Mapping[str, Any]]]:
    """The rows of ``model`` by (class, workers x threads), each sorted by batch."""
    out: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for r in rows:
        if r["model"] == model:
            out.setdefault((str(r["class"]), f"{r['workers']}x{r['torch_threads']}"), []).append(r)
    return {k: sorted(v, key=lambda r: int(r["batch"])) for k, v in out.items()}


def _against_batch(path: Path, rows: Sequence[Mapping[str, Any]], what: str) -> Path:
    plt = pyplot()
    models = _models(rows)
    fig, axes = plt.subplots(len(models), 1, figsize=(10, 4.2 * len(models)), squeeze=False)
    classes = sorted({str(r["class"]) for r in rows})
    configs = sorted({f"{r['workers']}x{r['torch_threads']}" for r in rows})
    colours = {c: f"C{i % 10}" for i, c in enumerate(classes)}
    styles = {c: _STYLES[i % len(_STYLES)] for i, c in enumerate(configs)}
    for ax, model in zip(axes[:, 0], models, strict=True):
        for (cls, config), line in _lines(rows, model).items():
            batch = [int(r["batch"]) for r in line]
            label = f"{cls}, {config} workers x threads"
            if what == "latency":
                p50 = [r.get("latency_p50_ms") for r in line]
                p95 = [r.get("latency_p95_ms") for r in line]
                ax.plot(batch, p50, styles[config], color=colours[cls], marker="o", label=label + " (p50; bar to p95)")
                ax.vlines(batch, p50, p95, color=colours[cls], alpha=0.5)
            else:
                ax.plot(batch, [r.get("series_per_s") for r in line], styles[config], color=colours[cls], marker="o",
                        label=label)  # fmt: skip
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({int(r["batch"]) for r in rows if r["model"] == model}))
        ax.get_xaxis().set_major_formatter(plt.matplotlib.ticker.ScalarFormatter())
        ax.set_ylim(bottom=0)
        ax.set_xlabel("batch size (series)")
        ax.set_ylabel("batch latency, ms" if what == "latency" else "series per second")
        ax.set_title(_label(model, rows), fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", framealpha=0.85)
    title = "Batch latency against batch size" if what == "latency" else "Throughput against batch size"
    fig.suptitle(f"{title} (chronoserve profile)")
    return save(fig, path)


def plot_latency(path: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    return _against_batch(path, rows, "latency")


def plot_throughput(path: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    return _against_batch(path, rows, "throughput")


def plot_msrr(path: Path, rows: Sequence[Mapping[str, Any]], slo_ms: float | None) -> Path:
    """One horizontal bar per configuration: its maximum serviceable request rate."""
    plt = pyplot()
    ordered = [r for r in rows if r.get("msrr_per_s") is not None]
    height = max(3.0, 0.28 * len(ordered) + 1.5)
    fig, ax = plt.subplots(figsize=(10, height))
    labels = [f"{r['model']}  {r['class']}  B={r['batch']}  {r['workers']}x{r['torch_threads']}" for r in ordered]
    models = _models(ordered)
    colours = [f"C{models.index(str(r['model'])) % 10}" for r in ordered]
    y = list(range(len(ordered)))[::-1]
    ax.barh(y, [float(r["msrr_per_s"]) for r in ordered], color=colours)
    for yi, r in zip(y, ordered, strict=True):
        ax.text(float(r["msrr_per_s"]), yi, f" {float(r['msrr_per_s']):.0f}", va="center", fontsize=7)
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=7)
    ax.set_xlim(left=0, right=max([float(r["msrr_per_s"]) for r in ordered] + [1.0]) * 1.12)
    ax.set_xlabel("requests per second")
    slo = f"p95 within {slo_ms:g} ms" if slo_ms is not None else "p95 within the SLO"
    random = " (random weights: timings only)" if any(r.get("random_weights") for r in ordered) else ""
    ax.set_title(f"Maximum serviceable request rate, Poisson arrivals, {slo}{random}", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    return save(fig, path)


def plot_all(out: Path, rows: Sequence[Mapping[str, Any]], slo_ms: float | None) -> list[Path]:
    if not rows:
        return []
    return [
        plot_latency(out / "latency_vs_batch.png", rows),
        plot_throughput(out / "throughput_vs_batch.png", rows),
        plot_msrr(out / "msrr.png", rows, slo_ms),
    ]
