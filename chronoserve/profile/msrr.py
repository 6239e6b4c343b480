"""The maximum serviceable request rate: the highest Poisson rate whose p95 latency meets the SLO.

OASIS's phase-1 figure (see ../shared/docs/scheduling-notes.md §3), found here by a bisection
over the rate between 0 and the measured capacity (the throughput with the queue kept full:
no rate above it is served for long, however short a probe would let it look). Each probe offers Poisson
arrivals (a fixed seed per probe) to the engine as it serves, open loop: a request's latency
runs from its scheduled arrival to its answer, so a submitter that falls behind counts
against the rate, not in its favour. A probe ends a bounded time after its last arrival;
what is still unanswered then counts as a miss (and is cancelled), so an overloaded probe
ends in bounded time.

:func:`search` is pure (it takes the probe as a function), so it is tested on made-up
latency curves; :func:`poisson_probe` is the probe against a real engine.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..engine import Engine
from ..errors import ChronoserveError
from ..request import ForecastRequest


@dataclass(frozen=True)
class Probe:
    """One rate tried: its p95 end-to-end latency and whether every request was answered in time."""

    rate: float
    p95_s: float
    requests: int
    missed: int
    """Requests that failed or were still unanswered when the probe ended (a failure fails the probe)."""
    ok: bool


@dataclass(frozen=True)
class SearchResult:
    msrr: float
    """The highest rate that met the SLO (0.0 when none did)."""
    p95_s: float | None
    """The p95 latency at that rate."""
    probes: tuple[Probe, ...]


ProbeFn = Callable[[float], Awaitable[Probe]]


async def search(
    probe: ProbeFn,
    capacity: float,
    steps: int,
    *,
    on_probe: Callable[[int, Probe], None] | None = None,
) -> SearchResult:
    """Bisect the rate in ``(0, capacity)`` with ``steps`` probes.

    ``capacity`` is the measured throughput (requests per second at full batches): no rate
    above it can be served for long, so the search starts at half of it and halves the
    interval with each probe. The answer's resolution is ``capacity / 2**steps``.
    """
    if not (capacity > 0 and math.isfinite(capacity)):
        raise ValueError(f"capacity must be a positive rate, got {capacity}")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    lo, hi = 0.0, capacity
    best: Probe | None = None
    probes: list[Probe] = []
    for i in range(steps):
        rate = (lo + hi) / 2.0
        result = await probe(rate)
        probes.append(result)
        if on_probe is not None:
            on_probe(i, result)
        if result.ok:
            lo, best = rate, result
        else:
            hi = rate
    return SearchResult(lo, None if best is None else best.p95_s, tuple(probes))


def arrivals(rate: float, count: int, seed: int) -> np.ndarray:
    """``count`` Poisson arrival times (seconds from 0) at ``rate`` per second."""
    rng = np.random.default_rng(seed)
    return np.cumsum(rng.exponential(1.0 / rate, size=count))


async def poisson_probe(
    engine: Engine,
    pool: Sequence[ForecastRequest],
    rate: float,
    *,
    slo_s: float,
    seconds: float,
    min_requests: int,
    seed: int,
    grace_s: float,
    clock: Callable[[], float],
) -> Probe:
    """Offer ``pool``'s requests (cycled) at ``rate`` for ``seconds`` (at least ``min_requests``).

    The probe waits ``grace_s`` (plus the SLO) after the last arrival for the answers still
    due; later ones are cancelled and count as misses.
    """
    count = max(min_requests, math.ceil(rate * seconds))
    times = arrivals(rate, count, seed)
    latencies: list[float] = []
    failed = 0
    tasks: list[asyncio.Task[None]] = []
    loop = asyncio.get_running_loop()
    start = clock()

    async def one(request: ForecastRequest, due: float) -> None:
        nonlocal failed
        try:
            await engine.forecast(request)
        except ChronoserveError:
            failed += 1
            return
        latencies.append(clock() - due)

    for i, offset in enumerate(times):
        due = start + float(offset)
        wait = due - clock()
        if wait > 0:
            await asyncio.sleep(wait)
        tasks.append(loop.create_task(one(pool[i % len(pool)], due)))
    end = start + float(times[-1]) + slo_s + grace_s
    late: set[asyncio.Task[None]] = set()
    pending = [t for t in tasks if not t.done()]
    if pending:
        _, late = await asyncio.wait(pending, timeout=max(0.0, end - clock()))
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
    # Unanswered requests are infinitely late: more than 5 % of them and the p95 is infinite.
    p95 = nearest_rank(latencies + [math.inf] * (len(late) + failed), 0.95)
    missed = len(late) + failed
    return Probe(rate, p95, count, missed, failed == 0 and p95 <= slo_s)


def nearest_rank(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile by the nearest-rank method (a value of the sample; inf stays inf)."""
    if not values:
        return math.inf
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]
