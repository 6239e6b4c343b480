"""Open-loop replay: every request is sent at its scheduled time, whatever happened before.

Latency counts from the *scheduled* send time, so a server that stalls cannot hide the
requests that would have queued behind it (no coordinated omission). The runner reads
time through a :class:`~chronoserve.clock.Clock`, so tests drive it with a fake clock.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

from chronoserve.clock import Clock, MonotonicClock

from .targets import Outcome, Target


@dataclass(frozen=True)
class Record:
    """One replayed request. Times are seconds from the start of the replay."""

    index: int
    request_id: str
    model: str
    city: str | None
    context_hours: int | None
    horizon_hours: int
    use_covariates: bool
    scheduled: float
    """When the trace said to send it."""
    sent: float
    """When it was actually handed to the target (``sent - scheduled`` is the client's lateness)."""
    received: float
    status: int
    error_kind: str | None
    error: str | None
    queue: float | None
    """The server's own timings (None for errors)."""
    load: float | None
    inference: float | None
    server_total: float | None
    batch_size: int | None
    cold_start: bool | None
    deadline_ms: float | None = None
    """The request's latency budget, counted from ``scheduled`` (None: it had none)."""
    priority: int | None = None
    deadline_class: str | None = None
    """The trace's name for the request's deadline class (None: not named)."""

    @property
    def latency(self) -> float:
        """End to end, from the scheduled send time to the answer."""
        return self.received - self.scheduled

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def met(self) -> bool:
        """Answered within its deadline (from the scheduled send time); False without a deadline."""
        return self.ok and self.deadline_ms is not None and self.latency * 1000.0 <= self.deadline_ms

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["latency"] = self.latency
        return out


ProgressCallback = Callable[[Record], None]


async def run_trace(
    requests: list[Any],
    target: Target,
    *,
    clock: Clock | None = None,
    lead: float = 0.0,
    progress: ProgressCallback | None = None,
) -> list[Record]:
    """Send ``requests`` (``TraceRequest``-like: ``t`` and ``to_http_body()``) open loop.

    The replay starts ``lead`` seconds after the call (so setup does not make the first
    requests late). Returns one :class:`Record` per request, in trace order.
    """
    clock = clock or MonotonicClock()
    loop = asyncio.get_running_loop()
    start = clock.now() + lead
    records: list[Record | None] = [None] * len(requests)
    finished = asyncio.Event()
    remaining = len(requests)
    tasks: set[asyncio.Task[None]] = set()
    if not requests:
        return []

    async def one(i: int) -> None:
        nonlocal remaining
        request = requests[i]
        scheduled = request.t
        sent = clock.now() - start
        try:
            outcome = await target.send(request)
        except Exception as exc:  # a transport error is a result too
            outcome = Outcome.failure(0, "transport", f"{type(exc).__name__}: {exc}")
        received = clock.now() - start
        record = _record(i, request, scheduled, sent, received, outcome)
        records[i] = record
        if progress is not None:
            progress(record)
        remaining -= 1
        if remaining == 0:
            finished.set()

    def fire(i: int) -> None:
        task = loop.create_task(one(i))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    timers = [clock.call_at(start + request.t, partial(fire, i)) for i, request in enumerate(requests)]
    try:
        await finished.wait()
    finally:
        for timer in timers:
            timer.cancel()
        for task in list(tasks):
            task.cancel()
        for task in list(tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
    return [r for r in records if r is not None]


def _record(i: int, request: Any, scheduled: float, sent: float, received: float, outcome: Outcome) -> Record:
    body = request.to_http_body()
    result = outcome.body if outcome.status == 200 else None
    timings = result.get("timings", {}) if result else {}
    return Record(
        index=i,
        request_id=str(body.get("request_id", i)),
        model=str(body.get("model_name", "")),
        city=body.get("city"),
        context_hours=body.get("context_hours"),
        horizon_hours=int(body.get("horizon_hours", 24)),
        use_covariates=bool(body.get("use_covariates", False)),
        scheduled=scheduled,
        sent=sent,
        received=received,
        status=outcome.status,
        error_kind=outcome.error_kind,
        error=outcome.error,
        queue=timings.get("queue"),
        load=timings.get("load"),
        inference=timings.get("inference"),
        server_total=timings.get("total"),
        batch_size=result.get("batch_size") if result else None,
        cold_start=result.get("cold_start") if result else None,
        deadline_ms=body.get("deadline_ms"),
        priority=body.get("priority"),
        deadline_class=getattr(request, "deadline_class", None),
    )
