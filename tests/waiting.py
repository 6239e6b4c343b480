"""Waiting for a state, never for a duration (see docs/testing.md).

A test that needs something to have happened first (requests queued, a warm-up done, a log
line written) polls for that state. The deadline bounds a hang, not a speed: it is far beyond
what the state takes even on a loaded 2-core machine, and a test that reaches it fails saying
which state never came.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

from prometheus_client.parser import text_string_to_metric_families

#: Seconds: an upper bound for states that take milliseconds (a hang guard, not a speed limit).
DEADLINE = 30.0
#: Seconds between two looks at the state.
POLL = 0.005
#: Turns of the event loop :func:`until` looks at the state on before it pauses between looks.
LOOP_TURNS = 50


async def until(condition: Callable[[], object | Awaitable[object]], what: str, *, deadline: float = DEADLINE) -> None:
    """Return once ``condition()`` (awaited if it is a coroutine) is true; fail after ``deadline`` seconds."""
    end = time.monotonic() + deadline
    turns = 0
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return
        if time.monotonic() > end:
            raise AssertionError(f"waited {deadline:g} s for {what}")
        # First the event loop's own turns (a state the loop reaches by itself comes with no time
        # passing, e.g. before a batching window closes), then real pauses (work in threads).
        turns += 1
        await asyncio.sleep(0 if turns <= LOOP_TURNS else POLL)


def until_sync(condition: Callable[[], object], what: str, *, deadline: float = DEADLINE, poll: float = POLL) -> None:
    """:func:`until` for blocking code."""
    end = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"waited {deadline:g} s for {what}")
        time.sleep(poll)


def queue_depth(metrics: str) -> float:
    """The server's ``chronoserve_queue_depth`` gauge summed over its models, from a /metrics text."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(metrics)
        if family.name == "chronoserve_queue_depth"
        for sample in family.samples
    )


def metric_value(metrics: str, sample_name: str, **labels: str) -> float:
    """The value of one sample (``name_total`` for a counter) with these labels, from a /metrics text; 0 if absent."""
    for family in text_string_to_metric_families(metrics):
        for sample in family.samples:
            if sample.name == sample_name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0
