"""``chronoserve serve``'s options: the parser's arguments, and the settings they make.

Apart from :mod:`chronoserve.cli` so that what builds a server from ``serve``'s options by name
(``serve run``'s builder, :func:`chronoserve.ray.ingress.build`) reads them as the command does,
without importing the command line (which imports it: a cycle); and light (the server is
imported only when settings are made).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from chronoserve._cli_common import (
    UsageError,
    add_data_options,
    add_engine_options,
    data_layout,
    engine_settings,
    non_negative_int,
    positive_float,
    positive_int,
    positive_or_none,
)
from chronoserve.errors import InvalidRequest
from chronoserve.limits import DEFAULT_LIMITS, Limits
from chronoserve.logs import LOG_FORMATS
from chronoserve.models.catalog import DEFAULT_MODEL
from chronoserve.placement import PLACEMENTS
from chronoserve.settings import SERVE_BACKEND


def add_serve_options(serve: argparse.ArgumentParser) -> None:
    """Every ``serve`` option, on ``serve`` (the ``serve`` subcommand's parser, or a parser of its own)."""
    serve.add_argument(
        "--config",
        default=None,
        metavar="TOML",
        help="a TOML file of serve options (max-queue = 2048, ...); also CHRONOSERVE_CONFIG. Every option can "
        "also be set as CHRONOSERVE_<OPTION>; the command line wins, then the environment, then the file "
        "(docs/operations.md)",
    )
    serve.add_argument(
        "--print-config", action="store_true", help="print the effective settings and where each came from, and exit"
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
    serve.add_argument(
        "--data",
        default=None,
        help="a CSV or Parquet file of series, or a directory of them (default: the embedded Beijing PM2.5); "
        "their layout: the 'your data' options",
    )
    serve.add_argument(
        "--drain-timeout", type=positive_float, default=30.0, help="seconds to finish queued work on SIGTERM"
    )
    serve.add_argument("--max-body-bytes", type=positive_int, default=1 << 20, help="request body limit (1 MiB)")
    serve.add_argument("--no-warmup", action="store_true", help="report ready without loading models first")
    serve.add_argument(
        "--no-exit-on-error",
        action="store_true",
        help="keep serving when the default model fails to load at start-up, retrying it with backoff "
        "(default: exit 1 with one line saying why)",
    )
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
    serve.add_argument(
        "--placement",
        choices=PLACEMENTS,
        default="readiness",
        help="with --engines K or --ray: where each request goes: where its model will be ready soonest "
        "(readiness, the default); round-robin and random are there to compare against",
    )
    access = serve.add_argument_group("access control and TLS (see docs/operations.md)")
    access.add_argument(
        "--api-key",
        default=None,
        metavar="KEYS",
        help="comma-separated bearer tokens every route but /healthz, /readyz and /metrics then needs "
        "(Authorization: Bearer <key>); prefer --api-key-file or CHRONOSERVE_API_KEY (a command line is public)",
    )
    access.add_argument("--api-key-file", default=None, metavar="FILES", help="files of API keys, one per line")
    access.add_argument(
        "--admin-key",
        default=None,
        metavar="KEYS",
        help="bearer tokens for model management (POST /models/{name}/load, unload, warm), which is off without one",
    )
    access.add_argument("--admin-key-file", default=None, metavar="FILES", help="files of admin keys, one per line")
    access.add_argument(
        "--model-root",
        default=None,
        metavar="DIRS",
        help="comma-separated directories whose checkpoints model management may load (default: none)",
    )
    access.add_argument("--ssl-certfile", default=None, metavar="PEM", help="TLS certificate chain: serve HTTPS")
    access.add_argument("--ssl-keyfile", default=None, metavar="PEM", help="TLS private key (with --ssl-certfile)")
    logs = serve.add_argument_group("logs (see docs/operations.md)")
    logs.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    logs.add_argument(
        "--log-format",
        default="text",
        choices=LOG_FORMATS,
        help="text (default) or json: one JSON object per line, the access log's fields at the top level",
    )
    logs.add_argument(
        "--no-access-log",
        action="store_true",
        help="no line per request (default: one, with its X-Request-ID, status, model, batch size and times)",
    )
    on_ray = serve.add_argument_group('Ray Serve (pip install "chronoserve[ray]"; see docs/scale-out.md)')
    on_ray.add_argument(
        "--ray",
        action="store_true",
        help="serve on Ray Serve: this HTTP API here, in front of engine replicas on Ray, each request "
        "placed where its model will be ready soonest",
    )
    on_ray.add_argument(
        "--ray-proxy",
        action="store_true",
        help="with --ray: HTTP through Ray Serve's proxy and an ingress deployment (as `serve run` does), "
        "not this process; slower (docs/scale-out.md)",
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
        help="requests waiting at the front end for an engine replica before 429 with Retry-After "
        "(-1: --max-queue's bound; each replica's --max-queue refuses too)",
    )
    on_ray.add_argument(
        "--ingress-replicas", type=positive_int, default=1, metavar="N", help="with --ray-proxy: HTTP ingresses (1)"
    )
    add_engine_options(serve, backend=SERVE_BACKEND)
    add_data_options(serve)


def serve_settings(args: argparse.Namespace) -> Any:
    """``serve``'s options as :class:`~chronoserve.server.ServerSettings`, checked (a
    :class:`UsageError` naming the option that cannot work)."""
    from chronoserve.server import ServerSettings

    models = tuple(m.strip() for m in (args.models or "").split(",") if m.strip())
    if args.data is not None and not Path(args.data).exists():
        raise UsageError(f"--data: no such file or directory: {args.data}")
    limits = Limits(
        max_covariates=args.max_covariates,
        max_request_gflop=args.max_request_gflop,
        max_inference_seconds=args.max_inference_seconds,
    )
    try:
        api_keys = read_keys(args.api_key, args.api_key_file, "--api-key")
        admin_keys = read_keys(args.admin_key, args.admin_key_file, "--admin-key")
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    settings = ServerSettings(
        engine=engine_settings(args, max_queue=args.max_queue, limits=limits),
        models=models,
        default_model=args.default_model,
        warmup=not args.no_warmup,
        exit_on_error=not args.no_exit_on_error,
        data=args.data,
        data_layout=data_layout(args),
        max_body_bytes=args.max_body_bytes,
        drain_timeout=args.drain_timeout,
        log_predictions=args.log_predictions,
        default_deadline_ms=args.default_deadline_ms,
        placement=args.placement,
        api_keys=api_keys,
        admin_keys=admin_keys,
        model_roots=tuple(str(Path(d).resolve()) for d in (args.model_root or "").split(",") if d.strip()),
        ssl_certfile=args.ssl_certfile,
        ssl_keyfile=args.ssl_keyfile,
        log_format=args.log_format,
        access_log=not args.no_access_log,
        header_timeout=args.header_timeout,
        body_timeout=args.body_timeout,
        keep_alive_timeout=args.keep_alive_timeout,
        max_header_bytes=args.max_header_bytes,
        max_connections=args.max_connections,
    )
    _check_serve_settings(settings)
    return settings


def read_keys(values: str | None, files: str | None, what: str) -> tuple[str, ...]:
    """Keys from a comma-separated ``values`` and from ``files`` (comma-separated paths: one key a
    line; blank lines and ``#`` comments skipped). Raises ``ValueError`` naming ``what``."""
    keys = [k.strip() for k in (values or "").split(",") if k.strip()]
    for name in (f.strip() for f in (files or "").split(",") if f.strip()):
        try:
            text = Path(name).read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"{what}-file: cannot read {name}: {exc.strerror or exc}") from None
        keys += [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    for key in keys:
        if len(key) < 16 or any(c.isspace() or not c.isprintable() for c in key):
            raise ValueError(f"{what}: a key must be at least 16 printable characters without spaces")
    return tuple(dict.fromkeys(keys))


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


def _check_serve_settings(settings: Any) -> None:
    """Fail fast, before binding a port, on options that cannot work."""
    from chronoserve.data import SeriesStore
    from chronoserve.plugins import load_policy

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
            SeriesStore.from_dir(settings.data, settings.data_layout)
        except ValueError as exc:
            raise UsageError(f"--data: {exc}") from None
    _check_tls(settings.ssl_certfile, settings.ssl_keyfile)
    for root in settings.model_roots:
        if not Path(root).is_dir():
            raise UsageError(f"--model-root: not a directory: {root}")


def _check_tls(certfile: str | None, keyfile: str | None) -> None:
    """The certificate and key load together (a wrong pair, a passphrase, a missing file: said now)."""
    if certfile is None and keyfile is None:
        return
    if certfile is None or keyfile is None:
        raise UsageError(f"{'--ssl-keyfile' if keyfile is None else '--ssl-certfile'} is needed too: TLS takes both")
    import ssl

    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(certfile, keyfile, password=lambda: b"")
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"--ssl-certfile/--ssl-keyfile: cannot load {certfile} with {keyfile}: {exc}") from None


def serve_parser() -> argparse.ArgumentParser:
    """A parser of ``serve``'s options alone (errors raise :class:`argparse.ArgumentError`)."""
    parser = argparse.ArgumentParser(prog="chronoserve serve", allow_abbrev=False, exit_on_error=False)
    add_serve_options(parser)
    return parser
