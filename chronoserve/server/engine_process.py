"""The engine process of ``chronoserve serve --http-workers N``: one engine, served to the front ends.

It runs the whole app of :func:`~chronoserve.server.create_app` (engine, warm-up, metrics,
drain), but no HTTP server: :class:`EngineServer` takes the front ends' frames from a ZeroMQ
ROUTER socket (:mod:`.wire`) and

- submits each forecast to the engine and answers when its future settles (no task per
  request once the model's spec is known), cancelling it when the front end says its client left;
- runs every other route (``/models``, ``/readyz``, ``/metrics``, ...) through the app itself,
  called in-process as ASGI (:mod:`.inprocess`), so each route has one implementation whatever the process layout;
- adds the front ends' HTTP counts to the app's metrics.

On SIGTERM it drains as the one-process server does (stop accepting, run what is queued
within ``--drain-timeout``, fail the rest with 503), answers everything, then exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Mapping
from functools import partial
from typing import Any

import zmq
import zmq.asyncio
from starlette.applications import Starlette

import chronoserve.server.wire as wire
from chronoserve.errors import ChronoserveError, EngineClosed, UnknownModel
from chronoserve.request import ForecastRequest, ForecastResult

from .inprocess import call_app
from .runtime import ServerRuntime, ServerSettings

logger = logging.getLogger("chronoserve.server")

#: Milliseconds a closing socket keeps trying to deliver the last answers.
LINGER_MS = 2000


class EngineServer:
    """Serve ``app``'s engine to front-end processes on ``address`` (``ipc://...``; ``tcp://...``
    for a Ray Serve replica's engine, :mod:`chronoserve.ray.replica`)."""

    def __init__(self, app: Starlette, state: Mapping[str, Any], address: str) -> None:
        self.app = app
        self.state = dict(state)
        self.runtime: ServerRuntime = state["runtime"]
        self._context = zmq.asyncio.Context()
        self._socket = self._context.socket(zmq.ROUTER)
        for option, value in ((zmq.SNDHWM, 0), (zmq.RCVHWM, 0), (zmq.LINGER, LINGER_MS)):
            self._socket.setsockopt(option, value)
        self._socket.bind(address)
        self.address: str = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        """Where it listens (``address``, with the port chosen for ``tcp://host:*``)."""
        self._running: dict[tuple[bytes, int], asyncio.Future[ForecastResult]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def serve(self) -> None:
        """Take frames until cancelled."""
        while True:
            peer, data = await self._socket.recv_multipart()
            try:
                frame = wire.loads(data)
                op, call = frame[0], frame[1]
            except Exception:
                logger.exception("unreadable frame from a front end (%d bytes): dropped", len(data))
                continue
            if op == wire.FORECAST:
                self._forecast(peer, call, frame[2])
            elif op == wire.CANCEL:
                future = self._running.pop((peer, call), None)
                if future is not None:
                    future.cancel()
            elif op == wire.HTTP:
                self._spawn(self._http(peer, call, *frame[2:]))
            elif op == wire.COUNTS:
                self._count(*frame[2:6])
            elif op == wire.VIEW:
                self._view(peer, call)

    def close(self) -> None:
        self._socket.close(linger=LINGER_MS)
        self._context.term()

    # -- forecasts ------------------------------------------------------------------------

    def _forecast(self, peer: bytes, call: int, values: Mapping[str, Any]) -> None:
        engine = self.runtime.engine
        try:
            request = wire.unpack_request(values)
            if engine is None:
                raise EngineClosed("the engine is not running")
            name = engine.canonical(request.model)
            if not self.runtime.allowed(name):  # front ends leave this to the engine (model management)
                raise UnknownModel(
                    name,
                    f"model {name!r} is not served here: use a catalog name (GET /models) or one the operator "
                    "allowed (at start-up or through model management)",
                )
        except Exception as exc:  # an engine error, or a frame that is not a request
            self._send(peer, [call, wire.ERROR, wire.pack_error(exc)])
            return
        spec = engine.spec(name)
        if spec is None:
            self._spawn(self._submit(peer, call, request))  # resolving the name may take a while
            return
        try:
            future = engine.enqueue(request, spec)  # no task per request
        except Exception as exc:  # every call is answered, and nothing stops the loop that takes frames
            self._refuse(peer, call, exc)
            return
        self._follow(peer, call, future)

    async def _submit(self, peer: bytes, call: int, request: ForecastRequest) -> None:
        engine = self.runtime.engine
        assert engine is not None
        try:
            future = await engine.submit(request)
        except Exception as exc:
            self._refuse(peer, call, exc)
            return
        self._follow(peer, call, future)

    def _refuse(self, peer: bytes, call: int, error: Exception) -> None:
        if not isinstance(error, ChronoserveError):
            logger.error("a forecast failed in the engine process", exc_info=error)
        self._send(peer, [call, wire.ERROR, wire.pack_error(error)])

    def _follow(self, peer: bytes, call: int, future: asyncio.Future[ForecastResult]) -> None:
        self._running[(peer, call)] = future
        future.add_done_callback(partial(self._answer, peer, call))

    def _answer(self, peer: bytes, call: int, future: asyncio.Future[ForecastResult]) -> None:
        cancelled = self._running.pop((peer, call), None) is None  # the front end cancelled it
        if future.cancelled():
            if not cancelled:
                self._send(peer, [call, wire.ERROR, wire.pack_error(EngineClosed("the request was cancelled"))])
            return
        error = future.exception()
        if error is not None:
            self._send(peer, [call, wire.ERROR, wire.pack_error(error)])
        else:
            self._send(peer, [call, wire.OK, wire.pack_result(future.result())])

    # -- everything else -------------------------------------------------------------------

    async def _http(
        self, peer: bytes, call: int, method: str, path: str, query: bytes, headers: list[list[bytes]], body: bytes
    ) -> None:
        status, answer_headers, content = await call_app(self.app, self.state, method, path, query, headers, body)
        self._send(peer, [call, wire.HTTP, status, answer_headers, content])

    def _view(self, peer: bytes, call: int) -> None:
        engine = self.runtime.engine
        if engine is None:
            self._send(peer, [call, wire.ERROR, wire.pack_error(EngineClosed("the engine is not running"))])
        else:
            self._send(peer, [call, wire.OK, engine.readiness().to_dict()])

    def _count(self, http: list[list[Any]], refused: list[list[Any]], process: str, cpu: float) -> None:
        if self.runtime.metrics is not None:
            self.runtime.metrics.add_counts(http, refused, process, cpu)

    # -- plumbing --------------------------------------------------------------------------

    def _send(self, peer: bytes, frame: list[object]) -> None:
        try:
            self._socket.send_multipart([peer, wire.dumps(frame)])
        except zmq.ZMQError:  # closing: the front end fails what it still waits for
            logger.debug("answer to a front end dropped: the socket is closed")

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def serve_engine(settings: ServerSettings, address: str) -> bool:
    """Run the engine process until SIGTERM or SIGINT, then drain and return True; False if it could
    not serve at all (its default model failed to load, :attr:`ServerRuntime.fatal`)."""
    from .app import create_app

    app = create_app(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runtime: ServerRuntime = app.state.runtime
    runtime.on_fatal = stop.set
    async with app.router.lifespan_context(app) as state:
        assert state is not None
        server = EngineServer(app, state, address)
        serving = loop.create_task(server.serve())
        logger.info("engine process serving on %s", address)
        try:
            await stop.wait()
            runtime.begin_drain()
            await runtime.finish()  # every accepted request is answered (or failed with 503)
            # Forwarded routes still running (a /metrics scrape) get their answers out.
            await asyncio.sleep(0)
        finally:
            serving.cancel()
            server.close()
    return runtime.fatal is None


def engine_main(settings: ServerSettings, address: str, log_level: str, index: int = 0) -> None:
    """The engine process's entry point (a worker of :mod:`chronoserve.forkserver`: forked, or spawned)."""
    from chronoserve.logs import configure_logging

    from .process import EXIT_FATAL, exit_with_parent

    role = "engine" if index == 0 else f"engine-{index}"
    configure_logging(log_level, role=role, log_format=settings.log_format)
    exit_with_parent()
    if not asyncio.run(serve_engine(settings, address)):
        raise SystemExit(EXIT_FATAL)  # the supervisor stops the server rather than restart this
