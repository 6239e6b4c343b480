"""One engine process as a front end sees it: :class:`RemoteEngine`, over a ZeroMQ DEALER socket.

Nothing is lost across the boundary: it watches its connection to the engine (ZeroMQ socket
events); when the engine process dies, every request it held fails at once with 503
``engine_unavailable`` and ``Retry-After``, and new ones get the same answer until the restarted
engine is back (the supervisor restarts it: :mod:`.supervisor`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from typing import Any

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

import chronoserve.server.wire as wire
from chronoserve.errors import EngineUnavailable
from chronoserve.models.base import ModelLoader
from chronoserve.request import ForecastRequest, ForecastResult

logger = logging.getLogger("chronoserve.server")

#: Seconds a client is told to wait (``Retry-After``) while the engine process is away.
ENGINE_RETRY_AFTER = 2.0


class RemoteEngine:
    """An engine process, as the forecast routes see an engine (:class:`~.runtime.Forecaster`)."""

    def __init__(self, address: str, loader: ModelLoader) -> None:
        self.address = address
        self.loader = loader
        self.connected = asyncio.Event()
        self._calls = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[list[Any]]] = {}
        self._context = zmq.asyncio.Context()
        self._socket = self._context.socket(zmq.DEALER)
        # Queue a frame only on a live connection: with no engine a send fails at once (503)
        # instead of waiting in a pipe for an engine that may never come back.
        for option, value in ((zmq.IMMEDIATE, 1), (zmq.LINGER, 0), (zmq.SNDHWM, 0), (zmq.RCVHWM, 0)):
            self._socket.setsockopt(option, value)
        self._monitor = self._socket.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
        self._socket.connect(address)
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._read()), loop.create_task(self._watch())]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._fail_all("the server is shutting down")
        self._socket.disable_monitor()
        self._monitor.close(linger=0)
        self._socket.close(linger=0)
        self._context.term()

    # -- the Forecaster protocol ------------------------------------------------------------

    def canonical(self, name: object) -> str:
        return self.loader.canonical(name)

    async def forecast(self, request: ForecastRequest) -> ForecastResult:
        answer = await self.call([wire.FORECAST, 0, wire.pack_request(request)], cancel=True)
        return wire.unpack_result(answer[0])

    # -- calls -------------------------------------------------------------------------------

    async def call(self, frame: list[Any], *, cancel: bool = False) -> list[Any]:
        """Send ``frame`` (its second item becomes the call's id) and wait for its answer.

        Returns the answer's payload; raises the engine's error, or :class:`EngineUnavailable`
        when the engine process is not there or dies meanwhile. Cancelled, it tells the engine
        to drop the request (with ``cancel``).
        """
        if not self.connected.is_set():
            raise EngineUnavailable("the engine process is starting or restarting", ENGINE_RETRY_AFTER)
        call = next(self._calls)
        frame[1] = call
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._waiting[call] = future
        sent: asyncio.Future[Any] = self._socket.send(wire.dumps(frame), flags=zmq.NOBLOCK)  # type: ignore[assignment]
        if sent.done() and sent.exception() is not None:  # zmq.Again: no live connection
            self._waiting.pop(call, None)
            raise EngineUnavailable("the engine process is not reachable", ENGINE_RETRY_AFTER)
        try:
            kind, *payload = await future
        except asyncio.CancelledError:
            if cancel and self._waiting.pop(call, None) is not None:
                self._socket.send(wire.dumps([wire.CANCEL, call]), flags=zmq.NOBLOCK)
            raise
        if kind == wire.ERROR:
            raise wire.unpack_error(payload[0])
        return payload

    async def settled(self) -> None:
        """Once every call sent so far has its answer (or has failed: the engine was lost)."""
        while pending := [f for f in self._waiting.values() if not f.done()]:
            await asyncio.wait(pending)

    def send(self, frame: list[Any]) -> None:
        """Send a frame that needs no answer (dropped when the engine is away)."""
        if self.connected.is_set():
            self._socket.send(wire.dumps(frame), flags=zmq.NOBLOCK)

    async def _read(self) -> None:
        while True:
            data = await self._socket.recv()
            try:
                call, *answer = wire.loads(data)
            except Exception:
                logger.exception("unreadable answer from the engine process (%d bytes): dropped", len(data))
                continue
            future = self._waiting.pop(call, None)
            if future is not None and not future.done():
                future.set_result(answer)

    async def _watch(self) -> None:
        while True:
            event = parse_monitor_message(await self._monitor.recv_multipart())["event"]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.connected.set()
                logger.info("connected to the engine process at %s", self.address)
            elif event == zmq.EVENT_DISCONNECTED and self.connected.is_set():
                self.connected.clear()
                failed = self._fail_all("the engine process stopped while this request was in it; it is restarting")
                level = logging.WARNING if failed else logging.INFO
                logger.log(
                    level, "lost the engine process at %s: %d request(s) in it failed with 503", self.address, failed
                )

    def _fail_all(self, message: str) -> int:
        waiting, self._waiting = self._waiting, {}
        failed = 0
        for future in waiting.values():
            if not future.done():
                future.set_exception(EngineUnavailable(message, ENGINE_RETRY_AFTER))
                failed += 1
        return failed


__all__ = ["ENGINE_RETRY_AFTER", "RemoteEngine"]
