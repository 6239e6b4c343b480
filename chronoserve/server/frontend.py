"""A front-end process of ``chronoserve serve --http-workers N``: HTTP here, the engine elsewhere.

Each front end accepts connections on the listening socket it shares with the others, reads
and validates ``POST /forecast`` and ``/forecast/batch`` itself (the same handlers as the
one-process server: :mod:`.routes`, :mod:`.handler`), cuts the series window, and sends the
engine process a ready :class:`~chronoserve.request.ForecastRequest` (:mod:`.wire`), so the
parsing never holds the GIL that the engine's inference threads need. Every other route is
forwarded as it is to the engine process's app, which answers it (one implementation of
``/models``, ``/readyz``, ``/metrics``).

Nothing is lost across the boundary: a front end watches its connection to the engine (ZeroMQ
socket events); when the engine process dies, every request it held fails at once with 503
``engine_unavailable`` and ``Retry-After``, and new ones get the same answer until the
restarted engine is back (the supervisor restarts it: :mod:`.supervisor`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import zmq
import zmq.asyncio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from zmq.utils.monitor import parse_monitor_message

import chronoserve.server.wire as wire
from chronoserve.data import SeriesStore
from chronoserve.errors import EngineUnavailable
from chronoserve.models.base import ModelLoader
from chronoserve.request import ForecastRequest, ForecastResult

from .body import ClientGone, read_body
from .errors import HTTPError, retry_after
from .post import ORJSONResponse
from .routes import forecast, forecast_batch, healthz, http_exception
from .runtime import ServerRuntime, ServerSettings, State

logger = logging.getLogger("chronoserve.server")

#: Seconds a client is told to wait (``Retry-After``) while the engine process is away.
ENGINE_RETRY_AFTER = 2.0
#: Seconds a starting front end waits for the engine process before it accepts connections anyway.
ENGINE_WAIT_SECONDS = 120.0
#: Seconds between flushes of the HTTP counts to the engine process (and before each scrape).
COUNTS_FLUSH_SECONDS = 0.5


class RemoteEngine:
    """The engine process, as the forecast routes see an engine (:class:`~.runtime.Forecaster`)."""

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
                logger.info("connected to the engine process")
            elif event == zmq.EVENT_DISCONNECTED and self.connected.is_set():
                self.connected.clear()
                failed = self._fail_all("the engine process stopped while this request was in it; it is restarting")
                level = logging.WARNING if failed else logging.INFO
                logger.log(level, "lost the engine process: %d request(s) in it failed with 503", failed)

    def _fail_all(self, message: str) -> int:
        waiting, self._waiting = self._waiting, {}
        failed = 0
        for future in waiting.values():
            if not future.done():
                future.set_exception(EngineUnavailable(message, ENGINE_RETRY_AFTER))
                failed += 1
        return failed


class CountsForwarder:
    """The front end's HTTP counts (:class:`~.metrics.HTTPCounts`), added up here and sent to the
    engine process's metrics every :data:`COUNTS_FLUSH_SECONDS` (one frame, not one per request),
    with the process's CPU seconds (``chronoserve_server_cpu_seconds_total``)."""

    def __init__(self, engine: RemoteEngine, name: str) -> None:
        self.engine = engine
        self.name = name
        self._http: dict[tuple[str, int], int] = {}
        self._refused: dict[str, int] = {}
        self._timer: asyncio.TimerHandle | None = None

    def http_answered(self, route: str, status: int, n: int = 1) -> None:
        self._http[(route, status)] = self._http.get((route, status), 0) + n
        self._schedule()

    def refused(self, reason: str, n: int = 1) -> None:
        self._refused[reason] = self._refused.get(reason, 0) + n
        self._schedule()

    def _schedule(self) -> None:
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(COUNTS_FLUSH_SECONDS, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        http = [[route, status, n] for (route, status), n in self._http.items()]
        refused = [[reason, n] for reason, n in self._refused.items()]
        self._http, self._refused = {}, {}
        self.engine.send([wire.COUNTS, 0, http, refused, self.name, time.process_time()])


async def forward(request: Request) -> Response:
    """Any route but the forecasts: answered by the engine process's app."""
    runtime: ServerRuntime = request.state.runtime
    engine = runtime.forecaster
    assert isinstance(engine, RemoteEngine) and isinstance(runtime.counts, CountsForwarder)
    runtime.counts.flush()  # a scrape right after some requests sees them
    s = runtime.settings
    try:
        body = await read_body(request, limit=s.max_body_bytes, timeout=s.body_timeout, readers=runtime.readers)
    except HTTPError as error:
        return ORJSONResponse(error.body(), status_code=error.status, headers=error.headers)
    except ClientGone:
        return Response(status_code=499)
    headers = [[k, v] for k, v in request.scope["headers"]]
    frame = [wire.HTTP, 0, request.method, request.url.path, request.scope.get("query_string", b""), headers, body]
    try:
        status, answer_headers, content = await engine.call(frame)
    except EngineUnavailable as exc:
        return ORJSONResponse(
            {"status": "engine_unavailable", "detail": str(exc)},
            status_code=503,
            headers={"Retry-After": retry_after(exc.retry_after)},
        )
    response = Response(content, status_code=status)
    response.raw_headers = [(bytes(k), bytes(v)) for k, v in answer_headers]
    return response


_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def create_frontend_app(
    settings: ServerSettings, address: str, *, store: SeriesStore | None = None, name: str = "http-0"
) -> Starlette:
    """The ASGI app of front-end process ``name``, talking to the engine process at ``address``."""
    runtime = ServerRuntime(settings, store=store)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[State]:
        runtime.start()
        loader = runtime.settings.engine.loader()  # names only: no torch in a front end
        runtime.name_models(loader.canonical)
        remote = RemoteEngine(address, loader)
        runtime.forecaster, runtime.counts = remote, CountsForwarder(remote, name)
        runtime.ready = True  # readiness is the engine's: /readyz is forwarded
        await remote.start()
        # Accept connections once the engine process is there, so that a front end that is
        # listening can forward (the others may already be serving); a missing engine is
        # answered 503 after ENGINE_WAIT_SECONDS rather than by connections refused forever.
        try:
            await asyncio.wait_for(remote.connected.wait(), ENGINE_WAIT_SECONDS)
        except asyncio.TimeoutError:
            logger.warning("no engine process after %.0f s: serving, answering 503 until it comes", ENGINE_WAIT_SECONDS)
        gc.freeze()  # what the front end holds from now on is long-lived (see runtime.HeapFreezer)
        try:
            yield {"runtime": runtime}
        finally:
            runtime.begin_drain()
            runtime.counts.flush()
            await remote.close()

    routes = [
        Route("/forecast", forecast, methods=["POST"]),
        Route("/forecast/batch", forecast_batch, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),  # this process is alive, whatever the engine's state
        Route("/{path:path}", forward, methods=_METHODS),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_exception})
    app.state.runtime = runtime
    return app


def frontend_main(settings: ServerSettings, address: str, sockets: list[Any], log_level: str, index: int) -> None:
    """A front-end process's entry point (``multiprocessing`` spawn): serve HTTP on ``sockets``."""
    from .process import configure_logging, draining_server, exit_with_parent

    configure_logging(log_level, role=f"http-{index}")
    exit_with_parent()
    app = create_frontend_app(settings, address, name=f"http-{index}")
    server = draining_server(app, settings, log_level)
    server.run(sockets=sockets)
