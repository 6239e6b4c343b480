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
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypedDict, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from chronoserve import __version__
from chronoserve.data import SeriesStore
from chronoserve.engine import Engine
from chronoserve.errors import (
    ChronoserveError,
    EngineClosed,
    InvalidRequest,
    ModelLoadError,
    QueueFull,
    Rejected,
    UnknownModel,
)
from chronoserve.limits import DEFAULT_LIMITS, Limits
from chronoserve.models.base import ModelLoader
from chronoserve.models.catalog import CATALOG, find_entry

from .convert import Prepared, build_request, http_field, result_body
from .metrics import ServerMetrics
from .schemas import DEFAULT_MODEL, BatchIn, ForecastIn, openapi_document

logger = logging.getLogger("chronoserve.server")
ModelT = TypeVar("ModelT", bound=BaseModel)


@dataclass
class ServerSettings:
    """Everything ``chronoserve serve`` can set. Defaults give a server that answers at once."""

    policy: str = "batched"
    policy_options: dict[str, Any] = field(default_factory=dict)
    workers: int | None = None
    torch_threads: int | None = None
    max_queue: int = 1024
    models: tuple[str, ...] = ()
    """Models HTTP may name beyond the catalog (names or local directories), loaded at start-up."""
    default_model: str = DEFAULT_MODEL
    warmup: bool = True
    """Load the default model and ``models`` before reporting ready."""
    data: str | None = None
    """A directory of series CSVs instead of the embedded Beijing PM2.5 data."""
    max_body_bytes: int = 1 << 20
    drain_timeout: float = 30.0
    device: str = "cpu"
    dtype: str = "float32"
    # -- what one request may ask for (checked before any work; see chronoserve.limits) --------
    max_covariates: int = DEFAULT_LIMITS.max_covariates
    """Covariates (past and known-future, counted once per name) one request may send."""
    max_request_gflop: float | None = DEFAULT_LIMITS.max_request_gflop
    """The estimated cost above which a request is refused (422 ``too_costly``); None: no budget."""
    max_inference_seconds: float | None = DEFAULT_LIMITS.max_inference_seconds
    """The longest a batch may hold a worker; past it the batch is stopped (504). None: no bound."""
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

    def limits(self) -> Limits:
        return Limits(
            max_covariates=self.max_covariates,
            max_request_gflop=self.max_request_gflop,
            max_inference_seconds=self.max_inference_seconds,
        )


class ORJSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)


class HTTPError(Exception):
    """An error answer: status, ``detail`` (a string or a list of ``{loc, msg, type}``), headers."""

    def __init__(self, status: int, detail: Any, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"detail": self.detail}


def _invalid(field_path: list[str | int], message: str, kind: str) -> HTTPError:
    return HTTPError(422, [{"loc": ["body", *field_path], "msg": message, "type": kind}])


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
    loop: asyncio.AbstractEventLoop | None = None
    _drain_task: asyncio.Task[None] | None = None

    def allowed(self, name: str) -> bool:
        """HTTP may name catalog models (``random/...``, short names, hub ids) and the operator's extras."""
        return name in self.settings.models or name == self.settings.default_model or find_entry(name) is not None

    def begin_drain(self) -> None:
        """Stop accepting (readyz 503), run what is queued within the drain timeout, fail the rest with 503."""
        if self.draining:
            return
        self.draining = True
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


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _invalid([], f"the body has {declared} bytes; the limit is {limit}", "body_too_large")
    size = 0
    chunks = []
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _invalid([], f"the body is over the limit of {limit} bytes", "body_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def _validation_error(exc: ValidationError, prefix: list[str | int]) -> HTTPError:
    details = []
    for err in exc.errors(include_url=False):
        loc = [*prefix, *err["loc"]]
        details.append({"loc": ["body", *loc], "msg": err["msg"], "type": err["type"]})
    return HTTPError(422, details)


def error_for(exc: BaseException, item: ForecastIn, prefix: list[str | int]) -> HTTPError:
    if isinstance(exc, InvalidRequest):
        return _invalid([*prefix, http_field(exc.field, item)], exc.message, exc.reason)
    if isinstance(exc, QueueFull):
        return HTTPError(429, f"queue full ({exc.limit} requests waiting); retry later", {"Retry-After": "1"})
    if isinstance(exc, EngineClosed):
        return HTTPError(503, "the server is shutting down", {"Connection": "close"})
    if isinstance(exc, ModelLoadError):
        return HTTPError(503, str(exc), {"Retry-After": "5"})
    if isinstance(exc, Rejected):
        return HTTPError(503, str(exc))
    if isinstance(exc, ChronoserveError):
        return HTTPError(500, str(exc))
    logger.exception("unexpected error", exc_info=exc)
    return HTTPError(500, f"internal error: {type(exc).__name__}")


def _prepare(runtime: ServerRuntime, item: ForecastIn, prefix: list[str | int]) -> Prepared:
    if not runtime.allowed(item.model_name):
        extras = ", ".join(runtime.settings.models) or "none"
        raise _invalid(
            [*prefix, "model_name"],
            f"model {item.model_name!r} is not served here: use a catalog name (GET /models) "
            f"or one the operator allowed at start-up ({extras})",
            "unknown_model",
        )
    assert runtime.store is not None
    return build_request(item, runtime.store)


async def _forecast_one(runtime: ServerRuntime, item: ForecastIn, prefix: list[str | int]) -> dict[str, Any]:
    """Forecast one validated item; raises :class:`HTTPError` for every failure."""
    if "model_name" not in item.model_fields_set:  # the request names no model: the server's default
        item = item.model_copy(update={"model_name": runtime.settings.default_model})
    engine = runtime.engine
    if engine is None or runtime.draining:
        raise HTTPError(503, "the server is shutting down", {"Connection": "close"})
    try:
        prepared = _prepare(runtime, item, prefix)
        result = await engine.forecast(prepared.request)
    except HTTPError:
        raise
    except asyncio.CancelledError:
        raise
    except UnknownModel as exc:
        raise _invalid([*prefix, "model_name"], exc.message, exc.reason) from None
    except Exception as exc:
        raise error_for(exc, item, prefix) from None
    spec = engine.spec(result.model)
    return result_body(result, prepared, spec.family if spec is not None else "unknown")


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
        if error.status == 422:
            # Every 422 is counted here, whichever layer found the problem (the engine's own
            # invalid-input events are not counted again: see ServerMetrics.request_rejected).
            kind = error.detail[0].get("type", "") if isinstance(error.detail, list) and error.detail else ""
            runtime.metrics.rejected.labels("body_too_large" if kind == "body_too_large" else "invalid_request").inc()
    return ORJSONResponse(error.body(), status_code=error.status, headers=error.headers)


def _ok(runtime: ServerRuntime, route: str, body: Any) -> ORJSONResponse:
    if runtime.metrics is not None:
        runtime.metrics.http.labels(route, "200").inc()
    return ORJSONResponse(body)


async def _parse(request: Request, runtime: ServerRuntime) -> Any:
    raw = await _read_body(request, runtime.settings.max_body_bytes)
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise _invalid([], f"not valid JSON: {exc}", "json_invalid") from None


async def _post(
    request: Request,
    route: str,
    schema: type[ModelT],
    work: Callable[[ServerRuntime, ModelT], Awaitable[Any]],
) -> Response:
    """Read, parse and validate a JSON body, run ``work`` unless the client leaves, answer."""
    runtime = _runtime(request)
    try:
        data = await _parse(request, runtime)
        try:
            parsed = schema.model_validate(data)
        except ValidationError as exc:
            raise _validation_error(exc, []) from None
        body = await _unless_disconnected(request, work(runtime, parsed))
    except HTTPError as error:
        return _json_error(runtime, route, error)
    except _ClientGone:
        return Response(status_code=499)
    return _ok(runtime, route, body)


async def forecast(request: Request) -> Response:
    return await _post(request, "/forecast", ForecastIn, lambda runtime, item: _forecast_one(runtime, item, []))


async def _forecast_all(runtime: ServerRuntime, batch: BatchIn) -> dict[str, Any]:
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
        for name, entry in sorted(engine.resident().items()):
            resident.append(
                {
                    "name": name,
                    "family": entry.spec.family,
                    "random_weights": entry.spec.random_weights,
                    "status": entry.status,
                    "bytes": entry.nbytes,
                    "load_seconds": entry.load_seconds,
                    "loaded_at": _iso_wall(engine, entry.load_finished),
                    "last_used": _iso_wall(engine, entry.last_used) if entry.status == "ready" else None,
                    "running_batches": entry.running,
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
        "default": runtime.settings.default_model,
        "allowed_extra": list(runtime.settings.models),
        "resident": resident,
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


async def readyz(request: Request) -> Response:
    runtime = _runtime(request)
    if runtime.draining:
        return ORJSONResponse({"status": "draining"}, status_code=503)
    if not runtime.ready:
        status = {"status": "warming_up"}
        if runtime.warmup_error:
            status["error"] = runtime.warmup_error
        return ORJSONResponse(status, status_code=503)
    return ORJSONResponse({"status": "ready"})


async def metrics(request: Request) -> Response:
    runtime = _runtime(request)
    assert runtime.metrics is not None
    from prometheus_client import CONTENT_TYPE_LATEST

    return Response(runtime.metrics.render(), media_type=CONTENT_TYPE_LATEST)


async def openapi(request: Request) -> Response:
    return ORJSONResponse(openapi_document(__version__))


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
    """Run one tiny forecast per model to serve, so imports and loads happen before ready."""
    assert runtime.engine is not None
    names = list(dict.fromkeys([runtime.settings.default_model, *runtime.settings.models]))
    for name in names:
        try:
            await runtime.engine.warm(name)
        except ChronoserveError as exc:
            runtime.warmup_error = f"{name}: {exc}"
            logger.error("warm-up of %s failed: %s", name, exc)
            return
    runtime.ready = True
    logger.info("ready: %s", ", ".join(names))


def create_app(
    settings: ServerSettings | None = None,
    *,
    loader: ModelLoader | None = None,
    store: SeriesStore | None = None,
    engine_options: Mapping[str, Any] | None = None,
) -> Starlette:
    """The ASGI app. ``loader``, ``store`` and ``engine_options`` are for tests and embedding."""
    runtime = ServerRuntime(settings or ServerSettings(), loader=loader, store=store)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[State]:
        s = runtime.settings
        runtime.loop = asyncio.get_running_loop()
        if runtime.store is None:
            runtime.store = SeriesStore.from_dir(s.data) if s.data else SeriesStore.embedded()
        runtime.metrics = ServerMetrics(lambda: runtime.engine)
        runtime.engine = Engine(
            s.policy,
            policy_options=s.policy_options,
            loader=runtime.loader,
            workers=s.workers,
            torch_threads=s.torch_threads,
            max_queue=s.max_queue,
            device=s.device,
            dtype=s.dtype,
            observers=[runtime.metrics],
            **dict(engine_options or {}),
        )
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
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.runtime = runtime
    return app
