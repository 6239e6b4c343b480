"""PNG plots of a sweep (matplotlib, Agg backend), written by :func:`plot_sweep`:

- ``error_vs_context.png``: mean RMSE across series and MASE relative to seasonal naive against
  the context, at the headline horizon (24 h or the closest);
- ``error_vs_horizon.png``: the same against the horizon, at the headline context (10 days);
- ``rmse_cdf.png``: the distribution of per-window RMSE at the headline configuration, for each
  covariate set of each Chronos-2 model (with seasonal naive for reference);
- ``covariate_improvement.png``: per covariate set, how much lower the RMSE is than without
  covariates on the same windows (every context and horizon), per series and on average;
- ``forecast_vs_truth.png``: the forecasts from 00:00 of the chosen days, the 80 % band and the truth.

Random-weight models carry ``[random weights]`` in every legend; whether covariates were
past-only or known-future is in every title that shows them.
"""

from __future__ import annotations

import importlib
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from chronoserve._plotting import pyplot, save
from chronoserve.eval.aggregate import (
    Variant,
    closest,
    mean_across_series,
    relative_scores,
    variant_of,
    variants,
    window_scores,
)
from chronoserve.eval.examples import Example
from chronoserve.eval.grid import ANCHOR, SweepSettings, display_covariates
from chronoserve.eval.rundir import ConfigResult


def _covariate_suffix(settings: SweepSettings) -> str:
    if settings.covariates == "none":
        return ""
    return (
        " — covariates KNOWN FUTURE (true values over the horizon)"
        if settings.known_future
        else " — covariates past-only"
    )


def _style(v: Variant, colors: dict[str, Any]) -> dict[str, Any]:
    """One colour per model; covariates change the marker; baselines dashed, random weights dotted."""
    color = colors[v.model]
    style: dict[str, Any] = {"color": color, "marker": "o" if v.covariates == "none" else "s", "markersize": 4}
    if v.kind == "baseline":
        style["linestyle"] = "--"
    elif v.random_weights:
        style["linestyle"] = ":"
    elif v.covariates != "none":
        style["linestyle"] = "-."
    return style


def _colors(results: Sequence[ConfigResult]) -> dict[str, Any]:
    plt = pyplot()
    cycle = plt.get_cmap("tab10").colors
    models = list(dict.fromkeys(r.config.model for r in results))
    return {m: cycle[i % len(cycle)] for i, m in enumerate(models)}


def _line_variants(results: Sequence[ConfigResult]) -> list[Variant]:
    """Each model without covariates, and with all three when it ran with them."""
    return [v for v in variants(results) if v.covariates == "none" or v.covariates.count("+") == 2]


def _headline(results: Sequence[ConfigResult]) -> tuple[int, int]:
    days = {r.config.context_hours // 24 for r in results}
    horizons = {r.config.horizon for r in results}
    return closest(days, 10), closest(horizons, 24)


def plot_error_against(out: Path, settings: SweepSettings, results: Sequence[ConfigResult], axis: str) -> Path:
    """``error_vs_context.png`` (``axis="context"``) or ``error_vs_horizon.png`` (``"horizon"``)."""
    plt = pyplot()
    c_days, h = _headline(results)
    rel = relative_scores(results, "mase")
    colors = _colors(results)
    fig, (ax_rmse, ax_mase) = plt.subplots(1, 2, figsize=(13, 5))
    for v in _line_variants(results):
        points = []
        for r in results:
            c = r.config
            if variant_of(c) != v:
                continue
            if axis == "context" and c.horizon == h:
                points.append(
                    (c.context_hours / 24, mean_across_series(r, "rmse"), rel[c].value if c in rel else np.nan)
                )
            elif axis == "horizon" and c.context_hours == c_days * 24:
                points.append((c.horizon, mean_across_series(r, "rmse"), rel[c].value if c in rel else np.nan))
        if not points:
            continue
        points.sort()
        xs, rmse, mase = zip(*points, strict=True)
        ax_rmse.plot(xs, rmse, label=v.label, **_style(v, colors))
        ax_mase.plot(xs, mase, label=v.label, **_style(v, colors))
    if axis == "context":
        xlabel, fixed, name = "context (days)", f"horizon {h} h", "error_vs_context.png"
        ticks = sorted({r.config.context_hours // 24 for r in results})
    else:
        xlabel, fixed, name = "horizon (hours)", f"context {c_days} days", "error_vs_horizon.png"
        ticks = sorted({r.config.horizon for r in results})
    ax_rmse.set_ylabel("RMSE (µg/m³), mean across series")
    ax_rmse.set_title(f"RMSE ({fixed})", fontsize=10)
    ax_mase.set_ylabel("relative MASE (geometric mean across series)")
    ax_mase.axhline(1.0, color="grey", linewidth=0.8)
    ax_mase.set_title(f"MASE relative to {ANCHOR} ({fixed}); below 1 beats it", fontsize=10)
    for ax in (ax_rmse, ax_mase):
        ax.set_xlabel(xlabel)
        ax.set_xticks(ticks)
        ax.grid(alpha=0.3)
    handles, labels = ax_rmse.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(3, max(1, len(labels))), fontsize=8, frameon=False)
    fig.suptitle(f"Error against {axis}: {len(settings.series)} series{_covariate_suffix(settings)}", fontsize=11)
    rows = (len(labels) + 2) // 3
    fig.tight_layout(rect=(0.0, 0.04 + 0.035 * rows, 1.0, 1.0))
    return save(fig, out / name, layout=False)


def plot_rmse_cdf(out: Path, settings: SweepSettings, results: Sequence[ConfigResult]) -> Path:
    """``rmse_cdf.png``: per-window RMSE distributions at the headline configuration."""
    plt = pyplot()
    c_days, h = _headline(results)
    at = [r for r in results if r.config.context_hours == c_days * 24 and r.config.horizon == h]
    by_model: dict[str, list[ConfigResult]] = defaultdict(list)
    for r in at:
        if r.config.kind == "model":
            by_model[r.config.model].append(r)
    with_sets = {m: rs for m, rs in by_model.items() if len(rs) > 1}
    anchor = next((r for r in at if r.config.model == ANCHOR), None)
    panels: list[tuple[str, list[ConfigResult]]]
    if with_sets:
        panels = [(rs[0].config.label, rs) for rs in with_sets.values()]
    else:
        panels = [("every model, no covariates", [r for r in at if r.config.kind == "model"])]
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 5), squeeze=False)
    cmap = plt.get_cmap("viridis")
    for ax, (title, rs) in zip(axes[0], panels, strict=True):
        for k, r in enumerate(rs):
            values = np.sort([v for s in window_scores(r, "rmse").values() for v in s.values() if np.isfinite(v)])
            if values.size == 0:
                continue
            label = variant_of(r.config).label if not with_sets else display_covariates(r.config.covariates_label)
            color = "black" if with_sets and not r.config.covariates else cmap(k / max(1, len(rs)))
            width = 2.0 if with_sets and not r.config.covariates else 1.2
            ax.step(values, np.arange(1, values.size + 1) / values.size, where="post", label=label, color=color,
                    linewidth=width, zorder=3 if width > 1.5 else 2)  # fmt: skip
        if anchor is not None:
            values = np.sort([v for s in window_scores(anchor, "rmse").values() for v in s.values() if np.isfinite(v)])
            if values.size:
                ax.step(values, np.arange(1, values.size + 1) / values.size, where="post", color="grey",
                        linestyle="--", label=f"{ANCHOR} (reference)")  # fmt: skip
        ax.set_xlabel("RMSE of one window (µg/m³)")
        ax.set_ylabel("fraction of windows with RMSE ≤ x")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    what = "with and without covariates" if with_sets else "without covariates (no covariate sets ran)"
    fig.suptitle(
        f"CDF of per-window RMSE {what}\ncontext {c_days} d, horizon {h} h, "
        f"{len(settings.series)} series{_covariate_suffix(settings)}",
        fontsize=10,
    )
    return save(fig, out / "rmse_cdf.png")


def covariate_improvements(results: Sequence[ConfigResult]) -> dict[str, dict[str, dict[str, float]]]:
    """Per model with covariate sets, per set: per series, ``100 * (1 - RMSE_set / RMSE_none)``,
    the RMSE means taken over the same windows of every context and horizon."""
    base: dict[tuple[str, int, int], ConfigResult] = {}
    for r in results:
        if r.config.kind == "model" and not r.config.covariates:
            base[(r.config.model, r.config.context_hours, r.config.horizon)] = r
    # model -> covariate set -> series -> (RMSE with the set, RMSE without), window by window
    pairs: dict[str, dict[str, dict[str, list[tuple[float, float]]]]] = {}
    for r in results:
        c = r.config
        ref = base.get((c.model, c.context_hours, c.horizon))
        if c.kind != "model" or not c.covariates or ref is None:
            continue
        theirs = window_scores(ref, "rmse")
        per_series = pairs.setdefault(c.model, {}).setdefault(c.covariates_label, {})
        for sid, scores in window_scores(r, "rmse").items():
            for n, value in scores.items():
                other = theirs.get(sid, {}).get(n, np.nan)
                if np.isfinite(value) and np.isfinite(other):
                    per_series.setdefault(sid, []).append((value, other))
    return {
        model: {
            label: {
                sid: 100.0 * (1.0 - float(np.mean([p[0] for p in ps])) / float(np.mean([p[1] for p in ps])))
                for sid, ps in per_series.items()
            }  # fmt: skip
            for label, per_series in sets.items()
        }
        for model, sets in pairs.items()
    }


def plot_covariate_improvement(out: Path, settings: SweepSettings, results: Sequence[ConfigResult]) -> Path | None:
    """``covariate_improvement.png``, or None when no model ran with covariates."""
    improvements = covariate_improvements(results)
    if not improvements:
        return None
    plt = pyplot()
    labels = {r.config.model: r.config.label for r in results}
    fig, axes = plt.subplots(1, len(improvements), figsize=(max(7, 1.3 * 8) * len(improvements), 5.5), squeeze=False)
    for ax, (model, sets) in zip(axes[0], improvements.items(), strict=True):
        names = list(sets)
        means = [float(np.mean(list(sets[n].values()))) for n in names]
        xs = np.arange(len(names))
        ax.bar(xs, means, color=["tab:green" if m > 0 else "tab:red" for m in means], alpha=0.6,
               label="mean across series")  # fmt: skip
        for x, n in zip(xs, names, strict=True):
            values = list(sets[n].values())
            ax.scatter(np.full(len(values), x), values, s=10, color="black", zorder=3,
                       label="one series" if x == 0 else None)  # fmt: skip
        ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.set_xticks(xs, [display_covariates(n).replace("+", "\n+ ") for n in names], fontsize=8)
        ax.set_xlabel("covariate set")
        ax.set_ylabel("RMSE improvement over no covariates (%)")
        ax.set_title(labels.get(model, model), fontsize=10)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8)
    fig.suptitle(
        "Improvement of each covariate set over none (same windows, every context and horizon)"
        + _covariate_suffix(settings),
        fontsize=11,
    )
    return save(fig, out / "covariate_improvement.png")


def plot_forecasts(out: Path, settings: SweepSettings, examples: Sequence[Example]) -> Path | None:
    """``forecast_vs_truth.png``: one row per day, one column per model (and covariate set)."""
    if not examples:
        return None
    plt = pyplot()
    mdates: Any = importlib.import_module("matplotlib.dates")

    days = sorted({e.forecast_start for e in examples})
    columns = list(dict.fromkeys((e.label, e.covariates) for e in examples))
    fig, axes = plt.subplots(
        len(days), len(columns), figsize=(3.3 * len(columns), 2.8 * len(days)), squeeze=False, sharey="row"
    )
    for i, day in enumerate(days):
        for j, (label, cov) in enumerate(columns):
            ax = axes[i][j]
            e = next((x for x in examples if x.forecast_start == day and (x.label, x.covariates) == (label, cov)), None)
            if e is None:
                ax.set_visible(False)
                continue
            ax.plot(e.history_times, e.history, color="grey", linewidth=1, label="context")
            ax.plot(e.times, e.truth, color="black", linewidth=1.3, label="truth")
            ax.plot(e.times, e.median, color="tab:blue", linewidth=1.3, label="median")
            ax.fill_between(e.times, e.lower, e.upper, color="tab:blue", alpha=0.25, label="80 % band (q0.1–q0.9)")
            ax.xaxis.set_major_formatter(mdates.DateFormatter("%b %d"))
            ax.xaxis.set_major_locator(mdates.DayLocator())
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
            if i == 0:
                title = label if cov == "none" else f"{label}\n+ covariates {display_covariates(cov)}"
                ax.set_title(title, fontsize=8)
            if j == 0:
                ax.set_ylabel(f"{day:%Y-%m-%d}\nPM2.5 (µg/m³)", fontsize=8)
            if i == len(days) - 1:
                ax.set_xlabel("local time (ticks at 00:00)", fontsize=8)
    axes[0][0].legend(fontsize=6, loc="upper left")
    e0 = examples[0]
    fig.suptitle(
        f"Forecast against truth: {e0.series}, from 00:00 of each day, horizon {len(e0.times)} h"
        + _covariate_suffix(settings),
        fontsize=11,
    )
    return save(fig, out / "forecast_vs_truth.png")


def plot_sweep(
    out: Path, settings: SweepSettings, results: Sequence[ConfigResult], examples: Sequence[Example]
) -> list[Path]:
    """Every plot of the module docstring that has data; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [
        plot_error_against(out, settings, results, "context"),
        plot_error_against(out, settings, results, "horizon"),
        plot_rmse_cdf(out, settings, results),
    ]
    for extra in (plot_covariate_improvement(out, settings, results), plot_forecasts(out, settings, examples)):
        if extra is not None:
            paths.append(extra)
    return paths


# ---------------------------------------------------------------------------------------------
# eval --perf


def _spans(rows: Sequence[Any]) -> list[tuple[str, str, float, float]]:
    """(model, label, first start, last end) of each model's configurations, in order."""
    out: list[tuple[str, str, float, float]] = []
    for row in rows:
        c = row.config
        if out and out[-1][0] == c.model:
            out[-1] = (c.model, out[-1][1], out[-1][2], row.end_s)
        else:
            out.append((c.model, c.label, row.start_s, row.end_s))
    return out


def plot_perf(
    out: Path,
    settings: SweepSettings,
    rows: Sequence[Any],
    batches: Sequence[dict[str, Any]],
    samples: Sequence[dict[str, Any]],
    model_bytes: dict[str, int],
    budget: float,
) -> list[Path]:
    """``perf_over_time.png`` and ``perf_per_model.png`` from ``eval --perf``'s records."""
    plt = pyplot()
    import os

    cores = os.cpu_count() or 1
    labels = {r.config.model: r.config.label for r in rows}
    models = list(labels)
    cycle = plt.get_cmap("tab10").colors
    colors = {m: cycle[i % len(cycle)] for i, m in enumerate(models)}
    random_note = " (random weights: timings only)" if any(r.config.random_weights for r in rows) else ""
    paths = []

    fig, (ax_lat, ax_cpu, ax_mem) = plt.subplots(3, 1, figsize=(12, 9), sharex=True)
    for model in models:
        measured = [b for b in batches if b.get("model") == model and b.get("phase") == "measure"]
        ax_lat.scatter([b["time_s"] for b in measured], [1000 * b["latency_s"] for b in measured], s=6, alpha=0.6,
                       color=colors[model], label=labels[model])  # fmt: skip
    ax_lat.set_yscale("log")
    ax_lat.set_ylabel("batch latency (ms, log)")
    ax_lat.legend(fontsize=8, loc="upper left", markerscale=2)
    t = [s["time_s"] for s in samples]

    def col(name: str, scale: float = 1.0) -> list[float]:
        return [np.nan if s.get(name) is None else float(s[name]) * scale for s in samples]

    ax_cpu.plot(t, col("cpu_percent"), label="system, all cores", color="black", linewidth=1)
    ax_cpu.plot(t, col("cpu_user_percent"), label="system user", color="tab:blue", linewidth=0.8, alpha=0.7)
    ax_cpu.plot(t, col("cpu_system_percent"), label="system kernel", color="tab:orange", linewidth=0.8, alpha=0.7)
    ax_cpu.plot(t, col("proc_cpu_percent", 1.0 / cores), label="this process", color="tab:green", linewidth=1.2)
    ax_cpu.set_ylabel(f"CPU (% of all {cores} cores)")
    ax_cpu.set_ylim(0, 105)
    ax_cpu.legend(fontsize=8, loc="center left", ncol=4, framealpha=0.9)
    ax_mem.plot(t, col("proc_rss_bytes", 1.0 / 2**20), color="tab:purple", label="process RSS")
    ax_mem.set_ylabel("process RSS (MiB)")
    ax_mem.set_xlabel("time since the start of the run (s)")
    for model, label, start, end in _spans(rows):
        for ax in (ax_lat, ax_cpu, ax_mem):
            ax.axvspan(start, end, color=colors[model], alpha=0.08)
        ax_mem.annotate(label, xy=((start + end) / 2, 0.02), xycoords=("data", "axes fraction"), ha="center",
                        fontsize=7, color=colors[model])  # fmt: skip
    for ax in (ax_lat, ax_cpu, ax_mem):
        ax.grid(alpha=0.3)
    fig.suptitle(
        f"eval --perf: continuous forecasting, {budget:g} s per configuration, {len(rows)} configurations"
        f"{random_note}\nshaded: each model's configurations; unshaded: imports, model loads and warm-up",
        fontsize=10,
    )
    paths.append(save(fig, out / "perf_over_time.png"))

    fig, (ax_lat, ax_tp, ax_mem) = plt.subplots(1, 3, figsize=(15, 5))
    per_forecast = []
    for model in models:
        per_forecast.append(
            [1000 * lat / size for r in rows if r.config.model == model for lat, size in r.batches if size]
        )
    ax_lat.boxplot(per_forecast, showfliers=False)
    ax_lat.set_xticks(range(1, len(models) + 1), [labels[m].replace(" [", "\n[") for m in models], fontsize=7)
    ax_lat.set_ylabel("batch latency / batch size (ms per forecast)")
    ax_lat.set_title("Latency per forecast (every configuration)", fontsize=10)
    xs = np.arange(len(models))
    throughput = []
    for model in models:
        mine = [r for r in rows if r.config.model == model]
        seconds = sum(r.seconds for r in mine)
        throughput.append(sum(r.forecasts for r in mine) / seconds if seconds else 0.0)
    ax_tp.bar(xs, throughput, color=[colors[m] for m in models])
    ax_tp.set_xticks(xs, [labels[m].replace(" [", "\n[") for m in models], fontsize=7)
    ax_tp.set_ylabel("forecasts per second")
    ax_tp.set_title("Throughput (all configurations of the model)", fontsize=10)
    peak = [max((max(r.rss) for r in rows if r.config.model == m and r.rss), default=0) / 2**20 for m in models]
    weights = [model_bytes.get(m, 0) / 2**20 for m in models]
    ax_mem.bar(xs - 0.2, peak, width=0.4, color=[colors[m] for m in models], label="peak process RSS while it ran")
    ax_mem.bar(xs + 0.2, weights, width=0.4, color="grey", label="its weights (parameters × dtype size)")
    ax_mem.set_xticks(xs, [labels[m].replace(" [", "\n[") for m in models], fontsize=7)
    ax_mem.set_ylabel("MiB")
    ax_mem.set_ylim(0, 1.25 * max([*peak, *weights, 1.0]))
    ax_mem.set_title("Memory per model\n(one engine per model; RSS includes what ran before)", fontsize=10)
    ax_mem.legend(fontsize=8, loc="upper left")
    for ax in (ax_lat, ax_tp, ax_mem):
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(
        f"eval --perf per model: {len(settings.series)} series, {budget:g} s per configuration{random_note}",
        fontsize=11,
    )
    paths.append(save(fig, out / "perf_per_model.png"))
    return paths
