"""``chronoserve models list`` and ``chronoserve models materialize NAME``.

:func:`register` adds the ``models`` command to the CLI's subparsers; every subcommand sets
``func``, a callable taking the parsed arguments and returning the exit code.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from chronoserve import errors
from chronoserve.models.catalog import CATALOG
from chronoserve.models.materialize import is_materialized, materialize, random_checkpoint_dir


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add ``models`` (with ``list`` and ``materialize``) to ``subparsers``; return its parser."""
    models = subparsers.add_parser(
        "models",
        help="list the model catalog, materialise random-weight checkpoints",
        description="The Chronos checkpoints chronoserve knows, and random-initialised copies of them.",
    )
    models.set_defaults(func=lambda args: _usage(models))
    sub = models.add_subparsers(title="subcommands", metavar="{list,materialize}")

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
        rows.append(
            [
                entry.name,
                entry.family,
                _format_params(entry.num_params),
                entry.hub_id or "-",
                "test" if entry.test_only else "",
                str(path) if is_materialized(path, entry.name, 0) else "no",
            ]
        )
    print(format_table(rows))
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
