"""The HTTP app: starlette routes over one engine, created in the app's lifespan.

``create_app(settings)`` returns an ASGI app. The engine, the series store and the metrics
live in a :class:`ServerRuntime` shared through the lifespan's typed state. Handlers stay
thin: parse and validate (pydantic), turn the body into a :class:`ForecastRequest`, await
the engine (cancelled if the client disconnects), and map errors to status codes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypedDict, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from chronoserve import __version__
from chronoserve.data import SeriesStore
from chronoserve.engine import Engine
from chronoserve.errors import ChronoserveError, ModelLoadError
from chronoserve.limits import MAX_ANSWER_VALUES, answer_values
from chronoserve.models.base import ModelLoader
from chronoserve.models.catalog import CATALOG, DEFAULT_MODEL, find_entry
from chronoserve.settings import EngineSettings

from .body import ClientGone, read_body
from .errors import HTTPError, invalid, validation_error
from .handler import forecast_item
from .metrics import ServerMetrics
from .schemas import BatchIn, ForecastIn, openapi_document

logger = logging.getLogger("chronoserve.server")
ModelT = TypeVar("ModelT", bound=BaseModel)


@dataclass
class ServerSettings:
    """Everything ``chronoserve serve`` can set. Defaults give a server that answers at once.

    ``engine`` is the engine's settings (policy, threads, queue bound, per-request limits, the
    loader's device and dtype): the same value every front end builds its engine from.
    """

    engine: EngineSettings = field(default_factory=lambda: EngineSettings(max_queue=1024))
    models: tuple[str, ...] = ()
    """Models HTTP may name beyond the catalog (names or local directories), loaded at start-up."""
    default_model: str = DEFAULT_MODEL
    warmup: bool = True
    """Load the default model and ``models`` before reporting ready."""
    data: str | None = None
    """A directory of series CSVs instead of the embedded Beijing PM2.5 data."""
    max_body_bytes: int = 1 << 20
    drain_timeout: float = 30.0
    # -- connections (see chronoserve.server.protocol) ------------------------------------------
    header_timeout: float = 10.0
    """Seconds a connection has to send a request's headers, from its first byte (or from
    opening, for a new connection); then 408 and the connection is closed."""
    body_timeout: float = 30.0
    """Seconds a request has to send its whole body once its headers are in; then 408."""
    keep_alive_timeout: float = 5.0
    """Seconds an idle keep-alive connection stays open between requests."""
    max_header_bytes: int = 16 * 1024
    """The largest request line plus headers; larger gets 431 and the connection is closed."""
    max_connections: int = 1000
    """Open connections beyond this are answered 503 with ``Retry-After`` and closed."""


class ORJSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)


@dataclass
class ServerRuntime:
    """What the handlers share: settings, engine, series, metrics, and the server's state."""

    settings: ServerSettings
    loader: ModelLoader | None = None
    store: SeriesStore | None = None
    engine: Engine | None = None
    metrics: ServerMetrics | None = None
    ready: bool = False
    draining: bool = False
    warmup_error: str | None = None
    default_model: str = ""
    """The canonical name of the default model (set when the engine starts)."""
    extra_models: tuple[str, ...] = ()
    """The canonical names of the operator's ``--models``."""
    loop: asyncio.AbstractEventLoop | None = None
    drain_event: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when draining begins: requests still sending their body get 503 at once."""
    _drain_task: asyncio.Task[None] | None = None

    def allowed(self, name: str) -> bool:
        """HTTP may name catalog models (``random/...``, short names, hub ids) and the operator's models.

        ``name`` is canonical (:meth:`Engine.canonical`), so no spelling of a name gets past
        this check that the pool and metrics would not see as the same model.
        """
        return name == self.default_model or name in self.extra_models or find_entry(name) is not None

    def begin_drain(self) -> None:
        """Stop accepting (readyz 503), run what is queued within the drain timeout, fail the rest with 503."""
        if self.draining:
            return
        self.draining = True
        self.drain_event.set()
        logger.info("draining: finishing queued requests within %.0f s", self.settings.drain_timeout)
        if self.engine is not None:
            self._drain_task = asyncio.get_running_loop().create_task(
                self.engine.close(drain=True, timeout=self.settings.drain_timeout)
            )

    async def finish(self) -> None:
        self.begin_drain()
        if self._drain_task is not None:
            await self._drain_task


class State(TypedDict):
    runtime: ServerRuntime


# -- request handling -----------------------------------------------------------------------


async def _forecast_one(runtime: ServerRuntime, item: ForecastIn, prefix: list[str | int]) -> dict[str, Any]:
    """Forecast one validated item; raises :class:`HTTPError` for every failure."""
    engine = runtime.engine
    if engine is None or runtime.draining:
        raise HTTPError(503, "the server is shutting down", {"Connection": "close"})
    assert runtime.store is not None
    return await forecast_item(
        engine, runtime.store, item, prefix, default_model=runtime.default_model, allowed=runtime.allowed
    )


async def _until_disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


class _ClientGone(Exception):
    pass


async def _unless_disconnected(request: Request, work: Awaitable[Any]) -> Any:
    """Await ``work``; if the client disconnects first, cancel it (the engine drops queued requests)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_until_disconnected(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task in done:
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    raise _ClientGone


def _runtime(request: Request) -> ServerRuntime:
    runtime: ServerRuntime = request.state.runtime
    return runtime


def _json_error(runtime: ServerRuntime, route: str, error: HTTPError) -> ORJSONResponse:
    if runtime.metrics is not None:
        runtime.metrics.http.labels(route, str(error.status)).inc()
        if error.status in (413, 415, 422):
            # Every refused body is counted here, whichever layer found the problem (the engine's own
            # invalid-input events are not counted again: see ServerMetrics.request_rejected).
            reason = {413: "body_too_large", 415: "unsupported_media_type"}.get(error.status, "invalid_request")
            runtime.metrics.rejected.labels("too_costly" if error.kind == "too_costly" else reason).inc()
    return ORJSONResponse(error.body(), status_code=error.status, headers=error.headers)


def _ok(runtime: ServerRuntime, route: str, body: Any) -> ORJSONResponse:
    if runtime.metrics is not None:
        runtime.metrics.http.labels(route, "200").inc()
    return ORJSONResponse(body)


def _check_media_type(request: Request) -> None:
    """Bodies are JSON: ``application/json`` or a ``+json`` type; no header at all is taken as JSON."""
    declared = request.headers.get("content-type")
    if declared is None:
        return
    media = declared.split(";", 1)[0].strip().lower()
    if media != "application/json" and not (media.startswith("application/") and media.endswith("+json")):
        raise HTTPError(
            415,
            [
                {
                    "loc": ["header", "content-type"],
                    "msg": f"the body must be JSON: send `Content-Type: application/json` (curl: --json), "
                    f"not {declared[:100]!r}",
                    "type": "unsupported_media_type",
                }
            ],
        )


async def _parse(request: Request, runtime: ServerRuntime, schema: type[ModelT]) -> ModelT:
    """Read the body (bounded in size and time) and validate it strictly: no coercion, finite numbers."""
    _check_media_type(request)
    s = runtime.settings
    raw = await read_body(request, limit=s.max_body_bytes, timeout=s.body_timeout, draining=runtime.drain_event)
    try:
        return schema.model_validate_json(raw)
    except ValidationError as exc:
        raise validation_error(exc, []) from None


async def _post(
    request: Request,
    route: str,
    schema: type[ModelT],
    work: Callable[[ServerRuntime, ModelT], Awaitable[Any]],
) -> Response:
    """Read, parse and validate a JSON body, run ``work`` unless the client leaves, answer."""
    runtime = _runtime(request)
    try:
        parsed = await _parse(request, runtime, schema)
        body = await _unless_disconnected(request, work(runtime, parsed))
    except HTTPError as error:
        return _json_error(runtime, route, error)
    except (_ClientGone, ClientGone):
        return Response(status_code=499)
    return _ok(runtime, route, body)


async def forecast(request: Request) -> Response:
    return await _post(request, "/forecast", ForecastIn, lambda runtime, item: _forecast_one(runtime, item, []))


async def _forecast_all(runtime: ServerRuntime, batch: BatchIn) -> dict[str, Any]:
    size = sum(answer_values(item.horizon_hours, len(item.quantile_levels)) for item in batch.requests)
    if size > MAX_ANSWER_VALUES:
        raise invalid(
            ["requests"],
            f"the answer would hold {size:,} numbers (horizon x (levels + 2), summed over the items); "
            f"the limit is {MAX_ANSWER_VALUES:,}: split the batch",
            "too_costly",
        )

    async def one(i: int, item: ForecastIn) -> dict[str, Any]:
        try:
            return {"status": 200, "result": await _forecast_one(runtime, item, ["requests", i])}
        except HTTPError as error:
            return {"status": error.status, "error": error.body()}

    return {"results": list(await asyncio.gather(*(one(i, item) for i, item in enumerate(batch.requests))))}


async def forecast_batch(request: Request) -> Response:
    return await _post(request, "/forecast/batch", BatchIn, _forecast_all)


def _iso_wall(engine: Engine, at: float | None) -> str | None:
    if at is None:
        return None
    wall = time.time() - (engine.clock.now() - at)
    return datetime.fromtimestamp(wall).astimezone().isoformat(timespec="seconds")


async def models(request: Request) -> Response:
    runtime = _runtime(request)
    engine = runtime.engine
    resident = []
    if engine is not None:
        for name, info in sorted(engine.resident().items()):
            resident.append(
                {
                    "name": name,
                    "family": info.family,
                    "random_weights": info.random_weights,
                    "status": info.status,
                    "bytes": info.nbytes,
                    "load_seconds": info.load_seconds,
                    "loaded_at": _iso_wall(engine, info.loaded_at),
                    "last_used": _iso_wall(engine, info.last_used) if info.status == "ready" else None,
                    "running_batches": info.running_batches,
                }
            )
    catalog = [
        {
            "name": e.name,
            "family": e.family,
            "parameters": e.num_params,
            "hub_id": e.hub_id,
            "random_name": f"random/{e.name}",
            "test_only": e.test_only,
            "trained_here": e.trained_here,
            "description": e.description,
        }
        for e in CATALOG.values()
    ]
    body = {
        "default": runtime.default_model,
        "allowed_extra": list(runtime.extra_models),
        "resident": resident,
        "failed": _failures(runtime),
        "catalog": catalog,
        "note": "random/NAME models have the published architecture and random weights: "
        "their timings are real, their forecasts are not. chronos-2-pm25 (trained_here) is a small "
        "Chronos-2 trained by chronoserve on Beijing PM2.5 2013-03 to 2016-06: see its description.",
    }
    return _ok(runtime, "/models", body)


async def series(request: Request) -> Response:
    runtime = _runtime(request)
    assert runtime.store is not None
    return _ok(runtime, "/series", {"series": [info.to_dict() for info in runtime.store.infos()]})


async def healthz(request: Request) -> Response:
    return ORJSONResponse({"status": "alive"})


def _failures(runtime: ServerRuntime, names: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Models whose last load failed (of ``names``, or all): the error and when it is tried again."""
    engine = runtime.engine
    if engine is None:
        return []
    now = engine.clock.now()
    return [
        {
            "name": f.model,
            "error": f.error,
            "failures": f.failures,
            "retry_in_seconds": round(max(0.0, f.retry_at - now), 3),
        }
        for f in sorted(engine.load_failures().values(), key=lambda f: f.model)
        if names is None or f.model in names
    ]


async def readyz(request: Request) -> Response:
    """200 once the default model serves (extras that failed are listed); 503 while warming or draining."""
    runtime = _runtime(request)
    if runtime.draining:
        return ORJSONResponse({"status": "draining"}, status_code=503)
    failed = _failures(runtime, (runtime.default_model, *runtime.extra_models))
    if not runtime.ready:
        state = "warming_up" if runtime.warmup_error is None else "default_model_failed"
        status: dict[str, Any] = {"status": state}
        if runtime.warmup_error:
            status["error"] = runtime.warmup_error
        if failed:
            status["failed_models"] = failed
        return ORJSONResponse(status, status_code=503)
    return ORJSONResponse({"status": "ready", "default": runtime.default_model, "failed_models": failed})


async def metrics(request: Request) -> Response:
    runtime = _runtime(request)
    assert runtime.metrics is not None
    from prometheus_client import CONTENT_TYPE_LATEST

    return Response(runtime.metrics.render(), media_type=CONTENT_TYPE_LATEST)


async def openapi(request: Request) -> Response:
    return ORJSONResponse(openapi_document(__version__, _runtime(request).default_model or DEFAULT_MODEL))


async def _http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (404, 405) as JSON, like every other error answer."""
    assert isinstance(exc, HTTPException)
    return ORJSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


_DOCS = """<!doctype html>
<html><head><title>chronoserve API</title><meta charset="utf-8">
<link rel="stylesheet" href="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css"></head>
<body><div id="ui"></div>
<noscript>The API description is at <a href="/openapi.json">/openapi.json</a>.</noscript>
<script src="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({url: "/openapi.json", dom_id: "#ui"});</script>
</body></html>"""


async def docs(request: Request) -> Response:
    return HTMLResponse(_DOCS)


# -- the app --------------------------------------------------------------------------------


async def _warm_up(runtime: ServerRuntime) -> None:
    """Load the default model (retrying with the engine's backoff until it loads), then the extras.

    The server is ready once the default model serves: an operator's extra model that fails
    to load is listed in ``/readyz`` and ``/models`` and retried at its next request after its
    backoff, but never keeps the server from serving the others.
    """
    engine = runtime.engine
    assert engine is not None
    default = runtime.default_model
    while True:
        try:
            await engine.warm(default)
            break
        except ModelLoadError as exc:
            wait = exc.retry_after if exc.retry_after is not None else engine.load_retry[0]
            runtime.warmup_error = f"{default}: {exc}"
            logger.error("the default model %s failed to load (next try in %.0f s): %s", default, wait, exc.message)
            await asyncio.sleep(wait)
        except ChronoserveError as exc:  # not a model at all: no retry can help
            runtime.warmup_error = f"{default}: {exc}"
            logger.error("the default model %s cannot be served: %s", default, exc)
            return
    runtime.ready = True
    runtime.warmup_error = None
    logger.info("ready: %s", default)
    for name in runtime.extra_models:
        if name == default:
            continue
        try:
            await engine.warm(name)
        except ChronoserveError as exc:
            logger.error("model %s failed to load; serving the others: %s", name, exc)
        else:
            logger.info("loaded: %s", name)


def create_app(
    settings: ServerSettings | None = None,
    *,
    engine: Engine | None = None,
    loader: ModelLoader | None = None,
    store: SeriesStore | None = None,
    engine_options: Mapping[str, Any] | None = None,
) -> Starlette:
    """The ASGI app over an engine built from ``settings.engine`` when it starts, or over ``engine``.

    An ``engine`` given here is the app's from then on: the app starts it, adds its metrics
    observer, and drains and closes it at shutdown (``settings.engine`` is then unused).
    ``loader`` (instead of ``settings.engine.loader()``), ``store`` and ``engine_options``
    (more :class:`Engine` arguments: a clock, executors, ``load_retry``) are for tests and
    embedding.
    """
    runtime = ServerRuntime(settings or ServerSettings(), loader=loader, store=store)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[State]:
        s = runtime.settings
        runtime.loop = asyncio.get_running_loop()
        if runtime.store is None:
            runtime.store = SeriesStore.from_dir(s.data) if s.data else SeriesStore.embedded()
        runtime.metrics = ServerMetrics(lambda: runtime.engine)
        # A fresh state for every start (an app may be started again after a shutdown).
        runtime.drain_event = asyncio.Event()
        runtime.draining, runtime.ready, runtime.warmup_error, runtime._drain_task = False, False, None, None
        if engine is not None:
            engine.add_observer(runtime.metrics)
            runtime.engine = engine
        else:
            runtime.engine = s.engine.engine(
                loader=runtime.loader, observers=[runtime.metrics], **dict(engine_options or {})
            )
        runtime.default_model = runtime.engine.canonical(s.default_model)
        runtime.extra_models = tuple(dict.fromkeys(runtime.engine.canonical(m) for m in s.models))
        await runtime.engine.start()
        warm: asyncio.Task[None] | None = None
        if s.warmup:
            warm = asyncio.create_task(_warm_up(runtime))
        else:
            runtime.ready = True
        try:
            yield {"runtime": runtime}
        finally:
            if warm is not None:
                warm.cancel()
            await runtime.finish()

    routes = [
        Route("/forecast", forecast, methods=["POST"]),
        Route("/forecast/batch", forecast_batch, methods=["POST"]),
        Route("/models", models, methods=["GET"]),
        Route("/series", series, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/docs", docs, methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: _http_exception})
    app.state.runtime = runtime
    return app
