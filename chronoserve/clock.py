"""The engine reads time only through a :class:`Clock`, so tests can replace it.

``chronoserve.testing.FakeClock`` is the stand-in: time moves only when a test says so,
and "dispatch after Δt" becomes an assertion at ``t = Δt - ε`` and ``t = Δt``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    """Time for the engine: a monotonic ``now()`` in seconds and one-shot timers."""

    def now(self) -> float:
        """Seconds on a monotonic scale (the origin is arbitrary)."""
        ...

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle:
        """Call ``callback`` on the event loop once ``now() >= when``."""
        ...


class MonotonicClock:
    """The real clock: ``time.perf_counter`` and the running loop's timers."""

    def now(self) -> float:
        return time.perf_counter()

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle:
        loop = asyncio.get_running_loop()
        return loop.call_later(max(0.0, when - time.perf_counter()), callback)
