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
    p.add_argument("--arrivals", default="as-recorded", choices=["as-recorded", "burst", "poisson", "gamma"])
    p.add_argument("--rate", type=float, default=None, help="requests per second for --arrivals poisson/gamma")
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
    return asyncio.run(_run(args, requests, policies, base, meta))


async def _run(
    args: argparse.Namespace,
    requests: list[Any],
    policies: list[str],
    base: Path,
    meta: dict[str, Any],
) -> int:
    from chronoserve.replay import HTTPTarget, InProcessTarget, format_table, preload_torch, replay

    runs = []
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
    for policy in policies:
        out = base / policy if len(policies) > 1 or args.out is None else base
        if args.url is not None:
            target: Any = HTTPTarget(args.url)
            label = "server"
        else:
            kwargs = engine_kwargs(args)
            kwargs["policy"] = policy
            target = InProcessTarget(kwargs.pop("policy"), warm_models=meta["models"] if args.warm else (), **kwargs)
            label = policy
        print(f"replaying {meta['requests']} requests ({meta['trace']}) on {label} ...", file=sys.stderr)
        result = await replay(
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
        runs.append(result)
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


def _write_comparison(base: Path, runs: list[Any], summaries: list[Any]) -> Path:
    from chronoserve.replay.plots import plot_compare

    base.mkdir(parents=True, exist_ok=True)
    (base / "compare.json").write_text(json.dumps([s.to_dict() for s in summaries], indent=2, default=str))
    return plot_compare(base / "compare.png", [(r.summary, r.records) for r in runs])
