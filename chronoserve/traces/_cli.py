"""``chronoserve trace gen`` (a synthetic trace), ``trace show TRACE`` and ``trace check TRACE``.

:func:`register` adds the ``trace`` command to the CLI's subparsers; every subcommand sets
``func``, a callable taking the parsed arguments and returning the exit code. Bad input is a
message on stderr naming the flag, and exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chronoserve.errors import InvalidRequest
from chronoserve.limits import MAX_PRIORITY

if TYPE_CHECKING:
    from chronoserve.traces import Trace

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
    "deadline_classes": "--deadline-classes",
    "burst_factor": "--burst-factor",
    "burst_share": "--burst-share",
    "burst_seconds": "--burst-seconds",
    "phase_cv": "--phase-cv",
}


class _FlagError(Exception):
    def __init__(self, flag: str, message: str) -> None:
        super().__init__(f"{flag}: {message}")
        self.flag = flag
        self.message = message


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add ``trace`` (with ``gen``, ``show`` and ``check``) to ``subparsers``; return its parser."""
    trace = subparsers.add_parser(
        "trace",
        help="generate and check request traces for chronoserve replay",
        description="Request traces (JSONL, one request a line; see docs/traces.md).",
    )
    trace.set_defaults(func=lambda args: _usage(trace))
    sub = trace.add_subparsers(title="subcommands", metavar="{gen,show,check}")

    gen = sub.add_parser(
        "gen",
        help="write a synthetic trace, reproducible from --seed",
        description=(
            "Write a synthetic trace of --n requests: models drawn from --models (with --weights), "
            "a Beijing site, a context of --context-days days, a horizon from --horizons, covariates "
            "on a --covariates-share of the Chronos-2 requests, an end hour with the context and the "
            "horizon inside the data; sent all at once (burst), or with exponential (poisson) or "
            "gamma gaps at --rate requests per second (gamma: gaps with coefficient of variation "
            "--cv), or alternating calm and burst phases of mean rate --rate (onoff: the bursts "
            "--burst-factor times the calm rate, --burst-seconds long on average, a --burst-share of "
            "the time). Deadlines: --deadline-ms for all, or --deadline-classes drawn by share. "
            "Prints a one-line summary on stderr."
        ),
    )
    gen.add_argument("--arrivals", required=True, metavar="{burst,poisson,gamma,onoff}", help="the arrival process")
    gen.add_argument("--rate", default=None, help="poisson, gamma, onoff: mean requests per second")
    gen.add_argument("--cv", default=None, help="gamma: coefficient of variation of the gaps (default: 1)")
    gen.add_argument("--burst-factor", default=None, help="onoff: the burst rate / the calm rate (default: 4)")
    gen.add_argument("--burst-share", default=None, help="onoff: share of the time in bursts, in (0, 1) (0.2)")
    gen.add_argument("--burst-seconds", default=None, help="onoff: mean length of a burst in seconds (2)")
    gen.add_argument(
        "--phase-cv",
        default=None,
        help="onoff: CV of the phases' lengths; 1 exponential (Markov-modulated), 0 fixed lengths (default: 1)",
    )
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
    gen.add_argument(
        "--deadline-classes",
        default=None,
        metavar="NAME:MS:SHARE[:PRIORITY],...",
        help="deadline classes drawn by share (the shares add up to 1), e.g. "
        "interactive:150:0.2:1,dashboard:1000:0.5:2,batch:5000:0.3:3; each request gets its class's "
        "deadline_ms, priority (1 the highest) and deadline_class. Not with --deadline-ms",
    )
    gen.add_argument("--out", default="-", help="file to write (default: stdout)")
    gen.set_defaults(func=cmd_gen)

    show = sub.add_parser(
        "show",
        help="read a trace and describe it: requests, rates, bursts, models, contexts, horizons, classes",
        description="Read TRACE and print what it holds: the summary line, how it was generated (its meta), "
        "the requests per 1-second window, the burst phases of an onoff trace, and the requests per model, "
        "context, horizon, deadline class (with its deadline and priority), deadline and priority.",
    )
    show.add_argument("trace", metavar="TRACE", help="trace file (JSONL)")
    show.set_defaults(func=cmd_show)

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


def _classes(text: str) -> list[tuple[str, float, float, int | None]]:
    flag = "--deadline-classes"
    items = [x.strip() for x in text.split(",")]
    if not any(items):
        raise _FlagError(flag, "expected NAME:DEADLINE_MS:SHARE[:PRIORITY],... (e.g. interactive:150:0.2:1)")
    out: list[tuple[str, float, float, int | None]] = []
    for item in items:
        parts = [x.strip() for x in item.split(":")]
        if len(parts) not in (3, 4) or not parts[0]:
            raise _FlagError(flag, f"expected NAME:DEADLINE_MS:SHARE[:PRIORITY] for each class, got {item!r}")
        name, deadline, share = parts[0], parts[1], parts[2]
        try:
            deadline_ms = _float(flag, deadline)
            share_f = _float(flag, share)
            priority = None if len(parts) == 3 else int(parts[3])
        except (_FlagError, ValueError):
            raise _FlagError(
                flag,
                f"class {name!r}: expected NAME:DEADLINE_MS:SHARE[:PRIORITY] with numbers "
                f"(priority an integer), got {item!r}",
            ) from None
        out.append((name, deadline_ms, share_f, priority))
    return out


def cmd_gen(args: argparse.Namespace) -> int:
    from chronoserve.traces import DEFAULT_CONTEXT_DAYS, DEFAULT_HORIZONS, DEFAULT_MODELS, dumps_trace, generate

    try:
        n = _int("--n", args.n, 1)
        seed = _int("--seed", args.seed, 0)
        rate = None if args.rate is None else _float("--rate", args.rate)
        cv = None if args.cv is None else _float("--cv", args.cv)
        if cv is not None and args.arrivals != "gamma":
            raise _FlagError("--cv", f"applies only to --arrivals gamma, not {args.arrivals}")
        onoff = [
            None if text is None else _float(flag, text)
            for flag, text in (
                ("--burst-factor", args.burst_factor),
                ("--burst-share", args.burst_share),
                ("--burst-seconds", args.burst_seconds),
                ("--phase-cv", args.phase_cv),
            )
        ]
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
        classes = None if args.deadline_classes is None else _classes(args.deadline_classes)
        if classes is not None and deadline is not None:
            raise _FlagError("--deadline-classes", "cannot be combined with --deadline-ms: give one or the other")
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
            deadline_classes=classes,
            burst_factor=onoff[0],
            burst_share=onoff[1],
            burst_seconds=onoff[2],
            phase_cv=onoff[3],
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


def _share(count: int, total: int) -> str:
    return f"{count} ({100.0 * count / total:.1f} %)"


def _counted(counts: Mapping[Any, int], total: int, unit: str = "") -> str:
    return ", ".join(f"{key}{unit} {_share(c, total)}" for key, c in counts.items())


def _num(value: float) -> str:
    return f"{value:g}"


def _generated(meta: Mapping[str, Any]) -> str | None:
    """How the trace was generated, from its meta (informational: absent or odd keys are skipped)."""
    arrivals = meta.get("arrivals")
    if not isinstance(arrivals, str):
        return None
    parts = [f"arrivals {arrivals}"]
    rate = meta.get("rate")
    if isinstance(rate, int | float):
        parts.append(f"rate {_num(rate)}/s")
    if arrivals == "gamma" and isinstance(meta.get("cv"), int | float):
        parts.append(f"cv {_num(meta['cv'])}")
    onoff = meta.get("onoff")
    if isinstance(onoff, Mapping):
        with contextlib.suppress(KeyError, TypeError):
            parts.append(
                f"calm {_num(onoff['calm_rate'])}/s, bursts {_num(onoff['burst_rate'])}/s "
                f"(x{_num(onoff['burst_factor'])}) {_num(onoff['burst_seconds'])} s long on average, "
                f"{_num(100 * onoff['burst_share'])} % of the time, phase CV {_num(onoff['phase_cv'])}"
            )
    if isinstance(meta.get("seed"), int):
        parts.append(f"seed {meta['seed']}")
    by = meta.get("created_by")
    head = f"generated by {by}: " if isinstance(by, str) else "generated: "
    extra = [f"{key} {meta[key]}" for key in ("retimed", "speed") if key in meta]
    return head + ", ".join(parts) + ("" if not extra else f" (then {'; '.join(str(x) for x in extra)})")


def _bursts(meta: Mapping[str, Any]) -> list[tuple[float, float]] | None:
    if "retimed" in meta or "speed" in meta:
        return None  # the generator's phases no longer apply
    onoff = meta.get("onoff")
    bursts = onoff.get("bursts") if isinstance(onoff, Mapping) else None
    if not isinstance(bursts, list):
        return None
    try:
        return [(float(a), float(b)) for a, b in bursts]
    except (TypeError, ValueError):
        return None


def describe(trace: Trace) -> list[str]:
    """The lines of ``chronoserve trace show``: what ``trace`` holds."""
    import numpy as np

    n = len(trace)
    lines = [trace.timing()]
    generated = _generated(trace.meta)
    if generated:
        lines.append(generated)
    times = trace.times()
    whole = int(math.floor(trace.duration))
    if whole >= 1:
        per_second = np.bincount(np.floor(times).astype(np.int64), minlength=whole)[:whole]
        busiest = int(np.argmax(per_second))
        lines.append(
            f"requests per 1-s window ({whole} whole seconds): min {int(per_second.min())}, "
            f"median {_num(float(np.median(per_second)))}, max {int(per_second.max())} "
            f"(t = {busiest}-{busiest + 1} s)"
        )
    bursts = _bursts(trace.meta)
    if bursts is not None:
        inside = sum(int(np.count_nonzero((times >= a) & (times < b))) for a, b in bursts)
        length = sum(b - a for a, b in bursts)
        spans = ", ".join(f"{_num(a)}-{_num(b)}" for a, b in bursts)
        rate = f", {inside / length:.1f}/s" if length > 0 else ""
        calm = trace.duration - length
        calm_rate = f", {(n - inside) / calm:.1f}/s" if calm > 0 else ""
        lines.append(
            f"bursts: {len(bursts)} ({spans} s), {length:.1f} s of {trace.duration:.1f} s: "
            f"{inside} requests in bursts{rate}, {n - inside} calm{calm_rate}"
        )
    lines.append(f"models: {_counted(trace.models(), n)}")
    contexts = _counts_sorted(r.context_hours for r in trace)
    lines.append("contexts: " + ", ".join(f"{h} h ({_num(h / 24)} d) {_share(c, n)}" for h, c in contexts.items()))
    lines.append(f"horizons: {_counted(_counts_sorted(r.horizon_hours for r in trace), n, ' h')}")
    cov = sum(r.use_covariates for r in trace)
    known = sum(r.known_future_covariates for r in trace)
    cities = trace.cities()
    lines.append(f"series: {len(cities)}; with covariates: {cov} (known future: {known})")
    ends = [r.end for r in trace if r.end is not None]
    if ends:
        lines.append(f"end: {min(ends).isoformat()} to {max(ends).isoformat()} ({n - len(ends)} without)")
    classes = trace.classes()
    if classes:
        lines.append("deadline classes:")
        rows = [("class", "requests", "share", "deadline_ms", "priority")]
        found = []
        for name, count in classes.items():
            members = [r for r in trace if r.deadline_class == name]
            class_deadlines = sorted({r.deadline_ms for r in members}, key=lambda d: (d is None, d or 0.0))
            class_priorities = sorted({r.priority for r in members}, key=lambda p: (p is None, p or 0))
            order = (class_priorities[0] or MAX_PRIORITY + 1, class_deadlines[0] or math.inf, name)
            found.append(
                (
                    order,
                    (
                        name,
                        str(count),
                        f"{100.0 * count / n:.1f} %",
                        "/".join("-" if d is None else _num(d) for d in class_deadlines),
                        "/".join("-" if p is None else str(p) for p in class_priorities),
                    ),
                )
            )
        rows.extend(row for _, row in sorted(found))  # by priority, then deadline
        unclassed = n - sum(classes.values())
        if unclassed:
            rows.append(("(none)", str(unclassed), f"{100.0 * unclassed / n:.1f} %", "", ""))
        widths = [max(len(row[i]) for row in rows) for i in range(5)]
        for row in rows:
            cells = [row[0].ljust(widths[0])] + [cell.rjust(w) for cell, w in zip(row[1:], widths[1:], strict=True)]
            lines.append("  " + "  ".join(cells).rstrip())
    deadlines = _counts_sorted(r.deadline_ms for r in trace if r.deadline_ms is not None)
    lines.append(
        "deadline_ms: "
        + (_counted({_num(d): c for d, c in deadlines.items()}, n) if deadlines else "none")
        + (f", none {_share(n - sum(deadlines.values()), n)}" if deadlines and sum(deadlines.values()) < n else "")
    )
    priorities = _counts_sorted(r.priority for r in trace if r.priority is not None)
    lines.append(
        "priority: "
        + (_counted(priorities, n) if priorities else "none")
        + (f", none {_share(n - sum(priorities.values()), n)}" if priorities and sum(priorities.values()) < n else "")
    )
    return lines


def _counts_sorted(values: Any) -> dict[Any, int]:
    out: dict[Any, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return dict(sorted(out.items()))


def _read(path: str, command: str) -> Any:
    """The trace at ``path``, or None after printing why it cannot be read (exit 2)."""
    from chronoserve.traces import TraceError, read_trace

    try:
        return read_trace(path)
    except TraceError as exc:
        print(f"chronoserve trace {command}: error: {exc}", file=sys.stderr)
        return None


def cmd_show(args: argparse.Namespace) -> int:
    trace = _read(args.trace, "show")
    if trace is None:
        return 2
    print(f"{args.trace}:")
    for line in describe(trace):
        print(f"  {line}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from chronoserve.traces import check_trace

    trace = _read(args.trace, "check")
    if trace is None:
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
