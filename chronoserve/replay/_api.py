"""Replaying a list of requests on a target: the function behind ``chronoserve replay``."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
) -> ReplayResult:
    """Start ``target``, replay ``requests`` open loop, close it; summarise and write ``out``."""
    label = label or target.label
    await target.start()
    try:
        records = await run_trace(list(requests), target, lead=lead, progress=_Progress(len(requests), label, progress))
    finally:
        await target.close()
    summary = summarize(records, label, {**(meta or {}), "target": target.describe()})
    files: list[Path] = []
    if out is not None:
        files += write_outputs(out, records, summary)
        if plots and records:
            from .plots import plot_replay

            files += plot_replay(out, records, summary)
    return ReplayResult(summary, records, files)
