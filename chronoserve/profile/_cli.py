"""``chronoserve profile``: the command line. Each model x workers x threads runs in a child process."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .._cli_common import UsageError
from ..models.catalog import DEFAULT_MODEL
from .classes import DEFAULT_CLASSES, QUICK_CLASSES, QueryClass, parse_classes
from .runner import RunSettings, Work, row_key

DEFAULT_BATCHES = (1, 4, 16, 64)
QUICK_BATCHES = (1, 8, 32)
JOURNAL = "rows.jsonl"
RUN_FILE = "run.json"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "profile",
        help="measure what work costs: a cost table per model, query class, batch size, workers and threads",
        description="For each model x query class x batch size x workers x torch threads, run batches through the "
        "serving engine with the queue kept full (batch latency p50/p95/p99, series/s, CPU-seconds per 1,000 "
        "forecasts, peak RSS, energy where a counter is readable), then search the maximum serviceable request "
        "rate: the highest Poisson rate whose p95 end-to-end latency meets --slo-p95-ms. Writes profile.csv, "
        "profile.json (what `serve --profile` loads) and PNGs to --out; resumes an interrupted run in the same "
        "--out. See docs/costs.md.",
    )
    p.add_argument("--models", default=None, help=f"comma-separated models (default: {DEFAULT_MODEL})")
    p.add_argument(
        "--classes",
        default=None,
        help="query classes as name:context:horizon[:covariates], comma-separated (default: "
        + ",".join(c.spec_text() for c in DEFAULT_CLASSES)
        + "; with --quick: "
        + ",".join(c.spec_text() for c in QUICK_CLASSES)
        + ")",
    )
    p.add_argument("--batch", default=None, help="batch sizes, e.g. 1,4,16,64 (default; --quick: 1,8,32)")
    p.add_argument("--workers", default=None, help="inference workers, e.g. 1,2 (default: 1,2; --quick: 2)")
    p.add_argument(
        "--torch-threads", default=None, help="torch threads per worker, e.g. 1,2 (default: 1,2; --quick: 1)"
    )
    p.add_argument("--oversubscribe", action="store_true", help="also run workers x threads above the machine's cores")
    p.add_argument("--slo-p95-ms", type=float, default=500.0, help="the SLO the MSRR must meet (default: 500)")
    p.add_argument("--max-wait-ms", type=float, default=10.0, help="batched's Δt while serving (default: 10)")
    p.add_argument("--quick", action="store_true", help="a short run: 2 classes, 3 batch sizes, 2x1, short phases")
    p.add_argument("--series", default="dongsi", help="embedded PM2.5 series the requests come from (dongsi)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="model dtype")
    p.add_argument("--out", default="results/profile", help="output directory (default: results/profile)")
    p.add_argument("--fresh", action="store_true", help="forget the rows of an earlier run in --out")
    p.add_argument("--no-plots", action="store_true", help="skip the PNGs")
    p.set_defaults(func=cmd_profile)
    return p


def _ints(flag: str, text: str, low: int, high: int) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UsageError(f"{flag}: expected whole numbers separated by commas, got {text!r}") from None
    if not values or any(not low <= v <= high for v in values):
        raise UsageError(f"{flag}: each value must lie in {low}..{high}, got {text!r}")
    return tuple(sorted(set(values)))


@dataclasses.dataclass(frozen=True)
class Plan:
    out: Path
    settings: RunSettings
    classes: tuple[QueryClass, ...]
    batches: tuple[int, ...]
    works: tuple[Work, ...]
    skipped: tuple[str, ...]
    """What was left out and why (configurations over the cores, classes a model cannot run)."""
    done: int
    """Rows measured by an earlier run of this --out, not measured again."""


def plan(args: argparse.Namespace) -> Plan:
    """Check every flag, resolve every model, and work out what is left to measure. Imports no torch."""
    from ..errors import ChronoserveError, InvalidRequest
    from ..settings import EngineSettings

    for flag, value in (("--slo-p95-ms", args.slo_p95_ms), ("--max-wait-ms", args.max_wait_ms)):
        if not (value == value and 0 <= value <= 600_000) or (flag == "--slo-p95-ms" and value <= 0):
            raise UsageError(f"{flag}: must be a number of milliseconds in (0, 600000], got {value}")
    try:
        classes = parse_classes(args.classes) if args.classes else (QUICK_CLASSES if args.quick else DEFAULT_CLASSES)
    except ValueError as exc:
        raise UsageError(f"--classes: {exc}") from None
    batches = (
        _ints("--batch", args.batch, 1, 4096) if args.batch else (QUICK_BATCHES if args.quick else DEFAULT_BATCHES)
    )
    cores = os.cpu_count() or 1
    workers = _ints("--workers", args.workers, 1, 64) if args.workers else ((2,) if args.quick else (1, 2))
    threads = (
        _ints("--torch-threads", args.torch_threads, 1, 256) if args.torch_threads else ((1,) if args.quick else (1, 2))
    )
    options = {"slo_p95_ms": args.slo_p95_ms, "max_wait_ms": args.max_wait_ms, "series": args.series}
    options |= {"device": args.device, "dtype": args.dtype}
    settings = RunSettings.quick(**options) if args.quick else RunSettings(**options)
    from ..data import SeriesStore

    store = SeriesStore.embedded()
    if args.series not in store:
        raise UsageError(f"--series: unknown series {args.series!r} (known: {', '.join(store.ids())})")
    loader = EngineSettings(device=args.device, dtype=args.dtype).loader()
    names = [n.strip() for n in (args.models or DEFAULT_MODEL).split(",") if n.strip()]
    if not names:
        raise UsageError("--models: name at least one model")
    out = Path(args.out)
    done_rows = _previous_rows(out, settings, fresh=args.fresh)
    done = {row_key(r) for r in done_rows}
    skipped: list[str] = []
    works: list[Work] = []
    for name in names:
        try:
            spec = loader.resolve(loader.canonical(name))
        except InvalidRequest as exc:
            raise UsageError(f"--models: {exc.message}") from None
        except ChronoserveError as exc:
            raise UsageError(f"--models: {exc}") from None
        runnable = []
        for query in classes:
            why = query.fits(spec)
            if why is not None:
                skipped.append(f"{spec.name} {query.name}: {why}")
            else:
                runnable.append(query)
        for w in workers:
            for t in threads:
                if w * t > cores and not args.oversubscribe:
                    skipped.append(f"{spec.name} {w}x{t}: {w * t} threads on {cores} cores (--oversubscribe runs it)")
                    continue
                items = tuple(
                    (q, b) for q in runnable for b in batches if (spec.name, q.name, b, w, t, "torch") not in done
                )
                if items:
                    works.append(Work(spec.name, w, t, items, str(out / JOURNAL), settings))
    return Plan(out, settings, classes, batches, tuple(works), tuple(dict.fromkeys(skipped)), len(done_rows))


def _previous_rows(out: Path, settings: RunSettings, *, fresh: bool) -> list[dict[str, Any]]:
    """Rows an earlier run left in ``out`` (after checking it measured under the same settings)."""
    from .report import read_journal

    journal, run_file = out / JOURNAL, out / RUN_FILE
    if fresh:
        journal.unlink(missing_ok=True)
        run_file.unlink(missing_ok=True)
        return []
    if not journal.is_file():
        return []
    try:
        previous = json.loads(run_file.read_text(encoding="utf-8")).get("settings")
    except (OSError, ValueError):
        previous = None
    if previous != dataclasses.asdict(settings):
        raise UsageError(
            f"--out: {out} holds rows measured under other settings ({run_file.name}); "
            "use another --out, or --fresh to start again there"
        )
    return read_journal(journal)


def _run_child(work: Work, directory: Path) -> int:
    """Run one profile process; if this one is interrupted or terminated, so is the child.

    The process is a worker of :mod:`chronoserve.forkserver` (forked from the preloaded fork
    server, or spawned) running :func:`chronoserve.profile.__main__.main`, as ``python -m
    chronoserve.profile`` does, which sets torch's threads first.
    """
    from ..forkserver import run_worker
    from .__main__ import main as run_work

    path = directory / f"work-{work.model.replace('/', '_')}-{work.workers}x{work.torch_threads}.json"
    path.write_text(json.dumps(work.to_dict(), indent=2) + "\n", encoding="utf-8")
    try:
        return run_worker(run_work, ([str(path)],), name=f"chronoserve-profile-{work.workers}x{work.torch_threads}")
    finally:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def _only_writer(out: Path) -> Iterator[None]:
    """Hold ``out/.lock`` while profiling: two runs appending to one journal would mix their rows."""
    import fcntl

    out.mkdir(parents=True, exist_ok=True)
    with (out / ".lock").open("a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise UsageError(f"--out: another chronoserve profile ({holder}) is writing to {out}") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()


def _terminated(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM stops the run the way Ctrl-C does: the child too


def cmd_profile(args: argparse.Namespace) -> int:
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        with _only_writer(Path(args.out)):
            return _profile(args)
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


def _profile(args: argparse.Namespace) -> int:
    from ..edge.metadata import machine_info
    from .report import format_table, read_journal, sort_rows, write_csv, write_json

    p = plan(args)
    p.out.mkdir(parents=True, exist_ok=True)
    command = ["chronoserve", "profile", *sys.argv[2:]] if sys.argv[1:2] == ["profile"] else ["chronoserve", "profile"]
    run = {"settings": dataclasses.asdict(p.settings), "command": command}
    (p.out / RUN_FILE).write_text(json.dumps(run, indent=2) + "\n", encoding="utf-8")
    for line in p.skipped:
        print(f"skipped: {line}", file=sys.stderr)
    rows_left = sum(len(w.items) for w in p.works)
    if p.done:
        print(f"resuming: {p.done} rows measured before in {p.out}; {rows_left} to go", file=sys.stderr)
    failures = []
    for n, work in enumerate(p.works, 1):
        print(
            f"[{n}/{len(p.works)}] {work.model}, {work.workers} worker(s) x {work.torch_threads} torch thread(s): "
            f"{len(work.items)} rows (classes x batch sizes), SLO p95 {p.settings.slo_p95_ms:g} ms ...",
            file=sys.stderr,
            flush=True,
        )
        code = _run_child(work, p.out)
        if code in (130, -signal.SIGINT, -signal.SIGTERM):
            raise KeyboardInterrupt
        if code != 0:
            failures.append(f"{work.model} {work.workers}x{work.torch_threads} (exit {code})")
    rows = sort_rows(read_journal(p.out / JOURNAL), [c.name for c in p.classes])
    meta = {
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "settings": dataclasses.asdict(p.settings),
        "classes": [dataclasses.asdict(c) for c in p.classes],
        "machine": machine_info(),
    }
    files = [write_csv(p.out / "profile.csv", rows), write_json(p.out / "profile.json", rows, meta)]
    if not args.no_plots:
        from .plots import plot_all

        files += plot_all(p.out, rows, p.settings.slo_p95_ms)
    if any(r.get("random_weights") for r in rows):
        print("(random weights: the timings are real, the forecasts are not)")
    print(format_table(rows))
    print(f"wrote {len(files)} files to {p.out} ({len(rows)} rows)")
    if failures:
        print(f"chronoserve profile: error: these runs failed: {'; '.join(failures)}", file=sys.stderr)
        return 1
    return 0
