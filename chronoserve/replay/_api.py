"""Replaying a list of requests on a target: the function behind ``chronoserve replay``."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chronoserve.perf import CsvMetricsLogger, SystemSampler

from .report import Summary, summarize, write_outputs
from .runner import Record, run_trace
from .targets import Target


@dataclass
class ReplayResult:
    summary: Summary
    records: list[Record]
    files: list[Path]


class _Progress:
    """A progress line on stderr: answered, errors, and the running p50, at most twice a second."""

    def __init__(self, total: int, label: str, enabled: bool) -> None:
        self.total, self.label, self.enabled = total, label, enabled
        # On a terminal one line is rewritten in place; in a log, a new line every few seconds.
        self.tty = sys.stderr.isatty()
        self.every = 0.5 if self.tty else 5.0
        self.done = self.errors = 0
        self.latencies: list[float] = []
        self.last = 0.0

    def __call__(self, record: Record) -> None:
        self.done += 1
        if record.ok:
            self.latencies.append(record.latency)
        else:
            self.errors += 1
        now = time.monotonic()
        if self.enabled and (now - self.last > self.every or self.done == self.total):
            self.last = now
            p50 = sorted(self.latencies)[len(self.latencies) // 2] * 1000 if self.latencies else float("nan")
            line = f"  {self.label}: {self.done}/{self.total} answered, {self.errors} errors, p50 so far {p50:.0f} ms"
            if self.tty:
                print("\r" + line, end="\n" if self.done == self.total else "", file=sys.stderr, flush=True)
            else:
                print(line, file=sys.stderr, flush=True)


async def replay(
    requests: Sequence[Any],
    target: Target,
    *,
    out: Path | None = None,
    label: str | None = None,
    meta: dict[str, Any] | None = None,
    progress: bool = True,
    plots: bool = True,
    lead: float = 0.2,
    system_stats: bool = False,
    log_predictions: bool = False,
) -> ReplayResult:
    """Start ``target``, replay ``requests`` open loop, close it; summarise and write ``out``.

    ``system_stats`` (with ``out``) also writes ``system_stats.csv`` (a
    :class:`~chronoserve.perf.SystemSampler` of this machine, per core, every second) and, for
    an in-process target, ``batches.csv`` (one row per engine batch), both timed from the start
    of the replay like the records. ``log_predictions`` (with ``out``, in-process) writes
    ``predictions.csv``: each batch's predicted and actual latency (the engine's cost model).
    """
    label = label or target.label
    await target.start()
    perf = _start_perf(out, target, lead) if system_stats and out is not None else None
    if log_predictions and out is not None:
        perf = (perf or []) + _start_predictions(out, target, lead)
    cpu: float | None = None
    try:
        cpu_start = await target.cpu_seconds()
        records = await run_trace(list(requests), target, lead=lead, progress=_Progress(len(requests), label, progress))
        cpu_end = await target.cpu_seconds()
        if cpu_start is not None and cpu_end is not None:
            cpu = cpu_end - cpu_start
    finally:
        await target.close()
        if perf is not None:
            for part in perf:
                part.close()
    summary = summarize(records, label, {**(meta or {}), "target": target.describe()}, cpu_seconds=cpu)
    files: list[Path] = []
    if perf is not None:
        files += [p.path for p in perf if p.path is not None]
    if out is not None:
        files += write_outputs(out, records, summary)
        if plots and records:
            from .plots import plot_replay

            files += plot_replay(out, records, summary)
    return ReplayResult(summary, records, files)


def _start_predictions(out: Path, target: Target, lead: float) -> list[CsvMetricsLogger | SystemSampler]:
    from chronoserve.perf import PREDICTION_FIELDS, PredictionRecorder

    engine = getattr(target, "engine", None)
    if engine is None:  # a server logs its own (serve --log-predictions)
        return []
    logger = CsvMetricsLogger(out / "predictions.csv", PREDICTION_FIELDS, t0=time.monotonic() + lead)
    engine.add_observer(PredictionRecorder(logger))
    return [logger]


def _start_perf(out: Path, target: Target, lead: float) -> list[CsvMetricsLogger | SystemSampler]:
    """The system sampler (and, in-process, the per-batch logger) of ``replay(system_stats=True)``."""
    from chronoserve.perf import BatchRecorder

    t0 = time.monotonic() + lead  # the replay's own time origin (see run_trace)
    parts: list[CsvMetricsLogger | SystemSampler] = []
    engine = getattr(target, "engine", None)
    if engine is not None:
        logger = CsvMetricsLogger(out / "batches.csv", t0=t0)
        engine.add_observer(BatchRecorder(logger))  # a batch mixes series and contexts: those cells stay empty
        parts.append(logger)
    parts.append(SystemSampler(out / "system_stats.csv", interval_s=1.0, per_core=True, t0=t0).start())
    return parts
