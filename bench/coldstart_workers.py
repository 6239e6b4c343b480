"""A new worker process's cold start: a fresh ``spawn`` process against one forked from the preloaded fork server.

    python bench/coldstart_workers.py                                   # random/chronos-bolt-tiny, 5 repeats
    python bench/coldstart_workers.py --model random/chronos-bolt-small --repeats 9

Each worker is started with :func:`chronoserve.forkserver.start_worker` and runs
:func:`chronoserve.sync.forecast` on one request (240 points of context, horizon 24): it builds
an engine, loads the model (import included, where the worker has to import torch itself),
answers, and closes the engine. Timed, from the parent's ``start()``:

- **start-up**: until the worker is ready to run its target (:class:`~chronoserve.forkserver.WorkerStart`);
- **first forecast**: until the target returned in the worker, its answer in hand (the engine
  closed too, a few milliseconds);
- **engine's load**: the engine's own ``timings.load`` of that forecast, the model's load,
  which in a spawned worker includes importing torch, transformers and chronos (the engine
  imports them with the first model).

The fork server is started first (its imports, paid once per parent process, are reported
apart), then one untimed forked worker makes the random checkpoint and warms the page cache;
then each repeat starts one worker of each kind, taking turns, so a slower moment of a shared
machine hits both. Timings vary with the machine and its load: compare only numbers from one run.

Another script can call :func:`measure_workers` (``sys.path`` holding ``bench/``); importing
this module starts nothing.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import statistics
import sys
from collections.abc import Sequence
from importlib.metadata import version
from typing import Any

DEFAULT_MODEL = "random/chronos-bolt-tiny"
CONTEXT, HORIZON = 240, 24


def _request(model: str) -> Any:
    from chronoserve import ForecastRequest

    target = [50.0 + 10.0 * ((i % 24) / 24.0) + (i % 7) for i in range(CONTEXT)]
    return ForecastRequest(model=model, target=target, horizon=HORIZON)


def _first_forecast(model: str, context: Any) -> dict[str, Any]:
    """Start one worker that answers one forecast; how long each part took."""
    from chronoserve.forkserver import start_worker
    from chronoserve.sync import forecast

    worker = start_worker(forecast, (_request(model),), context=context)
    start, finished = worker.startup(), worker.finished()
    worker.process.join()
    worker.close()
    if start is None or finished is None or worker.process.exitcode != 0:
        raise RuntimeError(f"the {worker.method} worker failed (exit {worker.process.exitcode})")
    result = finished.value
    return {
        "method": worker.method,
        "startup_s": start.seconds,
        "first_forecast_s": finished.at - worker.started_at,
        "load_s": result.timings.load,
        "answer_s": result.timings.total,
        "pid": worker.pid,
    }


def measure_workers(model: str = DEFAULT_MODEL, repeats: int = 5) -> list[dict[str, Any]]:
    """``repeats`` workers of each kind (``spawn``, ``fork-server``), taking turns; one row each.

    A row: ``method``, ``repeat``, ``startup_s`` (``start()`` to the target about to run),
    ``first_forecast_s`` (``start()`` to the forecast answered, the model's load included),
    ``load_s`` and ``answer_s`` (the engine's timings of that forecast: load, and acceptance to
    answer), ``pid``. Starts this process's fork server first if need be (see :func:`zygote_info`);
    raises ``RuntimeError`` if the fork server is refused or missing (nothing to compare).
    """
    from chronoserve.forkserver import FORK_SERVER, worker_context, zygote

    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    decided = zygote()
    if decided.method != FORK_SERVER:
        raise RuntimeError(f"no fork server to compare with: {decided.reason}")
    forked, spawn = worker_context(), multiprocessing.get_context("spawn")
    _first_forecast(model, forked)  # untimed: the random checkpoint made, the files in the page cache
    rows = []
    for repeat in range(repeats):
        for context in (spawn, forked):
            rows.append({**_first_forecast(model, context), "repeat": repeat})
    return rows


def zygote_info() -> dict[str, Any]:
    """The fork server the forked workers came from: pid, threads, seconds of preload imports."""
    from chronoserve.forkserver import zygote

    z = zygote()
    return {"pid": z.pid, "threads": z.threads, "import_seconds": z.import_seconds, "method": z.method}


def summary(rows: Sequence[dict[str, Any]], key: str) -> dict[str, dict[str, float]]:
    """min / median / max of ``key`` per method."""
    out = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        values = [r[key] for r in rows if r["method"] == method]
        out[method] = {"min": min(values), "median": statistics.median(values), "max": max(values)}
    return out


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows' min / median / max per method, side by side, and the ratio of the medians of the first forecast."""
    columns = (
        ("startup_s", "start-up"),
        ("first_forecast_s", "start() to first forecast"),
        ("load_s", "engine's load"),
    )
    stats = {key: summary(rows, key) for key, _ in columns}
    head = f"{'worker':<12}" + "".join(f"  {title + ' (s)':^26}" for _, title in columns)
    sub = f"{'':<12}" + "  " + "  ".join(f"{'min':>8}{'median':>9}{'max':>9}" for _ in columns)
    lines = [head, sub]
    for method in stats["startup_s"]:
        cells = [stats[key][method] for key, _ in columns]
        lines.append(
            f"{method:<12}" + "  " + "  ".join(f"{c['min']:>8.3f}{c['median']:>9.3f}{c['max']:>9.3f}" for c in cells)
        )
    first = stats["first_forecast_s"]
    if {"spawn", "fork-server"} <= set(first):
        ratio = first["spawn"]["median"] / first["fork-server"]["median"]
        lines.append(f"ratio of the medians, start() to first forecast (spawn / fork-server): {ratio:.1f}x")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"a small model (default: {DEFAULT_MODEL})")
    parser.add_argument("--repeats", type=int, default=5, help="workers of each kind (default: 5)")
    args = parser.parse_args(argv)
    rows = measure_workers(args.model, args.repeats)
    z = zygote_info()
    print(
        f"cold start of a worker process: {args.model}, {args.repeats} repeats of each kind "
        f"(python {platform.python_version()}, torch {version('torch')}, {os.cpu_count()} cores)"
    )
    print(
        f"fork server: pid {z['pid']}, {z['threads']} thread, imported torch, transformers and chronos in "
        f"{z['import_seconds']:.2f} s (once, before its first worker)\n"
    )
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
