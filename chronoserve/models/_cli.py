"""``chronoserve models list``, ``chronoserve models materialize NAME`` and ``chronoserve models train``.

:func:`register` adds the ``models`` command to the CLI's subparsers; every subcommand sets
``func``, a callable taking the parsed arguments and returning the exit code.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from chronoserve import errors
from chronoserve.models.catalog import CATALOG
from chronoserve.models.materialize import WEIGHTS_FILE, is_materialized, materialize, random_checkpoint_dir


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add ``models`` (with ``list`` and ``materialize``) to ``subparsers``; return its parser."""
    models = subparsers.add_parser(
        "models",
        help="list the model catalog, materialise random-weight checkpoints",
        description="The Chronos checkpoints chronoserve knows, and random-initialised copies of them.",
    )
    models.set_defaults(func=lambda args: _usage(models))
    sub = models.add_subparsers(title="subcommands", metavar="{list,materialize,train}")

    list_parser = sub.add_parser(
        "list",
        help="the catalog: name, family, parameters, hub id, whether materialised",
        description=(
            "Every catalog entry with its published parameter count and hub id, and whether a "
            "random-weight copy is materialised in the cache (load it as random/<name>). "
            "Entries marked 'test' are tiny configurations for tests."
        ),
    )
    list_parser.set_defaults(func=cmd_list)

    mat = sub.add_parser(
        "materialize",
        help="write a random-initialised checkpoint with a catalog architecture",
        description=(
            "Write config.json and model.safetensors with the architecture of NAME and random "
            "weights (deterministic from --seed). Prints the checkpoint directory. The forecasts of "
            "such a model are meaningless; its size, load time and latency are the real ones."
        ),
    )
    mat.add_argument("name", metavar="NAME", help="catalog name or hub id, e.g. chronos-bolt-tiny")
    mat.add_argument("--dir", default=None, help="checkpoint directory to write (default: the cache)")
    mat.add_argument("--seed", type=int, default=0, help="random seed of the weights (default: 0)")
    mat.set_defaults(func=cmd_materialize)
    _register_train(sub)
    return models


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _format_params(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1e6:.1f}M"
    if n >= 1_000:
        return f"{n / 1e3:.1f}K"
    return str(n)


def format_table(rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def cmd_list(args: argparse.Namespace) -> int:
    rows: list[list[str]] = [["NAME", "FAMILY", "PARAMS", "HUB ID", "NOTE", "MATERIALISED"]]
    for entry in CATALOG.values():
        path = random_checkpoint_dir(entry.name)
        note = "test" if entry.test_only else "trained here" if entry.trained_here else ""
        if entry.trained_here:
            local = entry.shipped_dir()
            materialised = "shipped" if local is not None and (local / WEIGHTS_FILE).is_file() else "MISSING"
        else:
            materialised = str(path) if is_materialized(path, entry.name, 0) else "no"
        rows.append(
            [entry.name, entry.family, _format_params(entry.num_params), entry.hub_id or "-", note, materialised]
        )
    print(format_table(rows))
    for entry in CATALOG.values():
        if entry.description:
            print(f"\n{entry.name}: {entry.description}")
    print("\nrandom/NAME loads NAME's architecture with random weights: real timings, meaningless forecasts.")
    return 0


def cmd_materialize(args: argparse.Namespace) -> int:
    try:
        path = materialize(args.name, dir=args.dir, seed=args.seed)
    except errors.UnknownModel as e:
        print(f"chronoserve models materialize: {e.message}", file=sys.stderr)
        return 2
    except (FileExistsError, OSError) as e:
        print(f"chronoserve models materialize: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0


DEFAULT_TRAIN_DATA = "../shared/data/pm25-full"


def _register_train(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from chronoserve.models.train import TRAIN_END, TRAIN_START, TrainSettings

    d = TrainSettings(data="")
    train = sub.add_parser(
        "train",
        help="train a small Chronos-2 from random init on the PM2.5 training span (2013-03 to 2016-06)",
        description=(
            "Train a small Chronos-2 from random initialisation through upstream Chronos2Pipeline.fit on "
            "the hourly Beijing PM2.5 data (--data: <site>.csv files with timestamp, relative_humidity, "
            "temperature, wind_speed, pm25). Only 2013-03-01 to 2016-06-30 23:00 is read: July to "
            "December 2016 is the evaluation span and is refused. The weather series are fed as "
            "covariates (each site without them, with them past-only, and with them known-future). "
            "Writes config.json, model.safetensors and training.json to --out and prints the directory; "
            "load it with --model DIR / --models DIR. Reproducible from --seed on one CPU."
        ),
    )
    train.add_argument(
        "--data", default=DEFAULT_TRAIN_DATA, help=f"directory of <site>.csv (default: {DEFAULT_TRAIN_DATA})"
    )
    train.add_argument("--out", default=None, help="checkpoint directory to write (default: the cache, per seed)")
    train.add_argument("--seed", type=int, default=d.seed, help=f"seed of the init, the batches, dropout ({d.seed})")
    train.add_argument("--steps", type=int, default=d.steps, help=f"optimizer steps ({d.steps})")
    train.add_argument("--batch-size", type=int, default=d.batch_size, help=f"rows per batch ({d.batch_size})")
    train.add_argument("--context", type=int, default=d.context_length, help=f"context length ({d.context_length})")
    train.add_argument("--horizon", type=int, default=d.horizon, help=f"horizon trained for ({d.horizon})")
    train.add_argument("--lr", type=float, default=d.learning_rate, help=f"peak learning rate ({d.learning_rate:g})")
    train.add_argument(
        "--validation",
        action="store_true",
        help=f"hold out {d.validation_start:%Y-%m-%d} to the end: train before it, report the loss on it",
    )
    train.add_argument("--start", default=f"{TRAIN_START:%Y-%m-%d}", help="first day or hour read (2013-03-01)")
    train.add_argument(
        "--end", default=f"{TRAIN_END:%Y-%m-%d %H:%M}", help="last day or hour read, inclusive (2016-06-30 23:00)"
    )
    train.add_argument("--sites", default=None, help="comma-separated site names (default: every CSV in --data)")
    train.add_argument(
        "--short-contexts",
        type=float,
        default=d.short_contexts,
        help=f"share of training windows cut from short pieces, for short contexts ({d.short_contexts:g})",
    )
    arch = train.add_argument_group("architecture")
    arch.add_argument("--d-model", type=int, default=d.d_model, help=f"hidden size ({d.d_model})")
    arch.add_argument("--d-ff", type=int, default=d.d_ff, help=f"feed-forward size ({d.d_ff})")
    arch.add_argument("--d-kv", type=int, default=d.d_kv, help=f"attention head size ({d.d_kv})")
    arch.add_argument("--layers", type=int, default=d.num_layers, help=f"encoder layers ({d.num_layers})")
    arch.add_argument("--heads", type=int, default=d.num_heads, help=f"attention heads ({d.num_heads})")
    train.add_argument("--threads", type=int, default=d.torch_threads, help=f"torch threads ({d.torch_threads})")
    train.set_defaults(func=cmd_train)


def _time_flag(flag: str, text: str, *, end: bool) -> Any:
    """``YYYY-MM-DD`` (a whole day: its first hour, or its last for ``--end``) or ``YYYY-MM-DD HH:MM``."""
    from datetime import datetime, timedelta

    from chronoserve.models.train import TrainingError

    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise TrainingError(flag, f"expected YYYY-MM-DD or 'YYYY-MM-DD HH:MM', got {text!r}") from None
    if value.tzinfo is not None:
        raise TrainingError(flag, f"give a local hour without a time zone, got {text!r}")
    if end and len(text.strip()) == 10:
        value += timedelta(hours=23)
    return value


def cmd_train(args: argparse.Namespace) -> int:
    from chronoserve.models.materialize import cache_dir
    from chronoserve.models.train import TrainingError, TrainSettings, train

    try:
        settings = TrainSettings(
            data=args.data,
            seed=args.seed,
            steps=args.steps,
            batch_size=args.batch_size,
            context_length=args.context,
            horizon=args.horizon,
            learning_rate=args.lr,
            start=_time_flag("start", args.start, end=False),
            end=_time_flag("end", args.end, end=True),
            validation=args.validation,
            d_model=args.d_model,
            d_ff=args.d_ff,
            d_kv=args.d_kv,
            num_layers=args.layers,
            num_heads=args.heads,
            torch_threads=args.threads,
            short_contexts=args.short_contexts,
            sites=tuple(s.strip() for s in args.sites.split(",") if s.strip()) if args.sites else None,
        )
        settings.check()
        out = args.out or str(cache_dir() / "models" / "trained" / f"chronos-2-pm25-seed{args.seed}")
        command = "chronoserve models train " + " ".join(sys.argv[3:] if sys.argv[1:3] == ["models", "train"] else [])
        result = train(settings, out, progress=sys.stderr, command=command.strip())
    except TrainingError as e:
        print(f"chronoserve: error: --{e.field}: {e.message}", file=sys.stderr)
        return 2
    loss = result.record["loss"]
    summary = f"final training loss {loss['final_train']:.4f}" if loss["final_train"] is not None else ""
    if loss["validation"] is not None:
        summary += f", validation loss {loss['validation']:.4f}"
    print(f"chronoserve models train: {summary}; {result.record['wall_seconds']:.0f} s", file=sys.stderr)
    print(result.out)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``models ...`` on its own (``python -m chronoserve.models._cli list``)."""
    parser = argparse.ArgumentParser(prog="chronoserve")
    subparsers = parser.add_subparsers()
    register(subparsers)
    args = parser.parse_args(["models", *(sys.argv[1:] if argv is None else argv)])
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
