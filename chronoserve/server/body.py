"""Reading a request body: bounded in size and in time, and given up when the server drains.

Without the time bound a client that sends its body a byte a second holds a handler (and,
at shutdown, the whole process) for as long as it likes; without the drain a SIGTERM would
wait for half-sent bodies until uvicorn cancels their handlers with a plain-text 500.

The handler reads its body itself, in its own task: the time bound is a timer and the drain
a callback that interrupt that task (as ``asyncio.timeout`` does), so the hot path creates
no task and waits on nothing but the body. :class:`Interrupts` is the mechanism, shared with
the watch for a client that leaves while its answer is computed (``post.py``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from starlette.requests import ClientDisconnect, Request

from .errors import HTTPError, invalid

logger = logging.getLogger("chronoserve.server")


class ClientGone(Exception):
    """The client disconnected (while sending its body, or before its answer): there is no one left to answer."""


class Interrupted(Exception):
    """Raised in place of the ``CancelledError`` an :class:`Interrupt` caused; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Interrupt:
    """Cancel one task, once, for a reason, and tell that cancellation apart from any other.

    Use it as a context manager around the awaits it may interrupt::

        with Interrupt() as stop:
            loop.call_later(5, stop, "timeout")
            await something()          # raises Interrupted("timeout") after 5 s

    A cancellation that came from elsewhere propagates unchanged. The reason is delivered even
    when the awaited thing finished in the same loop turn as the interruption (the task only
    learns of the cancellation where it resumes, which is inside the block).
    """

    __slots__ = ("_task", "reason")

    def __init__(self) -> None:
        task = asyncio.current_task()
        assert task is not None, "an Interrupt belongs to a task"
        self._task = task
        self.reason: str | None = None

    def __call__(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
            self._task.cancel()

    def __enter__(self) -> Interrupt:
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if self.reason is None or not isinstance(exc, asyncio.CancelledError):
            return
        uncancel: Callable[[], int] | None = getattr(self._task, "uncancel", None)  # Python 3.11+
        if uncancel is not None:
            uncancel()
        raise Interrupted(self.reason) from None


class BodyReaders:
    """The handlers reading a body now, so that the drain can interrupt them (503) at once."""

    def __init__(self) -> None:
        self.draining = False
        self._reading: set[Interrupt] = set()

    def add(self, stop: Interrupt) -> None:
        self._reading.add(stop)

    def discard(self, stop: Interrupt) -> None:
        self._reading.discard(stop)

    def drain(self) -> None:
        self.draining = True
        for stop in list(self._reading):
            stop("drain")


async def read_body(request: Request, *, limit: int, timeout: float, readers: BodyReaders) -> bytes:
    """The whole body, or :class:`~chronoserve.server.errors.HTTPError`.

    - 413 ``body_too_large`` past ``limit`` bytes (declared or received);
    - 408 when the body has not all arrived ``timeout`` seconds after this call;
    - 503 when the server drains (``readers.drain()``) before the body has all arrived.

    Raises :class:`ClientGone` (after one INFO line) when the client disconnects meanwhile.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise invalid([], f"the body has {declared} bytes; the limit is {limit}", "body_too_large", 413)
    if readers.draining:
        raise _shutting_down()
    stop = Interrupt()
    timer = asyncio.get_running_loop().call_later(timeout, stop, "timeout")
    readers.add(stop)
    try:
        with stop:
            return await _collect(request, limit)
    except Interrupted as exc:
        if exc.reason == "drain":
            raise _shutting_down() from None
        raise HTTPError(
            408,
            f"the request body did not all arrive within {timeout:g} s (--body-timeout)",
            {"Connection": "close"},
        ) from None
    except ClientDisconnect:
        client = request.client
        address = f"{client.host}:{client.port}" if client else "unknown address"
        logger.info("client went away while sending its body (%s)", address)
        raise ClientGone from None
    finally:
        timer.cancel()
        readers.discard(stop)


async def _collect(request: Request, limit: int) -> bytes:
    size = 0
    chunks = []
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise invalid([], f"the body is over the limit of {limit} bytes", "body_too_large", 413)
        chunks.append(chunk)
    return b"".join(chunks)


def _shutting_down() -> HTTPError:
    return HTTPError(503, "the server is shutting down", {"Connection": "close"})
