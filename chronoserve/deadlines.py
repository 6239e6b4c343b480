"""The deadlines of queued requests, in the order they fall due: what the engine expires before each decision.

Nothing runs after its deadline: before every decision the engine fails the queued requests
whose deadline has passed, then arms its timer at the next one. A heap, cleaned lazily: a
request answered, running or cancelled before its deadline is dropped when it reaches the top.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable


class Deadlines:
    """(deadline, seq) of queued requests; :meth:`due` pops what has fallen due."""

    __slots__ = ("_heap",)

    def __init__(self) -> None:
        self._heap: list[tuple[float, int]] = []

    def add(self, deadline: float, seq: int) -> None:
        heapq.heappush(self._heap, (deadline, seq))

    def due(self, now: float, queued: Callable[[int], bool]) -> tuple[list[int], float | None]:
        """The requests still queued (``queued(seq)``) whose deadline is at or before ``now``, and
        the next deadline of one still queued (None when there is none)."""
        heap = self._heap
        expired: list[int] = []
        while heap:
            deadline, seq = heap[0]
            if not queued(seq):
                heapq.heappop(heap)  # answered, running, or gone
                continue
            if deadline > now:
                return expired, deadline
            heapq.heappop(heap)
            expired.append(seq)
        return expired, None

    def __len__(self) -> int:
        return len(self._heap)
