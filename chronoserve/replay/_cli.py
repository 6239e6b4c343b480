"""``chronoserve replay TRACE``: the command line of the replayer."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from chronoserve._cli_common import UsageError, add_engine_options, engine_kwargs, engine_settings


def register(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "replay",
        help="replay a request trace open loop and measure it (HDR histograms, plots)",
        description="Send every request of TRACE at its scheduled time (open loop: latency counts from the "
        "scheduled time), in-process on the engine or to a server (--url); print percentiles, throughput and "
        "errors; write per-request records, .hgrm distributions and PNG plots to --out.",
    )
    p.add_argument("trace", metavar="TRACE", help="a JSONL trace (see docs/traces.md), e.g. traces/burst.jsonl")
    p.add_argument("--url", default=None, help="replay against a running server instead of in-process")
    p.add_argument("--arrivals", default="as-recorded", choices=["as-recorded", "burst", "poisson", "gamma", "onoff"])
    p.add_argument(
        "--rate", type=float, default=None, help="requests per second for --arrivals poisson/gamma/onoff (the mean)"
    )
    p.add_argument("--cv", type=float, default=None, help="coefficient of variation of gaps for --arrivals gamma")
    p.add_argument("--seed", type=int, default=0, help="seed of --arrivals retiming")
    p.add_argument("--speed", type=float, default=1.0, help="divide every send time by this (2: twice the rate)")
    p.add_argument("--limit", type=int, default=None, help="replay only the first N requests")
    p.add_argument("--out", default=None, help="directory for records, .hgrm files and plots (default: results/...)")
    p.add_argument(
        "--compare",
        default=None,
        help="comma-separated policies to run in turn on the same trace, e.g. naive,lru,batched",
    )
    p.add_argument(
        "--load-sweep",
        default=None,
        metavar="FACTORS",
        help="replay the trace at each rate factor in turn, e.g. 0.5,1,1.5,2 (2: twice as fast), per policy; "
        "writes sweep.csv/json and sweep.png (goodput and deadline attainment against offered load)",
    )
    p.add_argument("--warm", action="store_true", help="in-process: load the trace's models before the clock starts")
    p.add_argument(
        "--system-stats",
        action="store_true",
        help="also write system_stats.csv (CPU per core, memory, this process's CPU and RSS, every second) "
        "and, in-process, batches.csv (one row per engine batch) to --out",
    )
    p.add_argument(
        "--log-predictions",
        action="store_true",
        help="in-process: also write predictions.csv (each batch's predicted and actual latency) to --out",
    )
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    add_engine_options(p)
    p.set_defaults(func=cmd_replay)
    parser: argparse.ArgumentParser = p
    return parser


def cmd_replay(args: argparse.Namespace) -> int:
    from chronoserve.errors import InvalidRequest
    from chronoserve.traces import TraceError, read_trace, retime, scale_time

    try:
        trace = read_trace(args.trace)
    except (TraceError, OSError) as exc:
        raise UsageError(f"TRACE: {exc}") from None
    try:
        trace = retime(trace, args.arrivals, rate=args.rate, cv=args.cv, seed=args.seed)
        trace = scale_time(trace, args.speed)
    except InvalidRequest as exc:
        raise UsageError(f"--{exc.field}: {exc.message}") from None
    requests = list(trace.requests)
    if args.limit is not None:
        if args.limit < 1:
            raise UsageError("--limit: must be at least 1")
        requests = requests[: args.limit]
    if args.compare and args.url:
        raise UsageError("--compare runs policies in-process; it cannot be combined with --url")
    policies = [p.strip() for p in args.compare.split(",") if p.strip()] if args.compare else [args.policy]
    factors: tuple[float, ...] | None = None
    if args.load_sweep is not None:
        from chronoserve.replay.sweep import parse_factors

        try:
            factors = parse_factors(args.load_sweep)
        except ValueError as exc:
            raise UsageError(f"--load-sweep: {exc}") from None
        if len(requests) < 2 or requests[-1].t == requests[0].t:
            raise UsageError("--load-sweep: the trace must spread its requests in time (a burst has no rate to scale)")
    stem = Path(args.trace).stem
    base = Path(args.out) if args.out else Path("results") / f"replay-{stem}"
    models = sorted({r.model_name for r in requests})
    meta = {
        "trace": Path(args.trace).name,
        "arrivals": args.arrivals,
        "speed": args.speed,
        "requests": len(requests),
        "models": models,
        "random_weights": any(m.startswith("random/") for m in models),
        "trace_meta": dict(trace.meta),
    }
    return asyncio.run(_run(args, requests, policies, base, meta, factors))


async def _run(
    args: argparse.Namespace,
    requests: list[Any],
    policies: list[str],
    base: Path,
    meta: dict[str, Any],
    factors: tuple[float, ...] | None = None,
) -> int:
    from chronoserve.replay import format_table, preload_torch

    if args.url is None:
        # Imports and writing random checkpoints are set-up, not serving: done before the clock.
        print("preparing: importing torch, materialising the trace's random models ...", file=sys.stderr)
        await asyncio.to_thread(preload_torch)
        loader = engine_settings(args).loader()
        for name in meta["models"]:
            spec = await asyncio.to_thread(loader.resolve, name)
            if spec.random_weights:
                from chronoserve.models.materialize import materialize

                await asyncio.to_thread(materialize, str(spec.extra.get("catalog_name", name)), spec.source)
    if factors is not None:
        return await _sweep(args, requests, policies, base, meta, factors)
    runs = [
        await _replay_one(args, requests, policy, _run_dir(base, policy, policies, args.out), meta)
        for policy in policies
    ]
    summaries = [r.summary for r in runs]
    if meta["random_weights"]:
        print("(models with random weights: the timings are real, the forecasts are not)")
    print(format_table(summaries))
    for r in runs:
        print(f"{r.summary.label}: wrote {len(r.files)} files to {r.files[0].parent if r.files else '-'}")
    if len(runs) > 1:
        figure = _write_comparison(base, runs, summaries)
        print(f"comparison: {figure}")
    return 0


def _run_dir(base: Path, policy: str, policies: list[str], out: str | None) -> Path:
    return base / policy if len(policies) > 1 or out is None else base


async def _replay_one(
    args: argparse.Namespace, requests: list[Any], policy: str, out: Path, meta: dict[str, Any]
) -> Any:
    """One replay of ``requests`` on ``policy`` in-process (or on the server at ``--url``)."""
    from chronoserve.replay import HTTPTarget, InProcessTarget, replay

    if args.url is not None:
        target: Any = HTTPTarget(args.url)
        label = "server"
    else:
        kwargs = engine_kwargs(args)
        kwargs.pop("policy")
        target = InProcessTarget(policy, warm_models=meta["models"] if args.warm else (), **kwargs)
        label = policy
    print(f"replaying {len(requests)} requests ({meta['trace']}) on {label} ...", file=sys.stderr)
    return await replay(
        requests,
        target,
        out=out,
        label=label,
        meta=meta,
        progress=not args.quiet,
        plots=not args.no_plots,
        system_stats=args.system_stats,
        log_predictions=args.log_predictions,
    )


async def _sweep(
    args: argparse.Namespace,
    requests: list[Any],
    policies: list[str],
    base: Path,
    meta: dict[str, Any],
    factors: tuple[float, ...],
) -> int:
    """Every policy at every rate factor: ``base/x{factor}/{policy}``, then the sweep's table and files."""
    from chronoserve.replay.sweep import SweepPoint, factor_label, format_sweep, write_sweep
    from chronoserve.traces import Trace, scale_time

    points = []
    for factor in factors:
        scaled = scale_time(Trace(tuple(requests)), factor)
        offered = scaled.rate
        for policy in policies:
            label = policy if args.url is None else "server"
            print(f"load x{factor:g} ({offered:.1f} requests/s): ", end="", file=sys.stderr, flush=True)
            run_meta = {**meta, "speed": meta["speed"] * factor, "load_factor": factor}
            result = await _replay_one(
                args, list(scaled.requests), policy, base / factor_label(factor) / label, run_meta
            )
            points.append(SweepPoint(label, factor, offered, result.summary))
    if meta["random_weights"]:
        print("(models with random weights: the timings are real, the forecasts are not)")
    print(format_sweep(points))
    files = write_sweep(base, points)
    print(f"sweep: {', '.join(str(f) for f in files)}")
    return 0


def _write_comparison(base: Path, runs: list[Any], summaries: list[Any]) -> Path:
    from chronoserve.replay.plots import plot_compare

    base.mkdir(parents=True, exist_ok=True)
    (base / "compare.json").write_text(json.dumps([s.to_dict() for s in summaries], indent=2, default=str))
    return plot_compare(base / "compare.png", [(r.summary, r.records) for r in runs])
