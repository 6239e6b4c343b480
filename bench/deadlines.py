"""Deadlines side by side: ``deadline`` against the best fixed ``batched``, the BentoML port and ``auto``.

    python bench/deadlines.py                  # the whole comparison (about 12 min on 2 cores)
    python bench/deadlines.py --quick          # a small grid, 300 requests (about 2 min)

One trace with deadline classes, written as ``traces/deadlines.jsonl`` was (``chronoserve trace
gen --arrivals onoff --rate 20 --burst-factor 4 --burst-share 0.2 --burst-seconds 2 --phase-cv 0
--seed 0 --deadline-classes interactive:150:0.2:1,dashboard:1000:0.5:2,batch:5000:0.3:3``) but
with ``--requests`` requests (default 1500: at 1.5x capacity the shipped 600 last about 3 s, too
short for a backlog to build), is replayed in-process, open loop, on one engine configuration
(2 workers x 1 torch thread, models loaded before the clock):

1. **Capacity**: the trace sent all at once on ``batched`` (B = 64, Δt = 10 ms), the best of
   two runs: answers per second with a backlog always waiting. One cost model serves every run
   and keeps learning (as a running server's does); it starts from these runs.
2. **Load points**: the trace retimed to a mean of ``f x capacity`` for each factor ``f``
   (default 0.5, 1, 1.5, 2). At every point, every policy:
   - ``deadline`` (its defaults);
   - ``batched`` on a grid of fixed B x Δt; the best by goodput is "best fixed" *at that point*
     (grid-searched on the same trace and load, as the goal asks);
   - ``bentoml`` (the port of BentoML's adaptive dispatcher) for each ``max_latency`` on a
     grid (one latency limit per endpoint, as BentoML has); the best by goodput;
   - ``batched`` with ``max_batch=auto max_wait=auto`` and ``slo_p95`` the tightest class.
3. **Goals**: below capacity ``deadline`` meets >= 99 % of deadlines; at 1.5x its goodput is
   >= 1.3x the best fixed and >= 1.3x the best BentoML port, no request runs after its deadline
   (the engine refuses to start one: counted as expired, never late-started), interactive
   attainment >= 99 %; ``auto``'s goodput within 10 % of the best fixed at every point.

Writes ``results/deadlines/``: ``results.json`` (every run's summary), ``table.txt``, and PNGs
(goodput and attainment against offered load; attainment per class at each point). Random
weights: the timings are real, the forecasts are not. Compare only numbers from one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
REQUESTS = 1500
CLASSES = (("interactive", 150.0, 0.2, 1), ("dashboard", 1000.0, 0.5, 2), ("batch", 5000.0, 0.3, 3))
FACTORS = (0.5, 1.0, 1.5, 2.0)
#: batched's grid: B x Δt (seconds).
GRID_B = (4, 16, 64)
GRID_WAIT = (0.002, 0.02)
#: The BentoML port's one latency limit per endpoint (seconds): each class's deadline.
BENTO_LATENCY = (0.15, 1.0, 5.0)
WORKERS, THREADS = 2, 1


@dataclass(frozen=True)
class Run:
    """One replay: a policy with options, at one load factor, and what it measured."""

    family: str
    """deadline, fixed, bentoml, auto, or capacity."""
    label: str
    factor: float
    offered: float
    summary: Any
    priority1: dict[str, list[int]] = field(default_factory=dict)
    """Per model, [met, requests] of the priority-1 class."""

    @property
    def goodput(self) -> float:
        slo = self.summary.slo
        return slo.goodput if slo is not None else 0.0

    def row(self) -> dict[str, Any]:
        from chronoserve.replay.sweep import load_point

        s = self.summary
        slo = s.slo
        return {
            "family": self.family,
            "label": self.label,
            **load_point(self.factor, self.offered, s),
            "goodput_per_s": self.goodput,
            "outcomes": slo.overall.counts if slo else None,
            "classes": [c.to_dict() for c in slo.classes] if slo else [],
            "policy": s.meta.get("target", {}).get("policy"),
            "priority1_by_model": self.priority1,
        }


def policies(quick: bool) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(family, label, policy, options) of every configuration replayed at each load point."""
    grid_b, grid_wait = ((4, 64), (0.005,)) if quick else (GRID_B, GRID_WAIT)
    out: list[tuple[str, str, str, dict[str, Any]]] = [("deadline", "deadline", "deadline", {"max_batch": 64})]
    for b in grid_b:
        for wait in grid_wait:
            out.append(("fixed", f"batched B={b} Δt={wait * 1000:g}ms", "batched", {"max_batch": b, "max_wait": wait}))
    for latency in BENTO_LATENCY:
        out.append(("bentoml", f"bentoml {latency * 1000:g}ms", "bentoml", {"max_batch": 64, "max_latency": latency}))
    out.append(("auto", "batched auto", "batched", {"max_batch": "auto", "max_wait": "auto", "slo_p95": 0.15}))
    return out


async def replay_once(
    requests: Sequence[Any], policy: str, options: dict[str, Any], label: str, costs: Any = None
) -> Any:
    """One replay on a fresh engine (its ``ReplayResult``); ``costs``, a cost model carried over from
    the runs before (as a server that has been running has one), or a new one."""
    from chronoserve.replay import InProcessTarget, replay

    models = sorted({r.model_name for r in requests})
    target = InProcessTarget(
        policy, warm_models=models, policy_options=options, costs=costs, workers=WORKERS, torch_threads=THREADS
    )
    return await replay(requests, target, label=label, progress=False, plots=False, meta={"trace": "deadlines"})


async def alone(requests: Sequence[Any]) -> dict[str, dict[str, float]]:
    """Each model's priority-1 requests (at most 40) one at a time on an idle engine: which the
    tightest class could meet even with the machine to itself."""
    import time as clock

    from chronoserve.replay import InProcessTarget

    out: dict[str, dict[str, float]] = {}
    for model in sorted({r.model_name for r in requests}):
        mine = [r for r in requests if r.model_name == model and r.priority == 1][:40]
        if not mine:
            continue
        target = InProcessTarget("batched", warm_models=[model], policy_options={"max_wait": 0.0}, workers=WORKERS)
        await target.start()
        seconds = []
        for request in mine:
            started = clock.perf_counter()
            await target.send(request)
            seconds.append(clock.perf_counter() - started)
        await target.close()
        over = sum(s * 1000 > r.deadline_ms for s, r in zip(seconds, mine, strict=True))
        seconds.sort()
        out[model] = {
            "requests": len(mine),
            "median_ms": 1000 * seconds[len(seconds) // 2],
            "p90_ms": 1000 * seconds[int(0.9 * len(seconds))],
            "over_deadline": over,
        }
    return out


async def capacity(requests: Sequence[Any], costs: Any) -> float:
    """Answers per second with everything sent at once (a backlog always waiting); the best of two.
    The cost model learns from these runs and from one at a moderate batch size (B = 8)."""
    import dataclasses

    burst = [dataclasses.replace(r, t=0.0, deadline_ms=None, priority=None) for r in requests]
    best = 0.0
    for options in ({"max_batch": 64, "max_wait": 0.01}, {"max_batch": 64, "max_wait": 0.01}, {"max_batch": 8}):
        summary = (await replay_once(burst, "batched", options, "capacity", costs)).summary
        if options["max_batch"] == 64:
            best = max(best, summary.throughput)
    return best


def bench_trace(n: int) -> Any:
    """traces/deadlines.jsonl's generator settings with ``n`` requests (600: that very trace)."""
    from chronoserve.traces import generate

    return generate(
        n, "onoff", rate=20.0, seed=0, burst_factor=4.0, burst_share=0.2, burst_seconds=2.0, phase_cv=0.0,
        deadline_classes=CLASSES,
    )  # fmt: skip


async def run(trace: Any, factors: Sequence[float], quick: bool, out: Path) -> dict[str, Any]:
    from chronoserve.costs import CostModel
    from chronoserve.traces import scale_time

    costs = CostModel()  # one for every run, learning throughout: a running server's
    started = time.monotonic()
    cap = await capacity(trace.requests, costs)
    print(f"capacity: {cap:.1f} answers/s (the trace as a burst, batched B=64)", file=sys.stderr)
    idle = await alone(trace.requests)
    runs: list[Run] = []
    configs = policies(quick)
    for factor in factors:
        speed = factor * cap / trace.rate
        scaled = scale_time(trace, speed)
        for family, label, policy, options in configs:
            result = await replay_once(scaled.requests, policy, options, label, costs)
            summary = result.summary
            run = Run(family, label, factor, scaled.rate, summary, priority1(result.records))
            runs.append(run)
            attain = summary.slo.overall.attainment * 100 if summary.slo else float("nan")
            print(
                f"  x{factor:g} ({scaled.rate:.1f}/s) {label:<26s} goodput {run.goodput:7.2f}/s  "
                f"attainment {attain:5.1f} %  ({time.monotonic() - started:.0f} s)",
                file=sys.stderr,
            )
    results = {
        "trace": f"deadlines ({len(trace)} requests)",
        "requests": len(trace),
        "capacity_per_s": cap,
        "priority1_alone": idle,
        "factors": list(factors),
        "engine": {"workers": WORKERS, "torch_threads": THREADS},
        "machine": {"python": platform.python_version(), "machine": platform.machine(), "cpus": _cpus()},
        "random_weights": True,
        "seconds": time.monotonic() - started,
        "runs": [r.row() for r in runs],
        "goals": goals(runs),
    }
    await asyncio.to_thread(write, out, results)
    return results


def write(out: Path, results: dict[str, Any]) -> None:
    """``results.json``, ``table.txt`` and the PNGs; the table printed."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    table = format_results(results)
    (out / "table.txt").write_text(table + "\n")
    print(table)
    for path in plot(out, results):
        print(f"wrote {path}")


def priority1(records: Sequence[Any]) -> dict[str, list[int]]:
    """Per model, [met, requests] of the priority-1 class: which models the tightest class can make."""
    out: dict[str, list[int]] = {}
    for r in records:
        if r.priority == 1:
            counts = out.setdefault(r.model, [0, 0])
            counts[0] += int(r.met)
            counts[1] += 1
    return dict(sorted(out.items()))


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def best(runs: Sequence[Run], family: str, factor: float) -> Run:
    return max((r for r in runs if r.family == family and r.factor == factor), key=lambda r: r.goodput)


def _class_attainment(run: Run, priority: int) -> float | None:
    slo = run.summary.slo
    if slo is None:
        return None
    mine = [c for c in slo.classes if c.priority == priority]
    total = sum(c.requests for c in mine)
    return sum(c.counts["met"] for c in mine) / total if total else None


def goals(runs: Sequence[Run]) -> dict[str, Any]:
    """The issue's goals at every load point: the numbers and whether each was met."""
    out: dict[str, Any] = {}
    for factor in sorted({r.factor for r in runs}):
        deadline = best(runs, "deadline", factor)
        fixed, bento, auto = best(runs, "fixed", factor), best(runs, "bentoml", factor), best(runs, "auto", factor)
        slo = deadline.summary.slo
        point = {
            "deadline_attainment": slo.overall.attainment if slo else None,
            "deadline_goodput": deadline.goodput,
            "best_fixed": fixed.label,
            "best_fixed_goodput": fixed.goodput,
            "best_bentoml": bento.label,
            "best_bentoml_goodput": bento.goodput,
            "vs_fixed": deadline.goodput / fixed.goodput if fixed.goodput else None,
            "vs_bentoml": deadline.goodput / bento.goodput if bento.goodput else None,
            "high_priority_attainment": _class_attainment(deadline, 1),
            "high_priority_by_model": {m: met / n for m, (met, n) in deadline.priority1.items() if n},
            "deadline_late": slo.overall.counts["late"] if slo else None,
            "auto_goodput": auto.goodput,
            "auto_vs_fixed": auto.goodput / fixed.goodput if fixed.goodput else None,
        }
        out[f"x{factor:g}"] = point
    return out


def feasible_attainment(row: dict[str, Any], idle: dict[str, dict[str, float]]) -> tuple[float, list[str]] | None:
    """A run's attainment without the priority-1 requests of models that miss the deadline alone on an
    idle engine more than one time in ten (what no scheduler could meet here); and those models."""
    infeasible = sorted(m for m, a in idle.items() if a["over_deadline"] > 0.1 * a["requests"])
    outcomes, by_model = row["outcomes"], row.get("priority1_by_model", {})
    if not outcomes:
        return None
    met = outcomes["met"] - sum(by_model.get(m, [0, 0])[0] for m in infeasible)
    total = sum(outcomes.values()) - sum(by_model.get(m, [0, 0])[1] for m in infeasible)
    return (met / total if total else float("nan")), infeasible


def format_results(results: dict[str, Any]) -> str:
    lines = [
        f"{results['trace']}: {results['requests']} requests; capacity {results['capacity_per_s']:.1f} answers/s "
        f"(random weights: timings only); {results['seconds']:.0f} s",
        "",
        f"{'load':>5s} {'policy':<26s}{'offered/s':>10s}{'goodput/s':>10s}{'attain':>8s}"
        f"{'late':>6s}{'shed':>6s}{'expired':>8s}{'p99 ms':>8s}{'CPU-s/fc':>10s}",
    ]
    for r in results["runs"]:
        o = r["outcomes"] or {}
        cpu = r["cpu_s_per_forecast"]
        load = "x" + format(r["factor"], "g")
        lines.append(
            f"{load:>5s} {r['label']:<26s}{r['offered_per_s']:10.1f}{r['goodput_per_s']:10.2f}"
            f"{(r['attainment'] or 0) * 100:7.1f}%{o.get('late', 0):6d}{o.get('shed', 0):6d}{o.get('expired', 0):8d}"
            f"{r['p99_ms']:8.0f}{cpu if cpu is not None else float('nan'):10.4f}"
        )
    lines += ["", "priority 1 requests alone on an idle engine (what the tightest class can meet at best)"]
    for model, a in results.get("priority1_alone", {}).items():
        lines.append(
            f"  {model}: median {a['median_ms']:.0f} ms, p90 {a['p90_ms']:.0f} ms; "
            f"{a['over_deadline']} of {a['requests']} over their deadline"
        )
    lines += ["", "goals"]
    for point, g in results["goals"].items():
        lines.append(
            f"  {point}: deadline attainment {g['deadline_attainment'] * 100:.1f} %,"
            f" goodput {g['deadline_goodput']:.2f}/s"
            f" = {g['vs_fixed']:.2f}x best fixed ({g['best_fixed']}, {g['best_fixed_goodput']:.2f}/s)"
            f" and {g['vs_bentoml']:.2f}x best BentoML port ({g['best_bentoml']}, {g['best_bentoml_goodput']:.2f}/s);"
            f" priority 1 attainment {(g['high_priority_attainment'] or 0) * 100:.1f} %, late {g['deadline_late']};"
            f" auto {g['auto_goodput']:.2f}/s = {g['auto_vs_fixed']:.2f}x best fixed"
            + "".join(
                f"\n      priority 1 on {m}: {v * 100:.1f} %" for m, v in g.get("high_priority_by_model", {}).items()
            )
            + _feasible_line(results, point)
        )
    return "\n".join(lines)


def _feasible_line(results: dict[str, Any], point: str) -> str:
    idle = results.get("priority1_alone")
    rows = [r for r in results["runs"] if r["family"] == "deadline" and f"x{r['factor']:g}" == point]
    found = feasible_attainment(rows[0], idle) if idle and rows else None
    if found is None or not found[1]:
        return ""
    value, models = found
    return f"\n      deadline attainment without the priority-1 requests of {', '.join(models)}: {value * 100:.1f} %"


def plot(out: Path, results: dict[str, Any]) -> list[Path]:
    """Goodput and attainment against offered load (the best of each family); attainment per class."""
    from chronoserve._plotting import pyplot, save

    plt = pyplot()
    runs = results["runs"]
    factors = results["factors"]
    families = [("deadline", "deadline"), ("fixed", "best fixed batched"), ("bentoml", "best BentoML port"),
                ("auto", "batched auto")]  # fmt: skip

    def pick(family: str, factor: float) -> dict[str, Any]:
        mine = [r for r in runs if r["family"] == family and r["factor"] == factor]
        return max(mine, key=lambda r: r["goodput_per_s"])

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    for family, name in families:
        points = [pick(family, f) for f in factors]
        xs = [p["offered_per_s"] for p in points]
        left.plot(xs, [p["goodput_per_s"] for p in points], marker="o", label=name)
        right.plot(xs, [(p["attainment"] or 0) * 100 for p in points], marker="o", label=name)
    cap = results["capacity_per_s"]
    for ax in (left, right):
        ax.axvline(cap, color="grey", linestyle="--", linewidth=1)
        ax.text(cap, 0.02, " capacity", color="grey", fontsize=8, transform=ax.get_xaxis_transform())
        ax.set_xlabel("offered load (requests per second)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    left.set_ylabel("goodput (answers within deadline per second)")
    left.set_title("Goodput")
    right.set_ylabel("deadline attainment (%)")
    right.set_ylim(0, 102)
    right.set_title("Attainment (refused, expired and late all miss)")
    fig.suptitle(f"{results['trace']}: deadline policies side by side (random weights: timings only)", fontsize=11)
    paths = [save(fig, out / "deadlines-load.png")]

    fig, axes = plt.subplots(1, len(factors), figsize=(3.6 * len(factors), 4.2), squeeze=False, sharey=True)
    for ax, factor in zip(axes[0], factors, strict=True):
        chosen = [pick(fam, factor) for fam, _ in families]
        classes = [c["name"] for c in chosen[0]["classes"]]
        width = 0.8 / len(chosen)
        for k, (run, (_, name)) in enumerate(zip(chosen, families, strict=True)):
            by = {c["name"]: c["attainment"] * 100 for c in run["classes"]}
            ax.bar([i + k * width for i in range(len(classes))], [by.get(c, 0) for c in classes], width, label=name)
        ax.set_xticks([i + width * (len(chosen) - 1) / 2 for i in range(len(classes))], classes, fontsize=8)
        ax.set_title(f"x{factor:g} capacity ({chosen[0]['offered_per_s']:.0f}/s)", fontsize=9)
        ax.set_ylim(0, 105)
        ax.grid(alpha=0.3, axis="y")
    axes[0, 0].set_ylabel("attainment per class (%)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(families), fontsize=8)  # below the panels
    fig.suptitle("Deadline attainment per class (the best of each family at each load)", fontsize=11)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    paths.append(save(fig, out / "deadlines-classes.png", layout=False))
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--requests", type=int, default=None, help=f"requests in the trace (default {REQUESTS}; 300 quick)"
    )
    parser.add_argument("--factors", default=",".join(f"{f:g}" for f in FACTORS), help="loads, x capacity")
    parser.add_argument("--quick", action="store_true", help="a small grid and 300 requests")
    parser.add_argument("--out", default=str(ROOT / "results" / "deadlines"))
    args = parser.parse_args(argv)
    factors = tuple(float(f) for f in args.factors.split(","))
    n = args.requests or (300 if args.quick else REQUESTS)
    from chronoserve.replay import preload_torch
    from chronoserve.traces import write_trace

    trace = bench_trace(n)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_trace(trace, out / "trace.jsonl")
    preload_torch()
    import transformers

    transformers.utils.logging.disable_progress_bar()  # one "Loading weights" bar per model and run
    asyncio.run(run(trace, factors, args.quick, out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
