"""What every command of the ``chronoserve`` CLI shares: the usage error, flag parsers, engine options.

Each command's CLI lives in its own package (``eval/_cli.py``, ``replay/_cli.py``, ...) and
imports from here, never from :mod:`chronoserve.cli`, which only assembles them: so no
command imports the top-level CLI back.
"""

from __future__ import annotations

import argparse
import math
from typing import TYPE_CHECKING, Any

from .models.hub import HubAccess
from .settings import EngineSettings

if TYPE_CHECKING:
    from .data import Layout


class UsageError(Exception):
    """A bad command line: printed as ``error: ...`` with exit code 2."""


def _whole(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
    return value


def positive_int(text: str) -> int:
    return _whole(text, 1)


def non_negative_int(text: str) -> int:
    return _whole(text, 0)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
    return value


def positive_or_none(text: str) -> float | None:
    if text.strip().lower() == "none":
        return None
    return positive_float(text)


def byte_size(text: str) -> int:
    """A size in bytes: ``2GB``, ``512MiB``, ``1000000`` (see :func:`chronoserve._units.parse_bytes`)."""
    from ._units import parse_bytes

    try:
        return parse_bytes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def quantiles(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def batch_or_auto(text: str) -> int | str:
    """``--max-batch``: a whole number >= 1, or ``auto``."""
    return "auto" if text.strip().lower() == "auto" else positive_int(text)


def wait_ms_or_auto(text: str) -> float | str:
    """``--max-wait-ms``: milliseconds >= 0, or ``auto``."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected milliseconds or 'auto', got {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def add_engine_options(parser: argparse.ArgumentParser, *, backend: str = "torch") -> None:
    """Options shared by every command that runs the engine."""
    group = parser.add_argument_group("engine")
    group.add_argument("--policy", default="batched", help="naive, lru, batched, a plugin name or module:Class")
    group.add_argument(
        "--max-batch", type=batch_or_auto, default=None, help="batched: B, requests per batch, or auto (--slo-p95-ms)"
    )
    group.add_argument(
        "--max-wait-ms",
        type=wait_ms_or_auto,
        default=None,
        help="batched: Δt after the oldest request, or auto (--slo-p95-ms)",
    )
    group.add_argument(
        "--slo-p95-ms",
        type=positive_float,
        default=None,
        help="batched with auto B or Δt: the p95 latency to keep; B, Δt and workers follow the load",
    )
    group.add_argument(
        "--auto-objective",
        choices=["latency", "cpu"],
        default=None,
        help="batched auto: within the SLO, the lowest latency (default) or the least CPU per forecast",
    )
    group.add_argument("--max-resident", type=positive_int, default=None, help="lru/batched: K resident models")
    group.add_argument("--memory-budget", default=None, help="lru/batched: bytes of resident models, e.g. 2GB")
    group.add_argument(
        "--eviction",
        choices=["lru", "gdsf"],
        default=None,
        help="lru/batched: which idle model makes room: least recently used (default), or least expected loss "
        "(gdsf: requests x reload time by tier / size; docs/coldstart.md)",
    )
    group.add_argument(
        "--host-cache-budget",
        type=byte_size,
        default=None,
        help="bytes of evicted models' weights kept in host memory, e.g. 2GB: reloading them skips the disk "
        "(default: none; docs/coldstart.md)",
    )
    group.add_argument("--load-workers", type=positive_int, default=1, help="models that may load at once (default: 1)")
    group.add_argument("--workers", type=positive_int, default=None, help="inference threads (default: 2)")
    group.add_argument("--torch-threads", type=positive_int, default=None, help="torch threads per worker")
    group.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    group.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16", "int8"],
        help="model dtype; int8: dynamic quantisation of the Linear layers (answers change: docs/backends.md)",
    )
    group.add_argument(
        "--backend",
        default=backend,
        choices=["torch", "onnx"],
        help=f"what runs the models: torch (eager PyTorch) or onnx (ONNX Runtime: exported once per model and "
        f"cached, the same answers within 1e-5, torch where it cannot serve; docs/backends.md) (default: {backend})",
    )
    group.add_argument(
        "--profile", default=None, help="profile.json from `chronoserve profile`: the cost model starts from it"
    )
    group.add_argument(
        "--allow-hub",
        nargs="?",
        const="*",
        default=None,
        metavar="IDS",
        help="let models be downloaded from the Hugging Face hub: these comma-separated hub ids, or any "
        "without IDS (default: none; the local Hugging Face cache and checkpoint directories only)",
    )


def engine_settings(args: argparse.Namespace, **more: Any) -> EngineSettings:
    """The one :class:`~chronoserve.settings.EngineSettings` of a command, from :func:`add_engine_options`'
    flags (and ``more`` fields a command adds: ``max_queue``, ``limits``)."""
    options: dict[str, Any] = {}
    if args.max_batch is not None:
        options["max_batch"] = args.max_batch
    if args.max_wait_ms is not None:
        options["max_wait"] = args.max_wait_ms if args.max_wait_ms == "auto" else args.max_wait_ms / 1000.0
    if getattr(args, "slo_p95_ms", None) is not None:
        options["slo_p95"] = args.slo_p95_ms / 1000.0
    if getattr(args, "auto_objective", None) is not None:
        options["objective"] = args.auto_objective
    if args.max_resident is not None:
        options["max_resident"] = args.max_resident
    if args.memory_budget is not None:
        options["memory_budget"] = args.memory_budget
    if getattr(args, "eviction", None) is not None:
        options["eviction"] = args.eviction
    profile = None
    if getattr(args, "profile", None) is not None:
        from .profile import load_profile

        try:
            profile = load_profile(args.profile)
        except ValueError as exc:
            raise UsageError(f"--profile: {exc}") from None
    return EngineSettings(
        policy=args.policy,
        policy_options=options,
        workers=args.workers,
        torch_threads=args.torch_threads,
        device=args.device,
        dtype=args.dtype,
        backend=args.backend,
        profile=profile,
        host_budget=getattr(args, "host_cache_budget", None),
        load_workers=getattr(args, "load_workers", 1),
        allow_hub=HubAccess.of(getattr(args, "allow_hub", None)).allowed,
        **more,
    )


def engine_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Engine constructor arguments (with the loader) from :func:`add_engine_options`' flags."""
    return engine_settings(args).engine_kwargs()


def add_data_options(
    parser: argparse.ArgumentParser,
    *,
    target_flags: tuple[str, ...] = ("--target-column",),
    timestamp: str | None = "timestamp",
) -> None:
    """How a user's series files map onto series (``serve --data``, ``forecast --csv``): see
    :class:`chronoserve.data.Layout`. ``timestamp``: the timestamp column's default (None: the
    column ``timestamp`` if the file has one, else no timestamps)."""
    group = parser.add_argument_group("your data (see docs/operations.md)")
    group.add_argument(*target_flags, dest="target_column", default="pm25", help="the target column (default: pm25)")
    group.add_argument(
        "--timestamp-column",
        default=timestamp,
        help=f"the timestamp column (default: {timestamp or 'timestamp, if the file has one'})",
    )
    group.add_argument(
        "--timestamp-format",
        default=None,
        metavar="FORMAT",
        help="how timestamps are written, as strptime has it, e.g. '%%d/%%m/%%Y %%H:%%M' for day-first dates "
        "(default: ISO 8601; offsets such as Z or +08:00 are normalised to UTC)",
    )
    group.add_argument(
        "--id-column", default=None, help="a column naming each row's series: one file holds several (default: none)"
    )
    group.add_argument(
        "--covariates",
        default=None,
        metavar="COLUMNS",
        help="comma-separated covariate columns (default: every other column of numbers)",
    )
    group.add_argument(
        "--delimiter", default=None, help="the CSV delimiter: , ; tab | (default: sniffed from the file)"
    )
    group.add_argument(
        "--lower-bound",
        type=finite_float,
        default=None,
        help="the least value the target can take, e.g. 0 for a quantity that cannot be negative: forecasts "
        "are clipped to it (default: none; the embedded PM2.5 series: 0)",
    )


def data_layout(args: argparse.Namespace) -> Layout:
    """The :class:`~chronoserve.data.Layout` of :func:`add_data_options`' flags (a UsageError naming the flag)."""
    from .data import Layout

    delimiter = args.delimiter
    if delimiter is not None and delimiter.lower() in ("tab", "\\t"):
        delimiter = "\t"
    covariates = None
    if args.covariates is not None:
        covariates = tuple(c.strip() for c in args.covariates.split(",") if c.strip())
    try:
        return Layout(
            timestamp=args.timestamp_column or "timestamp",
            target=args.target_column,
            id=args.id_column,
            covariates=covariates,
            timestamp_format=args.timestamp_format,
            delimiter=delimiter,
            lower_bound=args.lower_bound,
        )
    except ValueError as exc:
        flag = "--delimiter" if "delimiter" in str(exc) else "--timestamp-format"
        raise UsageError(f"{flag}: {exc}") from None


def finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value
