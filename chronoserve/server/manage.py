"""Model management at run time, like Triton's explicit model control: load, warm and unload.

``POST /models/{name}/load`` loads a model through the engine's normal path (one tiny forecast, as
the start-up warm-up does) and answers once it serves; ``.../warm`` loads it and runs one batch of
the shape given (``batch_size`` series of ``context_length`` points, ``horizon`` steps: ONNX
Runtime and torch plan per shape, so the first request of a new shape is slow), answering its
time; ``.../unload`` evicts it as the policy's eviction would (:meth:`Engine.unload`: 409 while
it is in use). ``GET /models`` lists what is resident, loading and failed.

They need an admin key (:mod:`.auth`: without one configured they are off, 403). The models they
may name: the catalog (hub models as ``--allow-hub`` allows), the operator's ``--models``, and
checkpoint directories under an operator's ``--model-root`` (symbolic links resolved: no way
out of a root); a directory loaded so is served by name afterwards, until it is unloaded.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from chronoserve.errors import ChronoserveError, ModelBusy
from chronoserve.limits import MAX_HORIZON
from chronoserve.request import ForecastRequest

from .errors import HTTPError, error_for, invalid
from .post import post
from .runtime import ServerRuntime

#: The largest warm-up batch (``batch_size``) and series (``context_length``).
MAX_WARM_BATCH = 256
MAX_WARM_CONTEXT = 16_384


class NoBody(BaseModel):
    """Load and unload take no body (an empty JSON object at most)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class WarmIn(BaseModel):
    """The shape to warm a model at: one batch of ``batch_size`` series."""

    model_config = ConfigDict(extra="forbid", strict=True)

    batch_size: int = Field(default=1, ge=1, le=MAX_WARM_BATCH)
    context_length: int = Field(default=512, ge=1, le=MAX_WARM_CONTEXT)
    horizon: int = Field(default=24, ge=1, le=MAX_HORIZON)


def _named(runtime: ServerRuntime, request: Request) -> str:
    """The canonical name in the path, if management may name it (else an HTTPError)."""
    assert runtime.engine is not None
    raw = request.path_params["name"]
    try:
        name = runtime.engine.canonical(raw)
    except ChronoserveError as exc:
        raise error_for(exc, [], "name") from None
    if runtime.allowed(name):
        return name
    path = Path(name)
    if path.is_absolute() or path.exists():
        roots = runtime.settings.model_roots
        if not roots:
            raise HTTPError(403, "loading checkpoint directories is off: the operator allows it with --model-root")
        real = path.resolve()
        if not any(real.is_relative_to(root) for root in roots):
            raise HTTPError(403, f"{name} is not under a model root the operator allows (--model-root)")
        if not real.is_dir():
            raise invalid(["name"], f"no such checkpoint directory: {name}", "unknown_model", status=404)
        return name
    raise invalid(
        ["name"], f"unknown model {name!r}: a catalog name, an operator's model, or a directory", "unknown_model", 404
    )


async def _load(runtime: ServerRuntime, name: str) -> dict[str, Any]:
    engine = runtime.engine
    assert engine is not None
    before = engine.tiers().get(name)
    started = time.perf_counter()
    try:
        result = await engine.warm(name)
    except ChronoserveError as exc:
        raise error_for(exc, [], "name") from None
    if not runtime.allowed(name):
        runtime.managed.add(name)
    return {
        "model": name,
        "status": "ready",
        "loaded_from": before or "disk",
        "cold_start": result.cold_start,
        "load_seconds": round(result.timings.load, 6),
        "seconds": round(time.perf_counter() - started, 6),
    }


async def load(request: Request) -> Response:
    async def work(runtime: ServerRuntime, _: NoBody) -> dict[str, Any]:
        return await _load(runtime, _named(runtime, request))

    return await post(request, "/models/{name}/load", NoBody, work, optional=True)


async def warm(request: Request) -> Response:
    async def work(runtime: ServerRuntime, shape: WarmIn) -> dict[str, Any]:
        name = _named(runtime, request)
        answer = await _load(runtime, name)
        engine = runtime.engine
        assert engine is not None
        series = [float(i % 24) for i in range(shape.context_length)]
        batch = [ForecastRequest(model=name, target=series, horizon=shape.horizon) for _ in range(shape.batch_size)]
        started = time.perf_counter()
        try:
            results = await engine.forecast_many(batch)
        except ChronoserveError as exc:
            raise error_for(exc, []) from None
        return {
            **answer,
            "warmed": shape.model_dump(),
            "largest_batch": max(r.batch_size for r in results),
            "inference_seconds": round(max(r.timings.inference for r in results), 6),
            "seconds": round(time.perf_counter() - started, 6),
        }

    return await post(request, "/models/{name}/warm", WarmIn, work, optional=True)


async def unload(request: Request) -> Response:
    async def work(runtime: ServerRuntime, _: NoBody) -> dict[str, Any]:
        name = _named(runtime, request)
        assert runtime.engine is not None
        try:
            unloaded = runtime.engine.unload(name)
        except ModelBusy as exc:
            raise HTTPError(409, str(exc), {"Retry-After": "1"}) from None
        runtime.managed.discard(name)
        return {"model": name, "unloaded": unloaded}

    return await post(request, "/models/{name}/unload", NoBody, work, optional=True)


ROUTES = [
    Route("/models/{name:path}/load", load, methods=["POST"]),
    Route("/models/{name:path}/warm", warm, methods=["POST"]),
    Route("/models/{name:path}/unload", unload, methods=["POST"]),
]
