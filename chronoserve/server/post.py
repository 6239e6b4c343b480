"""One POST: read the body (bounded), parse it strictly, run the work unless the client leaves, answer.

Every answer is JSON (:class:`ORJSONResponse`), counted in the server's metrics by route and
status; every refusal is an :class:`~chronoserve.server.errors.HTTPError`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from .body import ClientGone, Interrupt, Interrupted, read_body
from .errors import HTTPError, validation_error
from .runtime import ServerRuntime

ModelT = TypeVar("ModelT", bound=BaseModel)


class ORJSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)


async def _unless_disconnected(request: Request, work: Awaitable[Any]) -> Any:
    """Await ``work``; if the client disconnects first, cancel it (the engine drops queued requests).

    The work runs in the handler's own task; one watcher task waits for the disconnect and
    interrupts it (:class:`~chronoserve.server.body.Interrupt`).
    """
    stop = Interrupt()
    watcher = asyncio.get_running_loop().create_task(_watch(request, stop))
    try:
        with stop:
            return await work
    except Interrupted:
        raise ClientGone from None
    finally:
        watcher.cancel()


async def _watch(request: Request, stop: Interrupt) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
    stop("disconnected")


def runtime_of(request: Request) -> ServerRuntime:
    runtime: ServerRuntime = request.state.runtime
    return runtime


def _json_error(runtime: ServerRuntime, route: str, error: HTTPError) -> ORJSONResponse:
    counts = runtime.counts
    if counts is not None:
        counts.http_answered(route, error.status)
        if error.status in (413, 415, 422):
            # Every refused body is counted here, whichever layer found the problem (the engine's own
            # invalid-input events are not counted again: see ServerMetrics.request_rejected).
            reason = {413: "body_too_large", 415: "unsupported_media_type"}.get(error.status, "invalid_request")
            counts.refused("too_costly" if error.kind == "too_costly" else reason)
    return ORJSONResponse(error.body(), status_code=error.status, headers=error.headers)


def ok(runtime: ServerRuntime, route: str, body: Any) -> ORJSONResponse:
    if runtime.counts is not None:
        runtime.counts.http_answered(route, 200)
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


async def _parse(request: Request, runtime: ServerRuntime, schema: type[ModelT], optional: bool = False) -> ModelT:
    """Read the body (bounded in size and time) and validate it strictly: no coercion, finite numbers.
    ``optional``: no body at all is the schema's defaults."""
    _check_media_type(request)
    s = runtime.settings
    raw = await read_body(request, limit=s.max_body_bytes, timeout=s.body_timeout, readers=runtime.readers)
    if optional and not raw.strip():
        raw = b"{}"
    try:
        return schema.model_validate_json(raw)
    except ValidationError as exc:
        raise validation_error(exc, []) from None


async def post(
    request: Request,
    route: str,
    schema: type[ModelT],
    work: Callable[[ServerRuntime, ModelT], Awaitable[Any]],
    *,
    optional: bool = False,
) -> Response:
    """Read, parse and validate a JSON body, run ``work`` unless the client leaves, answer.
    ``optional``: a request without a body is the schema's defaults."""
    runtime = runtime_of(request)
    try:
        parsed = await _parse(request, runtime, schema, optional)
        body = await _unless_disconnected(request, work(runtime, parsed))
    except HTTPError as error:
        return _json_error(runtime, route, error)
    except ClientGone:
        return Response(status_code=499)
    return ok(runtime, route, body)
