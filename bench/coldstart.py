"""Cold start, side by side in one run: new workers, tiers, concurrent loads, eviction, placement.

    python bench/coldstart.py                          # everything (about 20 minutes on 2 cores)
    python bench/coldstart.py --only zipf,placement    # some sections
    python bench/coldstart.py --quick                  # tiny models and a short trace (a smoke test)

Sections (``--only``):

- ``workers``: a new worker process to its first forecast, spawned (a fresh interpreter
  importing torch, transformers, chronos) vs from chronoserve's fork server
  (``bench/coldstart_workers.py``). Goal: <= 0.25 s from the fork server, >= 20x faster.
- ``tiers``: each family's load from disk (``from_pretrained``, and chronoserve's own loader)
  and its promotion from the host tier, torch and ONNX (``bench/coldstart_loads.py``). Goal:
  host >= 2x faster than disk for every family.
- ``concurrent``: N = 4 models loaded one after another vs at once (``bench/coldstart_loads.py``).
  Goal: at once <= 0.6x the serialised total.
- ``zipf``: ``traces/zipf-models.jsonl`` (16 random-weight models, Zipf popularity, on-off
  bursts) replayed in-process on ``batched`` with a memory budget holding a third of the
  models' bytes, five ways: LRU loading through ``from_pretrained`` (the loader before this
  work), LRU, LRU + a host tier of another third, GDSF, GDSF + the host tier; on each backend
  of ``--backends`` (torch, the library's default; onnx, ``serve``'s). Every model is loaded
  once before the clocks start (materialised, exported). Hit ratio (requests whose model was
  resident), loads by tier, time spent loading, p50/p99. Goal: GDSF + host tier <= 0.5x LRU's
  loading time, p99 <= 0.7x.
- ``placement``: the same trace on two engines in one process (one worker and one torch
  thread each, each with a third of the bytes and a host tier), requests placed by readiness
  (:mod:`chronoserve.placement`) vs round-robin vs random.

Every model is random-weight (its name says so): timings only. Writes ``--out`` (default
``results/coldstart``): ``coldstart.json`` (every number), ``coldstart.md`` (the tables) and
``coldstart.png``. Compare only numbers from one run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from chronoserve.events import EngineObserver
from chronoserve.placement import PLACEMENTS
from chronoserve.replay.targets import InProcessTarget

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("workers", "tiers", "concurrent", "zipf", "placement")
ZIPF_TRACE = ROOT / "traces" / "zipf-models.jsonl"
#: The ways the Zipf section runs: eviction order, host tier or not, and the loader (``fastload``,
#: or ``from_pretrained`` under the lock for every load: the loader before this work).
ZIPF_CONFIGS: dict[str, tuple[str, bool, bool]] = {
    "lru, from_pretrained": ("lru", False, False),
    "lru": ("lru", False, True),
    "lru+host": ("lru", True, True),
    "gdsf": ("gdsf", False, True),
    "gdsf+host": ("gdsf", True, True),
}
QUICK_MODELS = ("random/tiny-chronos-bolt", "random/tiny-chronos-2", "random/tiny-chronos-t5")


@dataclass
class LoadLog(EngineObserver):
    """Loads by tier and the seconds they took (an engine observer)."""

    loads: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    demotions: int = 0

    def model_moved(self, model: str, source: str, target: str, seconds: float) -> None:
        if target == "resident":
            self.loads[source] = self.loads.get(source, 0) + 1
            self.seconds += seconds
        elif source == "resident":
            self.demotions += 1


# -- the trace's models ---------------------------------------------------------------------------


def trace_models(trace: Any) -> dict[str, int]:
    """The trace's models and their sizes in bytes (resolved, no weights read)."""
    from chronoserve.models.loader import ChronosLoader

    loader = ChronosLoader()
    return {name: loader.resolve(loader.canonical(name)).est_nbytes for name in sorted(trace.models())}


def prepare(names: Sequence[str], backend: str) -> None:
    """Load every model once before any clock starts: random checkpoints materialised, ONNX
    exports written and checked (the first time: minutes), the loader's imports done."""
    from chronoserve.models.loader import ChronosLoader

    loader = ChronosLoader(backend=backend)
    loader.import_modules()
    for name in names:
        print(f"  preparing {name} ({backend}) ...", file=sys.stderr, flush=True)
        loader.load(loader.resolve(loader.canonical(name))).close()


# -- replays ----------------------------------------------------------------------------------------


class GroupTarget(InProcessTarget):
    """An :class:`~chronoserve.group.EngineGroup` of ``engines`` engines built from ``settings``
    (each with a loader of its own) as a replay target."""

    def __init__(self, placement: str, engines: int, settings: Any, observers: Sequence[EngineObserver]) -> None:
        super().__init__(settings.policy)
        self.label = placement
        self.placement = placement
        self.count = engines
        self.settings = settings
        self.observers = list(observers)
        self.group: Any = None

    async def start(self) -> None:
        from chronoserve.data import SeriesStore
        from chronoserve.group import EngineGroup

        self.store = SeriesStore.embedded()
        engines = [self.settings.engine(observers=self.observers) for _ in range(self.count)]
        self.group = EngineGroup(engines, self.placement)
        await self.group.start()
        self.engine = self.group  # send() forecasts on it: the group places each request

    async def close(self) -> None:
        if self.group is not None:
            await self.group.close()

    def describe(self) -> dict[str, Any]:
        return {"label": self.label, "mode": "in-process", "engines": self.count, "placement": self.placement}


async def _replay(requests: Sequence[Any], target: InProcessTarget, log: LoadLog) -> dict[str, Any]:
    from chronoserve.replay import replay

    result = await replay(requests, target, progress=True, plots=False)
    s = result.summary
    e2e = s.percentiles["end_to_end"]
    return {
        "requests": s.requests,
        "ok": s.ok,
        "errors": s.errors,
        "hit_ratio": 1.0 - s.cold_starts / s.ok if s.ok else None,
        "cold_starts": s.cold_starts,
        "loads": dict(sorted(log.loads.items())),
        "loads_total": sum(log.loads.values()),
        "load_seconds": log.seconds,
        "p50_ms": e2e[50.0] * 1000,
        "p99_ms": e2e[99.0] * 1000,
        "throughput": s.throughput,
    }


def _setup(trace_path: Path, limit: int | None, backend: str) -> tuple[list[Any], dict[str, int], int, int]:
    """The trace's requests (its first ``limit``), its models' sizes, every model loaded once
    (:func:`prepare`), and the budgets: a third of the models' bytes resident, a third in host memory."""
    from chronoserve.traces import read_trace

    trace = read_trace(trace_path)
    requests = list(trace.requests[:limit] if limit else trace.requests)
    sizes = trace_models(trace)
    prepare(list(sizes), backend)
    third = sum(sizes.values()) // 3
    return requests, sizes, third, third


def measure_zipf(trace_path: Path, *, limit: int | None = None, backend: str = "torch") -> dict[str, Any]:
    """The Zipf trace each way of :data:`ZIPF_CONFIGS`; one row per way, with the budgets."""
    from chronoserve.models.loader import ChronosLoader
    from chronoserve.settings import EngineSettings

    requests, sizes, budget, host = _setup(trace_path, limit, backend)
    rows = []
    for label, (eviction, with_host, fastload) in ZIPF_CONFIGS.items():
        log = LoadLog()
        settings = EngineSettings(
            policy="batched",
            policy_options={"max_resident": len(sizes), "memory_budget": budget, "eviction": eviction},
            backend=backend,
            host_budget=host if with_host else None,
        )
        loader = ChronosLoader(backend=backend, onnx_threads=settings.threads_per_worker(), fastload=fastload)
        kwargs = settings.engine_kwargs(loader)
        print(f"  zipf ({backend}): {label} ...", file=sys.stderr, flush=True)
        target = InProcessTarget(kwargs.pop("policy"), observers=[log], **kwargs)
        target.label = label
        row = asyncio.run(_replay(requests, target, log))
        rows.append({"config": label, "eviction": eviction, "host_tier": with_host, "fastload": fastload, **row})
    return {
        "trace": str(trace_path.relative_to(ROOT) if trace_path.is_relative_to(ROOT) else trace_path),
        "requests": len(requests),
        "models": len(sizes),
        "model_bytes": sum(sizes.values()),
        "memory_budget": budget,
        "host_budget": host,
        "backend": backend,
        "rows": rows,
    }


def measure_placement(
    trace_path: Path, *, engines: int = 2, limit: int | None = None, backend: str = "torch"
) -> dict[str, Any]:
    """The Zipf trace on ``engines`` engines, placed by readiness, round-robin and at random."""
    from chronoserve.settings import EngineSettings

    requests, sizes, budget, host = _setup(trace_path, limit, backend)
    rows = []
    for placement in PLACEMENTS:
        log = LoadLog()
        settings = EngineSettings(
            policy="batched",
            policy_options={"max_resident": len(sizes), "memory_budget": budget, "eviction": "gdsf"},
            backend=backend,
            host_budget=host,
            workers=1,
            torch_threads=1,
        )
        print(f"  placement ({backend}): {placement} ...", file=sys.stderr, flush=True)
        row = asyncio.run(_replay(requests, GroupTarget(placement, engines, settings, [log]), log))
        rows.append({"placement": placement, **row})
    return {
        "engines": engines,
        "requests": len(requests),
        "memory_budget_per_engine": budget,
        "host_budget_per_engine": host,
        "backend": backend,
        "rows": rows,
    }


# -- the run ----------------------------------------------------------------------------------------


def quick_trace(directory: Path) -> Path:
    """A short trace over six tiny random models (for ``--quick``)."""
    from chronoserve.traces import generate, write_trace

    models = {f"random/tiny-chronos-bolt@{i}": 1.0 / (i + 1) for i in range(4)}
    models.update({"random/tiny-chronos-2": 0.3, "random/tiny-chronos-2@1": 0.2})
    path = directory / "quick-zipf.jsonl"
    write_trace(generate(60, "onoff", rate=40.0, seed=16, models=models), path)
    return path


def run(
    sections: Sequence[str], out: Path, *, quick: bool, limit: int | None, repeats: int, backends: Sequence[str]
) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "quick": quick,
        "random_weights": True,
    }
    trace = quick_trace(out) if quick else ZIPF_TRACE
    started = time.monotonic()
    if "workers" in sections:
        import coldstart_workers

        model = QUICK_MODELS[0] if quick else "random/chronos-bolt-tiny"
        results["workers"] = coldstart_workers.measure_workers(model, repeats)
    if "tiers" in sections:
        import coldstart_loads

        models = QUICK_MODELS if quick else coldstart_loads.FAMILY_MODELS
        results["tiers"] = coldstart_loads.measure_tiers(models, repeats)
    if "concurrent" in sections:
        import coldstart_loads

        models = [f"{QUICK_MODELS[0]}@{i}" for i in range(4)] if quick else coldstart_loads.CONCURRENT_MODELS
        results["concurrent"] = coldstart_loads.measure_concurrent(models, n=4)
    if "zipf" in sections:
        results["zipf"] = [measure_zipf(trace, limit=limit, backend=b) for b in backends]
    if "placement" in sections:
        results["placement"] = [measure_placement(trace, limit=limit, backend=b) for b in backends]
    results["seconds"] = time.monotonic() - started
    (out / "coldstart.json").write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    tables = report(results)
    (out / "coldstart.md").write_text(tables + "\n", encoding="utf-8")
    print(tables)
    plot(results, out / "coldstart.png")
    print(f"\nwrote {out / 'coldstart.json'}, {out / 'coldstart.md'} and {out / 'coldstart.png'}")
    return results


def _table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]]) -> list[str]:
    """A markdown table of ``rows``: (header, key, format) per column."""
    lines = ["| " + " | ".join(h for h, _, _ in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = []
        for _, key, fmt in columns:
            value = row.get(key)
            cells.append("-" if value is None else format(value, fmt) if fmt else str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _verdict(met: bool) -> str:
    return "met" if met else "not met"


def _captured(printer: Any, *args: Any) -> list[str]:
    """What ``printer(*args)`` prints, as lines."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        printer(*args)
    return buffer.getvalue().strip("\n").splitlines()


def _zipf_lines(z: dict[str, Any]) -> list[str]:
    mb = 1e6
    lines = [
        "",
        f"## Eviction ({z['backend']}): {z['trace']}, {z['requests']} requests, {z['models']} models, "
        f"{z['model_bytes'] / mb:.0f} MB; memory budget {z['memory_budget'] / mb:.0f} MB, "
        f"host tier {z['host_budget'] / mb:.0f} MB",
        "",
    ]
    lines += _table(z["rows"], [("config", "config", ""), *_OUTCOME_COLUMNS, ("by tier", "loads", "")])
    best = next(r for r in z["rows"] if r["config"] == "gdsf+host")
    for base_name in ("lru", "lru, from_pretrained"):
        base = next(r for r in z["rows"] if r["config"] == base_name)
        if base["load_seconds"] > 0 and base["p99_ms"] > 0:
            load_ratio = best["load_seconds"] / base["load_seconds"]
            p99_ratio = best["p99_ms"] / base["p99_ms"]
            lines.append(
                f"- gdsf+host vs {base_name}: time loading {load_ratio:.2f}x (goal <= 0.5x: "
                f"{_verdict(load_ratio <= 0.5)}), p99 {p99_ratio:.2f}x (goal <= 0.7x: {_verdict(p99_ratio <= 0.7)})"
            )
    return lines


#: The columns every replay row shows.
_OUTCOME_COLUMNS = [
    ("hit ratio", "hit_ratio", ".3f"),
    ("loads", "loads_total", "d"),
    ("loading (s)", "load_seconds", ".2f"),
    ("p50 (ms)", "p50_ms", ".0f"),
    ("p99 (ms)", "p99_ms", ".0f"),
    ("ok", "ok", "d"),
]


def report(results: dict[str, Any]) -> str:
    """The tables and the goals, met or not (markdown)."""
    lines = [f"Every model has random weights (timings only). {results['machine']['cpus']} CPUs."]
    if "workers" in results:
        import coldstart_workers

        rows = results["workers"]
        lines += ["", "## New worker process to its first forecast", "", "```", coldstart_workers.format_table(rows)]
        spawned = statistics.median(r["first_forecast_s"] for r in rows if r["method"] == "spawn")
        forked = statistics.median(r["first_forecast_s"] for r in rows if r["method"] != "spawn")
        lines += [
            "```",
            "",
            f"- fork server {forked:.3f} s (goal <= 0.25 s: {_verdict(forked <= 0.25)}), "
            f"{spawned / forked:.1f}x faster than spawned (goal >= 20x: {_verdict(spawned / forked >= 20)})",
        ]
    if "tiers" in results:
        import coldstart_loads

        lines += ["", "## Loads by tier, per family", ""]
        lines += _captured(coldstart_loads.print_tiers, results["tiers"])
    if "concurrent" in results:
        import coldstart_loads

        lines += ["", "## Concurrent loads", ""]
        lines += _captured(coldstart_loads.print_concurrent, results["concurrent"])
    for z in results.get("zipf", []):
        lines += _zipf_lines(z)
    for p in results.get("placement", []):
        lines += [
            "",
            f"## Placement ({p['backend']}) over {p['engines']} engines in one process: the same trace, gdsf and "
            "a host tier on each, one worker each",
            "",
        ]
        lines += _table(p["rows"], [("placement", "placement", ""), *_OUTCOME_COLUMNS])
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    """One figure: per replay section and backend (columns), the time spent loading with the hit
    ratio (top) and the p99 latency (bottom) of each configuration."""
    from chronoserve._plotting import pyplot, save

    plt = pyplot()
    panels = [("zipf", z) for z in results.get("zipf", [])] + [("placement", p) for p in results.get("placement", [])]
    if not panels:
        return
    fig, axes = plt.subplots(2, len(panels), figsize=(4.4 * len(panels), 6.4), squeeze=False)
    for column, (section, data) in enumerate(panels):
        rows = data["rows"]
        labels = [(r.get("config") or r.get("placement") or "").replace(", ", ",\n") for r in rows]
        x = list(range(len(rows)))
        colors = ["#4c72b0" if section == "zipf" else "#55a868"] * len(rows)
        top, bottom = axes[0][column], axes[1][column]
        loading = [r["load_seconds"] for r in rows]
        top.bar(x, loading, color=colors)
        for i, r in enumerate(rows):
            top.annotate(f"hit {r['hit_ratio']:.2f}", (i, loading[i]), ha="center", va="bottom", fontsize=8)
        what = "eviction, one engine" if section == "zipf" else f"placement, {data['engines']} engines"
        top.set_title(f"{what} ({data['backend']})", fontsize=10)
        top.margins(y=0.15)
        bottom.bar(x, [r["p99_ms"] for r in rows], color="#dd8452")
        for ax in (top, bottom):
            ax.set_xticks(x, labels, fontsize=8)
        if column == 0:
            top.set_ylabel("time spent loading (s)")
            bottom.set_ylabel("p99 latency (ms)")
    fig.suptitle(
        "Zipf trace: 16 random-weight models, a third of their bytes resident (hit: requests whose model was resident)",
        fontsize=11,
    )
    save(fig, path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"sections, comma-separated: {', '.join(SECTIONS)}")
    parser.add_argument("--quick", action="store_true", help="tiny models and a short trace (a smoke test)")
    parser.add_argument("--limit", type=int, default=None, help="replay only the trace's first N requests")
    parser.add_argument("--repeats", type=int, default=5, help="repeats of each worker start and load (default 5)")
    parser.add_argument("--backends", default="torch,onnx", help="zipf and placement: backends (torch,onnx)")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "coldstart")
    args = parser.parse_args(argv)
    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        parser.error(f"--only: unknown section(s) {', '.join(unknown)} (known: {', '.join(SECTIONS)})")
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if not backends or any(b not in ("torch", "onnx") for b in backends):
        parser.error(f"--backends: torch and/or onnx, not {args.backends!r}")
    run(sections, args.out, quick=args.quick, limit=args.limit, repeats=args.repeats, backends=backends)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
