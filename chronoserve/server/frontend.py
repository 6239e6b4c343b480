"""A front-end process of ``chronoserve serve --http-workers N``: HTTP here, the engine elsewhere.

Each front end accepts connections on the listening socket it shares with the others, reads
and validates ``POST /forecast`` and ``/forecast/batch`` itself (the same handlers as the
one-process server: :mod:`.routes`, :mod:`.handler`), cuts the series window, and sends the
engine process a ready :class:`~chronoserve.request.ForecastRequest` (:mod:`.wire`), so the
parsing never holds the GIL that the engine's inference threads need. Every other route is
forwarded as it is to the engine process's app, which answers it (one implementation of
``/models``, ``/readyz``, ``/metrics``). With several engine processes (``--engines K``) the
requests are placed by readiness and those routes merged (:mod:`.engines`).

Nothing is lost across the boundary: a front end watches its connection to each engine
(:mod:`.remote`); when an engine process dies, every request it held fails at once with 503
``engine_unavailable`` and ``Retry-After``, and new ones go to the other engines, or get the
same answer until the restarted engine is back (the supervisor restarts it: :mod:`.supervisor`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Protocol, cast

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

import chronoserve.server.wire as wire
from chronoserve.data import SeriesStore
from chronoserve.errors import EngineUnavailable
from chronoserve.models.base import ModelLoader

from .access import AccessLog
from .auth import Auth, Keys
from .body import ClientGone, read_body
from .engines import EngineSet
from .errors import HTTPError, retry_after
from .inprocess import Answer
from .post import ORJSONResponse
from .routes import forecast, forecast_batch, healthz, http_exception
from .runtime import Forecaster, ServerRuntime, ServerSettings, State
from .v2 import FRONTEND_ROUTES as V2_FRONTEND_ROUTES

logger = logging.getLogger("chronoserve.server")

#: Seconds a starting front end waits for the engine process before it accepts connections anyway.
ENGINE_WAIT_SECONDS = 120.0
#: Seconds between flushes of the HTTP counts to the engine process (and before each scrape).
COUNTS_FLUSH_SECONDS = 0.5


class Connected(Protocol):
    def is_set(self) -> bool: ...

    async def wait(self) -> Any: ...


class Engines(Forecaster, Protocol):
    """Where a front end sends its work: the engine processes (:class:`~.engines.EngineSet`), or
    the engine replicas of a Ray Serve deployment (:class:`chronoserve.ray.frontdoor.ReplicaEngines`)."""

    @property
    def connected(self) -> Connected:
        """Set while the engines can be reached (what a starting front end waits for)."""
        ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def http(self, frame: list[Any]) -> Answer:
        """The answer to a forwarded route (a :data:`~.wire.HTTP` frame)."""
        ...

    def send(self, frame: list[Any]) -> None:
        """Send a frame that needs no answer (the HTTP counts, :data:`~.wire.COUNTS`)."""
        ...


class CountsForwarder:
    """The front end's HTTP counts (:class:`~.metrics.HTTPCounts`), added up here and sent to the
    engine's metrics every :data:`COUNTS_FLUSH_SECONDS` (one frame, not one per request), with
    the process's CPU seconds (``chronoserve_server_cpu_seconds_total``)."""

    def __init__(self, engine: Engines, name: str) -> None:
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
    engines = cast(Engines, runtime.forecaster)
    assert isinstance(runtime.counts, CountsForwarder)
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
        status, answer_headers, content = await engines.http(frame)
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


def _engine_set(addresses: str | Sequence[str], placement: str) -> Callable[[ModelLoader], Engines]:
    listed = [addresses] if isinstance(addresses, str) else list(addresses)
    return lambda loader: EngineSet(listed, loader, placement=placement)


def create_frontend_app(
    settings: ServerSettings,
    engines: str | Sequence[str] | Callable[[ModelLoader], Engines],
    *,
    store: SeriesStore | None = None,
    loader: ModelLoader | None = None,
    name: str = "http-0",
) -> Starlette:
    """The ASGI app of front end ``name``, talking to the engine process(es) at ``engines``
    (addresses; several: each request placed by readiness, see :mod:`.engines`), or to what
    ``engines(loader)`` returns (the engine replicas of :mod:`chronoserve.ray`).

    ``loader`` names the models (default: ``settings.engine.loader()``, which loads nothing here)."""
    if isinstance(engines, str) or not callable(engines):
        connect = _engine_set(engines, settings.placement)
    else:
        connect = engines
    runtime = ServerRuntime(settings, store=store)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[State]:
        runtime.start()
        names = loader if loader is not None else runtime.settings.engine.loader()  # no torch in a front end
        runtime.name_models(names.canonical)
        engines = connect(names)
        runtime.forecaster, runtime.counts = engines, CountsForwarder(engines, name)
        runtime.ready = True  # readiness is the engine's: /readyz is forwarded
        await engines.start()
        # Accept connections once the engine process is there, so that a front end that is
        # listening can forward (the others may already be serving); a missing engine is
        # answered 503 after ENGINE_WAIT_SECONDS rather than by connections refused forever.
        try:
            await asyncio.wait_for(engines.connected.wait(), ENGINE_WAIT_SECONDS)
        except asyncio.TimeoutError:
            logger.warning("no engine process after %.0f s: serving, answering 503 until it comes", ENGINE_WAIT_SECONDS)
        gc.freeze()  # what the front end holds from now on is long-lived (see runtime.HeapFreezer)
        try:
            yield {"runtime": runtime}
        finally:
            runtime.begin_drain()
            runtime.counts.flush()
            await engines.close()

    routes = [
        Route("/forecast", forecast, methods=["POST"]),
        Route("/forecast/batch", forecast_batch, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),  # this process is alive, whatever the engine's state
        *V2_FRONTEND_ROUTES,
        Route("/{path:path}", forward, methods=_METHODS),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: http_exception},
        middleware=[
            Middleware(AccessLog, enabled=settings.access_log),  # outermost: refusals are logged too
            Middleware(Auth, keys=Keys(settings.api_keys, settings.admin_keys)),
        ],
    )
    app.state.runtime = runtime
    return app


def frontend_main(
    settings: ServerSettings, addresses: Sequence[str], sockets: list[Any], log_level: str, index: int
) -> None:
    """A front-end process's entry point (a worker of :mod:`chronoserve.forkserver`): serve HTTP on ``sockets``."""
    from chronoserve.logs import configure_logging

    from .process import draining_server, exit_with_parent

    configure_logging(log_level, role=f"http-{index}", log_format=settings.log_format)
    exit_with_parent()
    app = create_frontend_app(settings, addresses, name=f"http-{index}")
    server = draining_server(app, settings, log_level)
    server.run(sockets=sockets)
