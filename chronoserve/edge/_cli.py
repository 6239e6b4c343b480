"""``chronoserve edge-bench``: the command line; each configuration runs in a pinned child process."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from chronoserve._cli_common import UsageError

from .pinning import allowed_cores, choose_cores, format_cores, parse_core_counts
from .rules import CONTAMINATION_PERCENT


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add ``edge-bench`` to ``subparsers``; return its parser."""
    p = subparsers.add_parser(
        "edge-bench",
        help="benchmark a model pinned to k cores, after MLPerf's run rules (Raspberry Pi and other small boards)",
        description="Run a steady stream of forecasts through the serving engine, pinned to k cores with torch set "
        "to k threads (each core count and batch size in a fresh process), sampling per-core CPU, RSS, temperature, "
        "clock, throttling and energy where the machine exposes them. Warm-up is excluded; the run ends when both "
        "--duration and --min-queries are met (or at --max-duration). Prints p50/p90/p95/p99/p99.9/max/mean, "
        "MLPerf's early-stopping p90 and a VALID/INVALID verdict with its reasons; writes summary.json, CSVs and "
        "PNG plots to --out. See docs/edge.md.",
    )
    p.add_argument("--cores", default=None, help="core count, or a comma-separated sweep, e.g. 1,2,3 (default: all)")
    p.add_argument("--model", default="random/chronos-bolt-tiny", help="catalog name, random/NAME, hub id or dir")
    p.add_argument("--context", type=int, default=240, help="context length in hours (default: 240)")
    p.add_argument("--horizon", type=int, default=24, help="forecast horizon in hours (default: 24)")
    p.add_argument("--batch", default="1", help="series per query, or a sweep, e.g. 1,2,4,8,16 (default: 1)")
    p.add_argument(
        "--scenario",
        default="singlestream",
        choices=["singlestream", "offline"],
        help="singlestream: one query in flight (default); offline: the queue kept full, series/s",
    )
    p.add_argument("--duration", default="60s", help="minimum measured duration per run, e.g. 60s, 30m (60s)")
    p.add_argument("--min-queries", type=int, default=1024, help="minimum measured queries per run (1024)")
    p.add_argument("--max-duration", default=None, help="stop a run here even if the minimums are not met (2x)")
    p.add_argument("--warmup", default="10s", help="warm-up per run, excluded from every statistic (10s)")
    p.add_argument("--series", default="dongsi", help="embedded PM2.5 series the windows come from (dongsi)")
    p.add_argument("--stride", type=int, default=1, help="hours between successive windows (1)")
    p.add_argument("--interval", default="1s", help="system sampling interval, at least 0.1s (1s)")
    p.add_argument(
        "--contamination-threshold",
        type=float,
        default=CONTAMINATION_PERCENT,
        help=f"mean busy %% of one core, outside the pinned cores or from other processes on them, above "
        f"which a run is INVALID (default: {CONTAMINATION_PERCENT:g})",
    )
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="model dtype (float32)")
    p.add_argument("--out", default=None, help="output directory (default: results/edge-<model>)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=cmd_edge_bench)
    return p


def _usage(message: str) -> Exception:
    return UsageError(message)


def _seconds(flag: str, text: str) -> float:
    from chronoserve._units import parse_seconds

    try:
        return parse_seconds(text)
    except ValueError as exc:
        raise _usage(f"{flag}: {exc}") from None


def plan(args: argparse.Namespace) -> tuple[list[dict[str, Any]], Path]:
    """Check every flag and return the configurations to run (JSON-ready) and the output directory.

    Raises :class:`~chronoserve.cli.UsageError` naming the flag; imports no torch.
    """
    from chronoserve.data import SeriesStore
    from chronoserve.errors import ChronoserveError
    from chronoserve.models.loader import ChronosLoader

    from .rules import RunRules
    from .runner import BenchConfig, build_requests

    allowed = allowed_cores()
    try:
        counts = parse_core_counts(args.cores) if args.cores is not None else [len(allowed)]
        pinned = [choose_cores(k, allowed) for k in counts]
    except ValueError as exc:
        raise _usage(f"--cores: {exc}") from None
    try:
        batches = parse_core_counts(args.batch)
    except ValueError as exc:
        raise _usage(f"--batch: {str(exc).replace('core count', 'batch size')}") from None
    duration = _seconds("--duration", args.duration)
    warmup = _seconds("--warmup", args.warmup)
    interval = _seconds("--interval", args.interval)
    max_duration = _seconds("--max-duration", args.max_duration) if args.max_duration is not None else None
    if interval < 0.1:
        raise _usage(f"--interval: at least 0.1s, got {args.interval}")
    for flag, value in (("--context", args.context), ("--horizon", args.horizon), ("--stride", args.stride)):
        if value < 1:
            raise _usage(f"{flag}: must be at least 1, got {value}")
    try:
        rules = RunRules(duration, args.min_queries, warmup, max_duration, args.contamination_threshold)
    except ValueError as exc:
        text = str(exc)
        flag = next(
            (f for k, f in (("max_duration", "--max-duration"), ("duration", "--duration"),
                            ("min_queries", "--min-queries"), ("warmup", "--warmup"),
                            ("contamination", "--contamination-threshold")) if text.startswith(k)),
            "--duration",
        )  # fmt: skip
        raise _usage(f"{flag}: {text}") from None
    try:
        spec = ChronosLoader(dtype=args.dtype).resolve(args.model)
    except ChronoserveError as exc:
        raise _usage(f"--model: {exc}") from None
    if args.horizon > spec.max_horizon:
        raise _usage(f"--horizon: {args.model} forecasts at most {spec.max_horizon} steps, got {args.horizon}")
    store = SeriesStore.embedded()
    if args.series not in store:
        raise _usage(f"--series: unknown series {args.series!r} (known: {', '.join(store.ids())})")
    out = Path(args.out) if args.out else Path("results") / f"edge-{args.model.replace('/', '-')}"
    configs = []
    for cores in pinned:
        for batch in batches:
            config = BenchConfig(
                model=args.model,
                cores=tuple(cores),
                out=str(out / "runs" / f"cores{len(cores)}-batch{batch}"),
                batch=batch,
                context=args.context,
                horizon=args.horizon,
                scenario=args.scenario,
                rules=rules,
                series=args.series,
                stride=args.stride,
                interval_s=interval,
                dtype=args.dtype,
            )
            configs.append(config.to_dict())
    try:
        build_requests(store, BenchConfig.from_dict(configs[0]), size=1)
    except ValueError as exc:
        raise _usage(f"--context: {exc}") from None
    return configs, out


#: In quiet mode, where a run's child writes its standard error (its last line goes into the error of a failed run).
CHILD_STDERR = "stderr.log"


def run_child(config: dict[str, Any], quiet: bool = False) -> dict[str, Any]:
    """Run one configuration in a fresh process that pins itself first; return its ``result.json``.

    The process is a worker of :mod:`chronoserve.forkserver` (forked from the preloaded fork
    server, or spawned) running :func:`chronoserve.edge.__main__.main`, as ``python -m
    chronoserve.edge`` does; it pins itself and sets torch's threads before any thread exists.
    ``quiet``: its standard output is dropped and its standard error kept in the run's
    directory (:data:`CHILD_STDERR`). Interrupted (Ctrl-C), this process stops the child too.
    """
    from chronoserve.errors import ChronoserveError
    from chronoserve.forkserver import run_worker

    from .__main__ import main as run_config

    run_dir = Path(config["out"])
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("result.json", "batches.csv", "samples.csv", CHILD_STDERR):
        (run_dir / stale).unlink(missing_ok=True)
    config_path = run_dir / "config.json"
    config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    stderr = run_dir / CHILD_STDERR if quiet else None
    code = run_worker(
        run_config,
        ([str(config_path)],),
        name=f"chronoserve-edge-{run_dir.name}",
        stdout=os.devnull if quiet else None,
        stderr=stderr,
    )
    result_path = run_dir / "result.json"
    if code != 0 or not result_path.is_file():
        tail = _last_line(stderr) if stderr is not None else None
        raise ChronoserveError(f"the run {run_dir.name} failed (exit {code}){f': {tail}' if tail else ''}")
    result: dict[str, Any] = json.loads(result_path.read_text(encoding="utf-8"))
    return result


def _last_line(path: Path) -> str | None:
    """The last line of a file that is not blank (None if there is none, or no file)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    lines = text.strip().splitlines()
    return lines[-1] if lines else None


def command_line(args: argparse.Namespace) -> list[str]:
    """The command with every option spelled out (defaults included), for the record."""
    command = ["chronoserve", "edge-bench"]
    for flag in (
        "cores",
        "model",
        "context",
        "horizon",
        "batch",
        "scenario",
        "duration",
        "min_queries",
        "max_duration",
        "warmup",
        "series",
        "stride",
        "interval",
        "contamination_threshold",
        "dtype",
        "out",
    ):
        value = getattr(args, flag)
        if value is not None:
            command += [f"--{flag.replace('_', '-')}", str(value)]
    return command  # fmt: skip


def cmd_edge_bench(args: argparse.Namespace) -> int:
    from .metadata import machine_info
    from .report import combine_csv, format_table, overall_verdict, write_summary

    configs, out = plan(args)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    total = len(configs)
    for n, config in enumerate(configs, 1):
        label = Path(config["out"]).name
        if not args.quiet:
            rules = config["rules"]
            print(
                f"[{n}/{total}] {label}: {config['model']} pinned to cores {format_cores(config['cores'])}, "
                f"{config['scenario']}, warm-up {rules['warmup_s']:g} s, then at least {rules['duration_s']:g} s "
                f"and {rules['min_queries']} {'queries' if config['scenario'] == 'singlestream' else 'series'} ...",
                file=sys.stderr,
                flush=True,
            )
        results.append(run_child(config, quiet=args.quiet))
    runs = [(r["label"], Path(c["out"])) for r, c in zip(results, configs, strict=True)]
    files = [
        write_summary(out, results, command_line(args), machine_info()),
        combine_csv(out, "batches.csv", runs),
        combine_csv(out, "samples.csv", runs),
    ]
    if not args.no_plots:
        from .plots import RunData, plot_all

        files += plot_all(out, [RunData.load(label, d, r) for (label, d), r in zip(runs, results, strict=True)])
    if results and results[0].get("model", {}).get("random_weights"):
        print("(random weights: the timings are real, the forecasts are not)")
    print(format_table(results))
    print(f"verdict: {overall_verdict(results)}; wrote {len(files)} files and {len(runs)} run directories to {out}")
    return 0
