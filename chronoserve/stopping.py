"""Stopping a batch that runs in a worker thread: cooperatively, at the model's next layer.

A thread cannot be killed, and a torch forward pass cannot be interrupted from outside. So
the engine hands every batch a :class:`StopSignal`, and the worker running it makes it the
thread's current signal; backends call :func:`checkpoint` between steps (the torch backends
install it as a forward pre-hook on every layer of the model, so a pass stops within one
layer). A checkpoint raises :class:`BatchStopped` once the batch has been told to stop:

- every request of the batch was cancelled (the clients went away);
- it has run past the engine's ``max_inference_seconds`` (its requests get
  :class:`~chronoserve.errors.InferenceTimeout`);
- the engine is closing and its drain timeout has passed.

Backends that never call :func:`checkpoint` still work; their batches just run to the end.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from .clock import Clock
from .errors import ChronoserveError, InferenceTimeout


class BatchStopped(Exception):
    """Raised inside a worker by :func:`checkpoint`; ``error`` is what the batch's requests get."""

    def __init__(self, error: ChronoserveError) -> None:
        super().__init__(str(error))
        self.error = error


class StopSignal:
    """Whether one batch should stop: told by the event loop, or past its deadline."""

    __slots__ = ("_clock", "_error", "deadline", "limit", "started")

    def __init__(self, clock: Clock, deadline: float | None = None, limit: float | None = None) -> None:
        self._clock = clock
        self.deadline = deadline
        """Engine-clock time after which the batch stops (None: never by time)."""
        self.limit = limit
        """The bound in seconds that ``deadline`` came from, for the error message."""
        self._error: ChronoserveError | None = None
        self.started: float | None = None
        """When a worker began running the model on the batch (set by the worker; None before)."""

    def stop(self, error: ChronoserveError) -> None:
        """Ask the batch to stop at its next checkpoint (the first reason given wins)."""
        if self._error is None:
            self._error = error

    @property
    def stopped(self) -> bool:
        return self._error is not None

    def check(self) -> None:
        if self._error is None and self.deadline is not None and self._clock.now() > self.deadline:
            self._error = InferenceTimeout(
                f"the batch ran for more than {self.limit:g} s (the server's max_inference_seconds) and was stopped"
            )
        if self._error is not None:
            raise BatchStopped(self._error)


_current = threading.local()


def checkpoint() -> None:
    """Raise :class:`BatchStopped` if the batch this thread runs was told to stop; else nothing.

    Cheap (an attribute read and a comparison): backends may call it as often as every layer.
    """
    signal: StopSignal | None = getattr(_current, "signal", None)
    if signal is not None:
        signal.check()


@contextlib.contextmanager
def watching(signal: StopSignal | None) -> Iterator[None]:
    """Make ``signal`` this thread's current one while the batch runs."""
    previous = getattr(_current, "signal", None)
    _current.signal = signal
    try:
        yield
    finally:
        _current.signal = previous
