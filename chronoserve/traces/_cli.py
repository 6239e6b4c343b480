"""``chronoserve trace gen`` (a synthetic trace) and ``chronoserve trace check TRACE``.

:func:`register` adds the ``trace`` command to the CLI's subparsers; every subcommand sets
``func``, a callable taking the parsed arguments and returning the exit code. Bad input is a
message on stderr naming the flag, and exit code 2.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from chronoserve.errors import InvalidRequest

#: The flag of each :func:`chronoserve.traces.generate` argument, for error messages.
_FLAGS = {
    "n": "--n",
    "arrivals": "--arrivals",
    "rate": "--rate",
    "cv": "--cv",
    "seed": "--seed",
    "models": "--models",
    "weights": "--weights",
    "series": "--series",
    "city": "--series",
    "context_days": "--context-days",
    "horizons": "--horizons",
    "covariates_share": "--covariates-share",
    "deadline_ms": "--deadline-ms",
}


class _FlagError(Exception):
    def __init__(self, flag: str, message: str) -> None:
        super().__init__(f"{flag}: {message}")
        self.flag = flag
        self.message = message


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add ``trace`` (with ``gen`` and ``check``) to ``subparsers``; return its parser."""
    trace = subparsers.add_parser(
        "trace",
        help="generate and check request traces for chronoserve replay",
        description="Request traces (JSONL, one request a line; see docs/traces.md).",
    )
    trace.set_defaults(func=lambda args: _usage(trace))
    sub = trace.add_subparsers(title="subcommands", metavar="{gen,check}")

    gen = sub.add_parser(
        "gen",
        help="write a synthetic trace, reproducible from --seed",
        description=(
            "Write a synthetic trace of --n requests: models drawn from --models (with --weights), "
            "a Beijing site, a context of --context-days days, a horizon from --horizons, covariates "
            "on a --covariates-share of the Chronos-2 requests, an end hour with the context and the "
            "horizon inside the data; sent all at once (burst), or with exponential (poisson) or "
            "gamma gaps at --rate requests per second (gamma: gaps with coefficient of variation "
            "--cv). Prints a one-line summary on stderr."
        ),
    )
    gen.add_argument("--arrivals", required=True, metavar="{burst,poisson,gamma}", help="the arrival process")
    gen.add_argument("--rate", default=None, help="poisson, gamma: mean requests per second")
    gen.add_argument("--cv", default=None, help="gamma: coefficient of variation of the gaps (default: 1)")
    gen.add_argument("--n", default="500", help="number of requests (default: 500)")
    gen.add_argument("--seed", default="0", help="random seed (default: 0)")
    gen.add_argument(
        "--models",
        default=None,
        help="comma-separated catalog names (default: random/chronos-bolt-tiny, random/chronos-bolt-mini, "
        "random/chronos-2 weighted 0.45, 0.35, 0.2)",
    )
    gen.add_argument("--weights", default=None, help="comma-separated weights of --models (default: equal)")
    gen.add_argument("--series", default=None, help="comma-separated series ids (default: all 12 sites)")
    gen.add_argument("--context-days", default=None, help="comma-separated context lengths in days (2,4,8,10,14)")
    gen.add_argument("--horizons", default=None, help="comma-separated horizons in hours (4,8,12,24,48)")
    gen.add_argument("--covariates-share", default="0.3", help="share of Chronos-2 requests with covariates (0.3)")
    gen.add_argument("--known-future", action="store_true", help="covariate requests also send future covariates")
    gen.add_argument("--deadline-ms", default=None, help="a deadline_ms for every request (default: none)")
    gen.add_argument("--out", default="-", help="file to write (default: stdout)")
    gen.set_defaults(func=cmd_gen)

    check = sub.add_parser(
        "check",
        help="read a trace, print its summary and what the embedded data or the models cannot serve",
        description="Read TRACE, print a one-line summary, and one line per request the embedded data "
        "or the model catalog cannot serve. Exit 0 when every request is servable, 1 otherwise.",
    )
    check.add_argument("trace", metavar="TRACE", help="trace file (JSONL)")
    check.set_defaults(func=cmd_check)
    return trace


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _int(flag: str, text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise _FlagError(flag, f"expected an integer, got {text!r}") from None
    if value < minimum:
        raise _FlagError(flag, f"must be >= {minimum}, got {value}")
    return value


def _float(flag: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise _FlagError(flag, f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise _FlagError(flag, f"expected a finite number, got {text!r}")
    return value


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _ints(flag: str, text: str) -> list[int]:
    values = [_int(flag, x, 1) for x in _names(text)]
    if not values:
        raise _FlagError(flag, "expected a comma-separated list of integers")
    return values


def cmd_gen(args: argparse.Namespace) -> int:
    from chronoserve.traces import DEFAULT_CONTEXT_DAYS, DEFAULT_HORIZONS, DEFAULT_MODELS, dumps_trace, generate

    try:
        n = _int("--n", args.n, 1)
        seed = _int("--seed", args.seed, 0)
        rate = None if args.rate is None else _float("--rate", args.rate)
        cv = None if args.cv is None else _float("--cv", args.cv)
        if cv is not None and args.arrivals != "gamma":
            raise _FlagError("--cv", f"applies only to --arrivals gamma, not {args.arrivals}")
        models: Sequence[str] | dict[str, float]
        if args.models is None:
            if args.weights is not None:
                raise _FlagError("--weights", "needs --models")
            models = dict(DEFAULT_MODELS)
        else:
            names = _names(args.models)
            if args.weights is None:
                models = names
            else:
                weights = [_float("--weights", w) for w in _names(args.weights)]
                if len(weights) != len(names):
                    raise _FlagError("--weights", f"{len(weights)} weights for {len(names)} models")
                if len(set(names)) != len(names):
                    raise _FlagError("--models", f"lists a model twice: {names}")
                models = dict(zip(names, weights, strict=True))
        series = None if args.series is None else _names(args.series)
        days = DEFAULT_CONTEXT_DAYS if args.context_days is None else _ints("--context-days", args.context_days)
        horizons = DEFAULT_HORIZONS if args.horizons is None else _ints("--horizons", args.horizons)
        deadline = None if args.deadline_ms is None else _float("--deadline-ms", args.deadline_ms)
        share = _float("--covariates-share", args.covariates_share)
        trace = generate(
            n,
            args.arrivals,
            rate=rate,
            cv=1.0 if cv is None else cv,
            seed=seed,
            models=models,
            series=series,
            context_days=days,
            horizons=horizons,
            covariates_share=share,
            known_future=args.known_future,
            deadline_ms=deadline,
        )
    except _FlagError as exc:
        print(f"chronoserve trace gen: error: {exc}", file=sys.stderr)
        return 2
    except InvalidRequest as exc:
        flag = _FLAGS.get(exc.field, exc.field)
        print(f"chronoserve trace gen: error: {flag}: {exc.message}", file=sys.stderr)
        return 2
    text = dumps_trace(trace)
    if args.out == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        where = "stdout"
    else:
        try:
            Path(args.out).write_text(text, encoding="utf-8", newline="\n")
        except OSError as exc:
            print(
                f"chronoserve trace gen: error: --out: cannot write {args.out} ({exc.strerror or exc})", file=sys.stderr
            )
            return 1
        where = args.out
    print(f"chronoserve trace gen: {trace.summary()} -> {where}", file=sys.stderr)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from chronoserve.traces import TraceError, check_trace, read_trace

    try:
        trace = read_trace(args.trace)
    except TraceError as exc:
        print(f"chronoserve trace check: error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.trace}: {trace.summary()}")
    problems = check_trace(trace)
    for problem in problems:
        print(f"{args.trace}: {problem}")
    if problems:
        print(f"{args.trace}: {len(problems)} of {len(trace)} requests cannot be served as they are")
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``trace ...`` on its own (``python -m chronoserve.traces._cli gen --arrivals burst``)."""
    parser = argparse.ArgumentParser(prog="chronoserve")
    subparsers = parser.add_subparsers()
    register(subparsers)
    args = parser.parse_args(["trace", *(sys.argv[1:] if argv is None else argv)])
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
