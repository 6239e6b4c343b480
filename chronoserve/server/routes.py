"""The routes: ``POST /forecast`` and ``/forecast/batch``, and the ``GET`` endpoints.

Handlers stay thin: :func:`~chronoserve.server.post.post` reads and validates the body, the
shared :func:`~chronoserve.server.handler.forecast_item` takes one item through the engine,
and the ``GET`` routes read the engine's snapshots (``stats()``, ``resident()``,
``load_failures()``), never its internals.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from chronoserve import __version__
from chronoserve.engine import Engine
from chronoserve.limits import MAX_ANSWER_VALUES, answer_values
from chronoserve.models.catalog import CATALOG, DEFAULT_MODEL
from chronoserve.profile import Profile

from .access import note, request_id
from .deadlines import header_defaults, with_defaults
from .errors import HTTPError, invalid
from .handler import forecast_item
from .manage import ROUTES as MANAGE_ROUTES
from .post import ORJSONResponse, ok, post, runtime_of
from .runtime import ServerRuntime, load_failures
from .schemas import BatchIn, ForecastIn, openapi_document
from .v2 import ROUTES as V2_ROUTES


async def _forecast_one(runtime: ServerRuntime, item: ForecastIn, prefix: list[str | int]) -> dict[str, Any]:
    """Forecast one validated item; raises :class:`HTTPError` for every failure."""
    engine = runtime.forecaster
    if engine is None or runtime.draining:
        raise HTTPError(503, "the server is shutting down", {"Connection": "close"})
    assert runtime.store is not None
    # With the engine here, the models HTTP may name are checked here; a front end's engine
    # process (or replica) checks them itself (EngineServer), where management may add some.
    allowed = runtime.allowed if runtime.engine is not None else None
    return await forecast_item(
        engine, runtime.store, item, prefix, default_model=runtime.default_model, allowed=allowed
    )


async def forecast(request: Request) -> Response:
    async def work(runtime: ServerRuntime, item: ForecastIn) -> dict[str, Any]:
        deadline, priority = header_defaults(request.headers, runtime.settings.default_deadline_ms)
        if item.request_id is None:  # the request's id is its X-Request-ID (taken or made: access.py)
            item = item.model_copy(update={"request_id": request_id(request.scope)})
        note(request.scope, model=item.model_name if "model_name" in item.model_fields_set else None)
        answer = await _forecast_one(runtime, with_defaults(item, deadline, priority), [])
        note(request.scope, answer)
        return answer

    return await post(request, "/forecast", ForecastIn, work)


async def _forecast_all(
    runtime: ServerRuntime, batch: BatchIn, defaults: tuple[float | None, int | None]
) -> dict[str, Any]:
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
            item = with_defaults(item, *defaults)
            return {"status": 200, "result": await _forecast_one(runtime, item, ["requests", i])}
        except HTTPError as error:
            return {"status": error.status, "error": error.body()}

    return {"results": list(await asyncio.gather(*(one(i, item) for i, item in enumerate(batch.requests))))}


async def forecast_batch(request: Request) -> Response:
    async def work(runtime: ServerRuntime, batch: BatchIn) -> dict[str, Any]:
        defaults = header_defaults(request.headers, runtime.settings.default_deadline_ms)
        note(request.scope, items=len(batch.requests))
        return await _forecast_all(runtime, batch, defaults)

    return await post(request, "/forecast/batch", BatchIn, work)


def _iso_wall(engine: Engine, at: float | None) -> str | None:
    if at is None:
        return None
    wall = time.time() - (engine.clock.now() - at)
    return datetime.fromtimestamp(wall).astimezone().isoformat(timespec="seconds")


async def models(request: Request) -> Response:
    runtime = runtime_of(request)
    engine = runtime.engine
    profile = runtime.settings.engine.profile
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
                    "backend": info.backend,
                    "dtype": info.dtype,
                    "loaded_from": info.loaded_from,
                    "profile": profile.figures(name) if profile is not None else None,
                }
            )
    tiers = {} if engine is None else engine.tiers()
    stats = None if engine is None else engine.stats()
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
        "failed": load_failures(runtime),
        "tiers": {
            "models": dict(sorted(tiers.items())),
            "host_models": [] if stats is None else list(stats.host_models),
            "host_bytes": 0 if stats is None else stats.host_bytes,
            "host_budget": 0 if stats is None else stats.host_budget,
            "import_seconds": None if stats is None else stats.import_seconds,
        },
        "catalog": catalog,
        "profile": None if profile is None else _profile_summary(profile),
        "policy": dict(stats.policy) if stats is not None else None,
        "note": "random/NAME models have the published architecture and random weights: "
        "their timings are real, their forecasts are not. chronos-2-pm25 (trained_here) is a small "
        "Chronos-2 trained by chronoserve on Beijing PM2.5 2013-03 to 2016-06: see its description.",
    }
    return ok(runtime, "/models", body)


def _profile_summary(profile: Profile) -> dict[str, Any]:
    """The loaded cost table (``serve --profile``): where it came from and every model's rows."""
    return {
        "path": profile.path,
        "slo_p95_ms": profile.settings.get("slo_p95_ms"),
        "max_wait_ms": profile.settings.get("max_wait_ms"),
        "models": {model: profile.figures(model) for model in profile.models},
    }


async def series(request: Request) -> Response:
    runtime = runtime_of(request)
    assert runtime.store is not None
    return ok(runtime, "/series", {"series": [info.to_dict() for info in runtime.store.infos()]})


async def healthz(request: Request) -> Response:
    return ORJSONResponse({"status": "alive"})


async def readyz(request: Request) -> Response:
    """200 once the default model serves (extras that failed are listed); 503 while warming or draining."""
    runtime = runtime_of(request)
    if runtime.draining:
        return ORJSONResponse({"status": "draining"}, status_code=503)
    failed = load_failures(runtime, (runtime.default_model, *runtime.extra_models))
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
    runtime = runtime_of(request)
    assert runtime.metrics is not None
    from prometheus_client import CONTENT_TYPE_LATEST

    return Response(runtime.metrics.render(), media_type=CONTENT_TYPE_LATEST)


async def openapi(request: Request) -> Response:
    return ORJSONResponse(openapi_document(__version__, runtime_of(request).default_model or DEFAULT_MODEL))


async def http_exception(request: Request, exc: Exception) -> Response:
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


ROUTES = [
    Route("/forecast", forecast, methods=["POST"]),
    Route("/forecast/batch", forecast_batch, methods=["POST"]),
    Route("/models", models, methods=["GET"]),
    Route("/series", series, methods=["GET"]),
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
    Route("/openapi.json", openapi, methods=["GET"]),
    Route("/docs", docs, methods=["GET"]),
    *MANAGE_ROUTES,
    *V2_ROUTES,
]
