"""What a replay says about deadlines: goodput, SLO attainment overall and per class, outcomes by reason.

A request with a deadline ends in exactly one outcome:

- ``met``: answered within ``deadline_ms`` of its *scheduled* send time (the client's clock,
  transport included: stricter than the server's own count, which starts on arrival);
- ``late``: answered after it;
- ``shed``: refused because the policy predicted it could not be met (503 ``deadline_unmeetable``);
- ``expired``: its deadline passed while it waited (504 ``deadline_expired``);
- ``refused``: refused for another reason before any work (429, other 503s);
- ``failed``: any other error.

Attainment is ``met / requests with a deadline`` (every other outcome is a miss), goodput is
``met / offered seconds`` (from the first scheduled send to the last: the same window for every
policy on the same trace, so one that refuses early does not gain by finishing sooner, nor one
with a backlog lose by answering later; a burst, sent all at once, uses the replay's duration).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .runner import Record

OUTCOMES = ("met", "late", "shed", "expired", "refused", "failed")


def outcome(record: Record) -> str | None:
    """One of :data:`OUTCOMES`, or None for a request without a deadline."""
    if record.deadline_ms is None:
        return None
    if record.ok:
        return "met" if record.met else "late"
    if record.error_kind == "deadline_unmeetable":
        return "shed"
    if record.error_kind == "deadline_expired":
        return "expired"
    if record.status in (429, 503):
        return "refused"
    return "failed"


def class_of(record: Record) -> str:
    """The request's deadline class: the trace's name, else its deadline and priority."""
    if record.deadline_class:
        return record.deadline_class
    name = f"{record.deadline_ms:g} ms"
    return name if record.priority is None else f"{name} p{record.priority}"


@dataclass(frozen=True)
class ClassOutcome:
    """One deadline class (or all requests with a deadline): counts by outcome."""

    name: str
    deadline_ms: float | None
    """The class's deadline when all its requests share one, else None."""
    priority: int | None
    counts: dict[str, int]

    @property
    def requests(self) -> int:
        return sum(self.counts.values())

    @property
    def attainment(self) -> float:
        return self.counts.get("met", 0) / self.requests if self.requests else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "deadline_ms": self.deadline_ms,
            "priority": self.priority,
            "requests": self.requests,
            "attainment": self.attainment,
            **{k: self.counts.get(k, 0) for k in OUTCOMES},
        }


@dataclass(frozen=True)
class SloSummary:
    """Deadlines of one replay: overall, and per class (sorted by priority, then deadline)."""

    overall: ClassOutcome
    classes: tuple[ClassOutcome, ...]
    goodput: float
    """Answers within their deadline per offered second (see the module's docstring)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "goodput_per_s": self.goodput,
            "overall": self.overall.to_dict(),
            "classes": [c.to_dict() for c in self.classes],
        }


def _one(values: set[Any]) -> Any:
    return next(iter(values)) if len(values) == 1 else None


def _class(name: str, records: Sequence[Record]) -> ClassOutcome:
    counts = Counter(outcome(r) for r in records)
    return ClassOutcome(
        name=name,
        deadline_ms=_one({r.deadline_ms for r in records}),
        priority=_one({r.priority for r in records}),
        counts={k: counts.get(k, 0) for k in OUTCOMES},
    )


def summarize_slo(records: Sequence[Record], duration: float) -> SloSummary | None:
    """The deadline outcomes of ``records``; None when none of them had a deadline. ``duration``
    (the replay's) is the goodput's window only for a burst (every request scheduled at once)."""
    timed = [r for r in records if r.deadline_ms is not None]
    if not timed:
        return None
    groups: dict[str, list[Record]] = {}
    for r in timed:
        groups.setdefault(class_of(r), []).append(r)
    classes = [_class(name, rs) for name, rs in groups.items()]

    def order(c: ClassOutcome) -> tuple[float, float, str]:
        priority = float("inf") if c.priority is None else float(c.priority)
        deadline = float("inf") if c.deadline_ms is None else c.deadline_ms
        return (priority, deadline, c.name)

    overall = _class("all", timed)
    offered = max(r.scheduled for r in records) - min(r.scheduled for r in records)
    window = offered if offered > 0 else duration
    goodput = overall.counts["met"] / window if window > 0 else float("nan")
    return SloSummary(overall=overall, classes=tuple(sorted(classes, key=order)), goodput=goodput)


def format_slo(rows: Sequence[tuple[str, SloSummary | None, float | None]]) -> str:
    """One block: per replay (label, its SLO summary, CPU-seconds per forecast), overall then each class."""
    head = f"{'':<12s}{'class':<14s}{'deadline':>9s}{'prio':>5s}{'requests':>9s}{'attain':>8s}" + "".join(
        f"{k:>8s}" for k in OUTCOMES
    )
    lines = []
    if any(slo is not None for _, slo, _ in rows):
        lines += ["deadlines (attainment: answered within the deadline, from the scheduled send)", head]
    for label, slo, _ in rows:
        if slo is None:
            continue
        for c in (slo.overall, *slo.classes):
            deadline = "-" if c.deadline_ms is None else f"{c.deadline_ms:g}ms"
            prio = "-" if c.priority is None else str(c.priority)
            lines.append(
                f"{label:<12s}{c.name:<14.14s}{deadline:>9s}{prio:>5s}{c.requests:>9d}{c.attainment * 100:7.1f}%"
                + "".join(f"{c.counts[k]:>8d}" for k in OUTCOMES)
            )
        lines.append("")
    lines.append(f"{'':<12s}{'goodput/s':>10s}{'CPU-s/forecast':>16s}")
    for label, slo, cpu in rows:
        goodput = f"{slo.goodput:10.2f}" if slo is not None else f"{'-':>10s}"
        cost = f"{cpu:16.4f}" if cpu is not None else f"{'-':>16s}"
        lines.append(f"{label:<12s}{goodput}{cost}")
    return "\n".join(lines)
