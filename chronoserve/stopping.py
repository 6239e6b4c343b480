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
A runtime that cannot call back into Python inside a pass (ONNX Runtime) registers
:meth:`StopSignal.on_stop` instead: its callback runs as soon as the batch is told to stop, or
once its deadline passes (watched by one shared timer thread), and aborts the pass there.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import threading
import time
from collections.abc import Callable, Iterator

from .clock import Clock
from .errors import ChronoserveError, InferenceTimeout


class BatchStopped(Exception):
    """Raised inside a worker by :func:`checkpoint`; ``error`` is what the batch's requests get."""

    def __init__(self, error: ChronoserveError) -> None:
        super().__init__(str(error))
        self.error = error


class StopSignal:
    """Whether one batch should stop: told by the event loop, or past its deadline."""

    __slots__ = ("_callbacks", "_clock", "_error", "deadline", "limit", "started")

    def __init__(self, clock: Clock, deadline: float | None = None, limit: float | None = None) -> None:
        self._clock = clock
        self.deadline = deadline
        """Engine-clock time after which the batch stops (None: never by time)."""
        self.limit = limit
        """The bound in seconds that ``deadline`` came from, for the error message."""
        self._error: ChronoserveError | None = None
        self.started: float | None = None
        """When a worker began running the model on the batch (set by the worker; None before)."""
        self._callbacks: list[Callable[[], None]] = []

    def stop(self, error: ChronoserveError) -> None:
        """Ask the batch to stop at its next checkpoint (the first reason given wins)."""
        if self._error is None:
            self._error = error
        self._fire()

    def on_stop(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback()`` once when the batch is told to stop or its deadline passes; returns
        the function that unregisters it (call it when the work it would abort is over).

        For runtimes that cannot reach a :func:`checkpoint` inside a pass (ONNX Runtime sets
        ``RunOptions.terminate``). It runs on the thread that stops the batch (the event loop's)
        or on the deadline watcher's, so it must be quick and thread-safe. A batch already told
        to stop calls it at once. The deadline is watched in real time for the time the signal's
        clock says is left (with a fake clock it may fire early, and then does nothing).
        """
        with _callbacks_lock:
            if self._error is None:
                self._callbacks.append(callback)
                registered = True
            else:
                registered = False
        if not registered:
            callback()
            return _nothing
        if self.deadline is not None:
            _watcher.watch(self, time.monotonic() + max(0.0, self.deadline - self._clock.now()))

        def unregister() -> None:
            with _callbacks_lock, contextlib.suppress(ValueError):
                self._callbacks.remove(callback)

        return unregister

    def _fire(self) -> None:
        with _callbacks_lock:
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()

    def _expire(self) -> None:
        """The watcher's call at the deadline: stop the batch if its clock agrees it has passed."""
        with contextlib.suppress(BatchStopped):
            self.check()
        if self._error is not None:
            self._fire()

    @property
    def _watched(self) -> bool:
        return bool(self._callbacks)

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
_callbacks_lock = threading.Lock()


def _nothing() -> None:
    pass


class _DeadlineWatcher:
    """One daemon thread that calls :meth:`StopSignal._expire` at the deadlines of signals with
    ``on_stop`` callbacks, started at the first one. Entries whose callbacks were all unregistered
    are dropped when they fall due, or when the queue has doubled since it was last pruned."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, StopSignal]] = []
        self._seq = itertools.count()
        self._wake = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None
        self._compact_at = 64

    def watch(self, signal: StopSignal, when: float) -> None:
        with self._wake:
            if len(self._heap) >= self._compact_at:  # amortised O(1): the bound doubles with what stays
                self._heap = [entry for entry in self._heap if entry[2]._watched]
                heapq.heapify(self._heap)
                self._compact_at = max(64, 2 * len(self._heap))
            heapq.heappush(self._heap, (when, next(self._seq), signal))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="chronoserve-stop-watch", daemon=True)
                self._thread.start()
            elif self._heap[0][2] is signal:
                self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._heap or self._heap[0][0] > time.monotonic():
                    self._wake.wait(None if not self._heap else self._heap[0][0] - time.monotonic())
                _, _, signal = heapq.heappop(self._heap)
            if signal._watched:
                signal._expire()


_watcher = _DeadlineWatcher()


def checkpoint() -> None:
    """Raise :class:`BatchStopped` if the batch this thread runs was told to stop; else nothing.

    Cheap (an attribute read and a comparison): backends may call it as often as every layer.
    """
    signal: StopSignal | None = getattr(_current, "signal", None)
    if signal is not None:
        signal.check()


def current() -> StopSignal | None:
    """The stop signal of the batch this thread runs (None outside a batch)."""
    signal: StopSignal | None = getattr(_current, "signal", None)
    return signal


@contextlib.contextmanager
def watching(signal: StopSignal | None) -> Iterator[None]:
    """Make ``signal`` this thread's current one while the batch runs."""
    previous = getattr(_current, "signal", None)
    _current.signal = signal
    try:
        yield
    finally:
        _current.signal = previous
