"""The ``chronoserve`` command line. ``main(argv) -> int`` so it is tested in-process.

Heavy imports (the engine's models, torch) happen inside the subcommands, so ``--help``
stays fast.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from . import __version__
from ._cli_common import (
    UsageError,
    add_data_options,
    add_engine_options,
    data_layout,
    engine_settings,
    positive_int,
    quantiles,
)
from .errors import ChronoserveError, InvalidRequest, PolicyError
from .models.catalog import DEFAULT_MODEL  # the small Chronos-2 trained here (`chronoserve models list`)


@dataclass(frozen=True)
class _History:
    values: list[float]
    last: datetime | None = None
    """The last observation's time, when the file has timestamps."""
    step: timedelta | None = None
    lower_bound: float | None = None


def _read_history(args: argparse.Namespace) -> _History:
    if args.values is not None:
        try:
            values = [float(x) if x.strip().lower() not in ("", "nan") else math.nan for x in args.values.split(",")]
        except ValueError:
            raise UsageError(f"--values: expected comma-separated numbers, got {args.values!r}") from None
        return _History(values, lower_bound=args.lower_bound)
    from .data import read_file
    from .data._table import read_table

    path = Path(args.csv)
    if not path.is_file():
        raise UsageError(f"--csv: no such file: {path}")
    layout = data_layout(args)
    try:
        table = read_table(path, layout)
        header = [h.lower() for h in table.header]
        if args.timestamp_column is None and layout.timestamp.lower() not in header:
            return _History(_column_values(table, layout), lower_bound=args.lower_bound)  # no timestamps
        found = read_file(path, layout, hourly=False)
    except ValueError as exc:
        raise UsageError(f"--csv: {exc}") from None
    series = found[0]
    if len(found) > 1 or args.series is not None:
        ids = [s.info.id for s in found]
        picked = [s for s in found if s.info.id == args.series]
        if not picked:
            raise UsageError(f"--series: name one of the series in {path}: {', '.join(ids[:20])}")
        series = picked[0]
    span, rows = series.info.end - series.info.start, series.info.rows
    step = span / (rows - 1) if rows > 1 else None
    bound = args.lower_bound if args.lower_bound is not None else series.info.lower_bound
    return _History([float(v) for v in series.target], series.info.end, step, bound)


def _column_values(table: Any, layout: Any) -> list[float]:
    """The target column of a table without timestamps, as numbers (empty or nan: a gap)."""
    header = [h.lower() for h in table.header]
    if layout.target.lower() not in header:
        raise ValueError(f"{layout.target!r} is not a column (columns: {table.header}); name it with --column")
    j = header.index(layout.target.lower())
    values = []
    for i, row in enumerate(table.rows):
        cell = row[j].strip()
        try:
            values.append(float(cell) if cell and cell.lower() not in ("nan", "na") else math.nan)
        except ValueError:
            raise ValueError(f"line {table.first_line + i}: column {layout.target!r}: not a number: {cell!r}") from None
    return values


def cmd_forecast(args: argparse.Namespace) -> int:
    from .request import ForecastRequest
    from .sync import forecast

    history = _read_history(args)
    settings = engine_settings(args)
    loader = settings.loader()
    try:  # the name first, before the engine imports torch: a name that is no model fails at once
        loader.resolve(loader.canonical(args.model))
    except InvalidRequest as exc:
        raise UsageError(f"--model: {exc.message}") from None
    if not args.verbose:  # a failed load is this command's error, said once (below), not also logged
        logging.getLogger("chronoserve.engine").setLevel(logging.ERROR)
    request = ForecastRequest(
        model=args.model,
        target=history.values,
        horizon=args.horizon,
        context_length=args.context_length,
        quantile_levels=args.quantiles,
        lower_bound=history.lower_bound,
    )
    result = forecast(request, **settings.engine_kwargs(loader))
    assert not isinstance(result, list)
    if args.json:
        print(json.dumps(result.to_dict()))
        return 0
    if result.random_weights:
        print(f"# {result.model} has RANDOM weights: these numbers are not forecasts", file=sys.stderr)
    levels = [f"q{q:g}" for q in result.quantile_levels]
    timed = history.last is not None and history.step is not None
    print(("time" if timed else "step") + "\tmedian\t" + "\t".join(levels))
    for h in range(result.horizon):
        if history.last is not None and history.step is not None:
            when = (history.last + history.step * (h + 1)).isoformat()
        else:
            when = str(h + 1)
        print(f"{when}\t{result.median[h]:.4f}\t" + "\t".join(f"{v:.4f}" for v in result.quantiles[h]))
    if result.lower_bound is not None and result.clipped:
        print(f"# {result.clipped} value(s) below {result.lower_bound:g} were raised to it", file=sys.stderr)
    t = result.timings
    print(
        f"# model={result.model} policy={result.policy} context={result.context_used} cold_start={result.cold_start} "
        f"load={t.load:.3f}s inference={t.inference:.3f}s total={t.total:.3f}s",
        file=sys.stderr,
    )
    return 0


def _after(argv: Sequence[str], command: str) -> list[str]:
    """The words of ``argv`` after the subcommand ``command`` (the first word that is not an option)."""
    words = list(argv)
    return words[words.index(command) + 1 :] if command in words else []


def cmd_policies(args: argparse.Namespace) -> int:
    import inspect

    from .plugins import available_policies, load_policy

    for name, reference in available_policies().items():
        try:
            policy = load_policy(name)
        except ChronoserveError as exc:
            print(f"{name:10s} {reference}  BROKEN: {exc}")
            continue
        params = inspect.signature(type(policy)).parameters
        options = ", ".join(f"{p}={v.default!r}" for p, v in params.items() if v.default is not inspect.Parameter.empty)
        print(f"{name:10s} {reference}  ({options})")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from ._serve_options import serve_parser, serve_settings
    from .config import resolve, serve_actions

    parser = serve_parser()
    config = resolve(parser, args, _after(args.argv, "serve"))
    if args.print_config:
        print(config.to_toml(serve_actions(parser), redact=lambda dest: dest in ("api_key", "admin_key")), end="")
        return 0
    args = config.namespace()
    from .server import run

    settings = serve_settings(args)
    if not args.ray and (args.ray_proxy or args.ray_address):
        raise UsageError(f"{'--ray-proxy' if args.ray_proxy else '--ray-address'} needs --ray")
    if args.ray_proxy and (settings.api_keys or settings.admin_keys or settings.ssl_certfile):
        raise UsageError("--ray-proxy: API keys and TLS are this front end's, not Serve's proxy's (use --ray)")
    if args.ray:
        if args.http_workers or args.engines > 1:
            raise UsageError("--ray: replicas take the place of --http-workers and --engines (use --replicas)")
        from .ray import local_on_loopback

        local_on_loopback(args.host, args.ray_address)  # before Ray is imported
        try:
            from .ray.run import run_on_ray
        except ImportError as exc:
            raise UsageError(f'--ray needs Ray Serve: pip install "chronoserve[ray]" ({exc})') from None
        return run_on_ray(
            settings,
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            address=args.ray_address,
            replicas=args.replicas,
            autoscale=args.autoscale,
            replica_cpus=args.replica_cpus,
            max_queued_requests=args.max_queued_requests,
            proxy=args.ray_proxy,
            ingress_replicas=args.ingress_replicas,
        )
    return run(
        settings,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        http_workers=args.http_workers,
        engines=args.engines,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chronoserve",
        description="Serve Chronos forecasting models: an asyncio engine with pluggable scheduling policies.",
    )
    parser.add_argument("--version", action="version", version=f"chronoserve {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the engine does")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    from .edge._cli import register as register_edge
    from .eval._cli import register as register_eval
    from .models._cli import register as register_models
    from .profile._cli import register as register_profile
    from .replay._cli import register as register_replay
    from .traces._cli import register as register_trace

    register_models(sub)
    register_replay(sub)
    register_eval(sub)
    register_trace(sub)
    register_edge(sub)
    register_profile(sub)

    policies = sub.add_parser("policies", help="list the installed scheduling policies and their options")
    policies.set_defaults(func=cmd_policies)

    serve = sub.add_parser(
        "serve",
        help="run the HTTP server",
        description="Serve forecasts over HTTP (POST /forecast, /forecast/batch; GET /models, /series, "
        "/healthz, /readyz, /metrics, /openapi.json, /docs). SIGTERM drains and exits 0.",
    )
    from ._serve_options import add_serve_options

    add_serve_options(serve)
    serve.set_defaults(func=cmd_serve)

    fc = sub.add_parser(
        "forecast",
        help="forecast one series from a CSV column or a list of values",
        description="Forecast one series through the engine and print the median and quantiles per step "
        "(per time, when the file has timestamps). The file: CSV (delimiter sniffed) or Parquet.",
    )
    source = fc.add_mutually_exclusive_group(required=True)
    source.add_argument("--csv", help="a CSV (or Parquet) file with a header row")
    source.add_argument("--values", help="comma-separated history, oldest first (empty or nan for gaps)")
    fc.add_argument("--series", default=None, help="with --id-column: which series of the file to forecast")
    fc.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"catalog name, random/NAME, hub id or dir (default: {DEFAULT_MODEL})"
    )
    fc.add_argument("--horizon", type=positive_int, default=24, help="steps to forecast (default: 24)")
    fc.add_argument("--context-length", type=positive_int, default=None, help="use only the last N points")
    fc.add_argument("--quantiles", type=quantiles, default=[0.1, 0.5, 0.9], help="levels (default: 0.1,0.5,0.9)")
    fc.add_argument("--json", action="store_true", help="print the result as JSON")
    add_engine_options(fc)
    add_data_options(fc, target_flags=("--column", "--target-column"), timestamp=None)
    fc.set_defaults(func=cmd_forecast)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    else:
        # transformers draws a progress bar for every checkpoint it writes or reads; a CLI user
        # sees chronoserve's own output instead (read when transformers is first imported).
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        code: int = func(args)
    except UsageError as exc:
        print(f"chronoserve: error: {exc}", file=sys.stderr)
        return 2
    except (InvalidRequest, PolicyError) as exc:  # bad input or a bad --policy: the user's to fix
        print(f"chronoserve: error: {exc}", file=sys.stderr)
        return 2
    except ChronoserveError as exc:
        print(f"chronoserve: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("chronoserve: interrupted", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":
    raise SystemExit(main())
