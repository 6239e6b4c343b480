"""The ``chronoserve`` command line. ``main(argv) -> int`` so it is tested in-process.

Heavy imports (the engine's models, torch) happen inside the subcommands, so ``--help``
stays fast.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__
from ._cli_common import (
    UsageError,
    add_engine_options,
    engine_kwargs,
    engine_settings,
    non_negative_int,
    positive_float,
    positive_int,
    positive_or_none,
    quantiles,
)
from .errors import ChronoserveError, InvalidRequest, PolicyError
from .limits import DEFAULT_LIMITS, Limits
from .models.catalog import DEFAULT_MODEL  # the small Chronos-2 trained here (`chronoserve models list`)
from .settings import SERVE_BACKEND


def _read_series(args: argparse.Namespace) -> list[float]:
    if args.values is not None:
        try:
            return [float(x) if x.strip().lower() not in ("", "nan") else math.nan for x in args.values.split(",")]
        except ValueError:
            raise UsageError(f"--values: expected comma-separated numbers, got {args.values!r}") from None
    path = Path(args.csv)
    if not path.is_file():
        raise UsageError(f"--csv: no such file: {path}")
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if args.column not in (reader.fieldnames or []):
            raise UsageError(f"--column: {args.column!r} is not a column of {path} (columns: {reader.fieldnames})")
        values = []
        for row in reader:
            cell = (row[args.column] or "").strip()
            try:
                values.append(float(cell) if cell else math.nan)
            except ValueError:
                raise UsageError(f"--column {args.column}: not a number: {cell!r}") from None
        return values


def cmd_forecast(args: argparse.Namespace) -> int:
    from .request import ForecastRequest
    from .sync import forecast

    series = _read_series(args)
    request = ForecastRequest(
        model=args.model,
        target=series,
        horizon=args.horizon,
        context_length=args.context_length,
        quantile_levels=args.quantiles,
    )
    result = forecast(request, **engine_kwargs(args))
    assert not isinstance(result, list)
    if args.json:
        print(json.dumps(result.to_dict()))
        return 0
    if result.random_weights:
        print(f"# {result.model} has RANDOM weights: these numbers are not forecasts", file=sys.stderr)
    levels = [f"q{q:g}" for q in result.quantile_levels]
    print("step\tmedian\t" + "\t".join(levels))
    for h in range(result.horizon):
        print(f"{h + 1}\t{result.median[h]:.4f}\t" + "\t".join(f"{v:.4f}" for v in result.quantiles[h]))
    t = result.timings
    print(
        f"# model={result.model} policy={result.policy} context={result.context_used} cold_start={result.cold_start} "
        f"load={t.load:.3f}s inference={t.inference:.3f}s total={t.total:.3f}s",
        file=sys.stderr,
    )
    return 0


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


def serve_settings(args: argparse.Namespace) -> Any:
    """``serve``'s options as :class:`~chronoserve.server.ServerSettings`, checked (a
    :class:`UsageError` naming the option that cannot work)."""
    from .server import ServerSettings

    models = tuple(m.strip() for m in (args.models or "").split(",") if m.strip())
    if args.data is not None and not Path(args.data).is_dir():
        raise UsageError(f"--data: not a directory: {args.data}")
    limits = Limits(
        max_covariates=args.max_covariates,
        max_request_gflop=args.max_request_gflop,
        max_inference_seconds=args.max_inference_seconds,
    )
    settings = ServerSettings(
        engine=engine_settings(args, max_queue=args.max_queue, limits=limits),
        models=models,
        default_model=args.default_model,
        warmup=not args.no_warmup,
        data=args.data,
        max_body_bytes=args.max_body_bytes,
        drain_timeout=args.drain_timeout,
        log_predictions=args.log_predictions,
        default_deadline_ms=args.default_deadline_ms,
        header_timeout=args.header_timeout,
        body_timeout=args.body_timeout,
        keep_alive_timeout=args.keep_alive_timeout,
        max_header_bytes=args.max_header_bytes,
        max_connections=args.max_connections,
    )
    _check_serve_settings(settings)
    return settings


def parse_autoscale(text: str) -> tuple[int, int]:
    """``MIN:MAX`` replicas (0 <= MIN <= MAX, MAX >= 1)."""
    low, sep, high = text.partition(":")
    try:
        bounds = (int(low), int(high))
    except ValueError:
        bounds = (-1, -1)
    if not sep or bounds[0] < 0 or bounds[1] < max(1, bounds[0]):
        raise argparse.ArgumentTypeError(f"expected MIN:MAX replicas with 0 <= MIN <= MAX and MAX >= 1, got {text!r}")
    return bounds


def cmd_serve(args: argparse.Namespace) -> int:
    from .server import run

    settings = serve_settings(args)
    if args.ray:
        if args.http_workers or args.engines > 1:
            raise UsageError("--ray: replicas take the place of --http-workers and --engines (use --replicas)")
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


def _check_serve_settings(settings: Any) -> None:
    """Fail fast, before binding a port, on options that cannot work."""
    from .data import SeriesStore
    from .plugins import load_policy

    load_policy(settings.engine.policy, settings.engine.policy_options)
    # Names are checked (no weights read, no torch) so a typo fails here, not as a server never ready.
    loader = settings.engine.loader()
    named = [("--default-model", settings.default_model), *(("--models", m) for m in settings.models)]
    for flag, name in named:
        try:
            loader.resolve(loader.canonical(name))
        except InvalidRequest as exc:
            raise UsageError(f"{flag}: {exc.message}") from None
    if settings.data is not None:
        try:
            SeriesStore.from_dir(settings.data)
        except ValueError as exc:
            raise UsageError(f"--data: {exc}") from None


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
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    serve.add_argument("--max-queue", type=positive_int, default=1024, help="waiting requests before 429 (1024)")
    serve.add_argument(
        "--models",
        default=None,
        help="comma-separated models HTTP may use besides the catalog (names or checkpoint directories); "
        "they are loaded at start-up",
    )
    serve.add_argument(
        "--default-model",
        default=DEFAULT_MODEL,
        help=f"model when a request names none (default: {DEFAULT_MODEL}, the small Chronos-2 trained here)",
    )
    serve.add_argument("--data", default=None, help="directory of series CSVs (default: embedded Beijing PM2.5)")
    serve.add_argument(
        "--drain-timeout", type=positive_float, default=30.0, help="seconds to finish queued work on SIGTERM"
    )
    serve.add_argument("--max-body-bytes", type=positive_int, default=1 << 20, help="request body limit (1 MiB)")
    serve.add_argument("--no-warmup", action="store_true", help="report ready without loading models first")
    serve.add_argument(
        "--log-predictions",
        default=None,
        metavar="CSV",
        help="write one row per batch: the cost model's predicted and the actual latency",
    )
    serve.add_argument(
        "--default-deadline-ms",
        type=positive_float,
        default=None,
        help="deadline of requests that give none (deadline_ms or X-Deadline-Ms); default: none",
    )
    limits = serve.add_argument_group("limits per request (see docs/http.md)")
    limits.add_argument(
        "--max-covariates",
        type=non_negative_int,
        default=DEFAULT_LIMITS.max_covariates,
        help=f"covariates one request may send ({DEFAULT_LIMITS.max_covariates})",
    )
    limits.add_argument(
        "--max-request-gflop",
        type=positive_or_none,
        default=DEFAULT_LIMITS.max_request_gflop,
        help=f"refuse requests estimated above this many GFLOP; 'none' for no budget "
        f"({DEFAULT_LIMITS.max_request_gflop:g})",
    )
    limits.add_argument(
        "--max-inference-seconds",
        type=positive_or_none,
        default=DEFAULT_LIMITS.max_inference_seconds,
        help=f"stop a batch that holds a worker longer; 'none' for no bound ({DEFAULT_LIMITS.max_inference_seconds:g})",
    )
    conn = serve.add_argument_group("connections (see docs/http.md)")
    conn.add_argument("--header-timeout", type=positive_float, default=10.0, help="seconds to send headers (10)")
    conn.add_argument("--body-timeout", type=positive_float, default=30.0, help="seconds to send a body (30)")
    conn.add_argument(
        "--keep-alive-timeout", type=positive_float, default=5.0, help="idle seconds between requests (5)"
    )
    conn.add_argument("--max-header-bytes", type=positive_int, default=16 * 1024, help="request line + headers (16384)")
    conn.add_argument("--max-connections", type=positive_int, default=1000, help="open connections (1000)")
    serve.add_argument(
        "--http-workers",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="N > 0: HTTP in N front-end processes sharing the port, the engine in one more process "
        "(restarted if it dies); 0: everything in one process (default: 0; see docs/http.md)",
    )
    serve.add_argument(
        "--engines",
        type=positive_int,
        default=1,
        metavar="K",
        help="K engine processes, each with its own models, queue and --workers; every request goes to the one "
        "where its model will be ready soonest (implies --http-workers 1 at least; default: 1; docs/coldstart.md)",
    )
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    on_ray = serve.add_argument_group('Ray Serve (pip install "chronoserve[ray]"; see docs/scale-out.md)')
    on_ray.add_argument(
        "--ray",
        action="store_true",
        help="serve on Ray Serve: an ingress with this HTTP API in front of engine replicas, each request "
        "placed where its model will be ready soonest",
    )
    on_ray.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDR",
        help="the Ray cluster to join ('auto', or host:port of `ray start --head`); default: start a local Ray",
    )
    scale = on_ray.add_mutually_exclusive_group()
    scale.add_argument("--replicas", type=positive_int, default=1, metavar="N", help="engine replicas (default: 1)")
    scale.add_argument(
        "--autoscale",
        type=parse_autoscale,
        default=None,
        metavar="MIN:MAX",
        help="scale engine replicas between MIN and MAX on their predicted wait and queue depth",
    )
    on_ray.add_argument(
        "--replica-cpus", type=positive_float, default=1.0, help="logical CPUs Ray reserves per engine replica (1)"
    )
    on_ray.add_argument(
        "--max-queued-requests",
        type=int,
        default=-1,
        metavar="N",
        help="requests waiting for an engine replica before 429 with Retry-After (-1: no bound; "
        "each replica's --max-queue refuses too)",
    )
    on_ray.add_argument("--ingress-replicas", type=positive_int, default=1, metavar="N", help="HTTP ingresses (1)")
    add_engine_options(serve, backend=SERVE_BACKEND)
    serve.set_defaults(func=cmd_serve)

    fc = sub.add_parser(
        "forecast",
        help="forecast one series from a CSV column or a list of values",
        description="Forecast one series through the engine and print the median and quantiles per step.",
    )
    source = fc.add_mutually_exclusive_group(required=True)
    source.add_argument("--csv", help="CSV file with a header row")
    source.add_argument("--values", help="comma-separated history, oldest first (empty or nan for gaps)")
    fc.add_argument("--column", default="pm25", help="CSV column to forecast (default: pm25)")
    fc.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"catalog name, random/NAME, hub id or dir (default: {DEFAULT_MODEL})"
    )
    fc.add_argument("--horizon", type=positive_int, default=24, help="steps to forecast (default: 24)")
    fc.add_argument("--context-length", type=positive_int, default=None, help="use only the last N points")
    fc.add_argument("--quantiles", type=quantiles, default=[0.1, 0.5, 0.9], help="levels (default: 0.1,0.5,0.9)")
    fc.add_argument("--json", action="store_true", help="print the result as JSON")
    add_engine_options(fc)
    fc.set_defaults(func=cmd_forecast)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
