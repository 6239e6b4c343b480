"""The Open Inference Protocol (KServe v2; what Triton, KServe, MLServer and TorchServe speak), REST.

Beside chronoserve's own API and through the same engine, batching and limits:

- ``GET /v2/health/live``, ``/v2/health/ready``: the process is up; the default model serves.
- ``GET /v2``: the server's metadata.
- ``GET /v2/models/{name}[/versions/{v}]``: the model's metadata (its inputs and outputs);
  ``.../ready``: 200 when the model can serve here (models load on demand: a model HTTP may name
  is ready once the server is).
- ``POST /v2/models/{name}[/versions/{v}]/infer``: forecasts.

An inference takes the history as the input ``history`` (``FP32``, or any float or integer type;
shape ``[batch, length]``, or ``[length]`` for one series): one series a row, NaN (in JSON also
null) for a gap, rows
of different lengths padded with NaN before their first value. Parameters (of the request, or of
the ``history`` input): ``horizon`` (steps, default 24), ``quantile_levels`` (a comma-separated
string; or the input ``quantile_levels``, ``FP32 [Q]``), ``lower_bound`` (a number), ``seed``.
Covariates (Chronos-2): inputs ``past_covariate.<name>`` ``[batch, length]`` (aligned with
``history``) and ``future_covariate.<name>`` ``[batch, horizon]``. It answers the outputs ``median``
``FP32 [batch, horizon]``, ``quantiles`` ``FP32 [batch, horizon, Q]`` and ``quantile_levels``
``FP32 [Q]`` (all, or those the request names), as JSON or, with the binary data extension
(``binary_data``, ``binary_data_output``; what ``tritonclient`` asks for by default), as raw
little-endian bytes after the JSON header (``Inference-Header-Content-Length``). Each row is one
engine request, batched with every other request for the model. Errors are ``{"error": ...}``:
400 for a bad request, the engine's status otherwise (429, 503 with ``Retry-After``, ...).
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from chronoserve import __version__
from chronoserve.errors import ChronoserveError, InvalidRequest
from chronoserve.limits import MAX_HORIZON, MAX_QUANTILE_LEVELS, MAX_SERIES_POINTS
from chronoserve.request import DEFAULT_QUANTILES, ForecastRequest, ForecastResult

from .access import note
from .body import ClientGone, read_body
from .errors import HTTPError, error_for
from .post import runtime_of
from .runtime import ServerRuntime
from .schemas import MAX_BATCH_ITEMS

HEADER_LENGTH = "inference-header-content-length"
HISTORY = "history"
PAST, FUTURE = "past_covariate.", "future_covariate."
OUTPUTS = ("median", "quantiles", "quantile_levels")
#: Datatypes a numeric input may have, and their numpy types (binary data is little-endian).
_DTYPES: Mapping[str, str] = {
    "FP32": "<f4", "FP64": "<f8", "FP16": "<f2",
    "INT8": "<i1", "INT16": "<i2", "INT32": "<i4", "INT64": "<i8",
    "UINT8": "<u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8",
}  # fmt: skip
DEFAULT_HORIZON = 24


class ProtocolError(Exception):
    """A request the protocol cannot take: 400 ``{"error": ...}``."""


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps({"error": message}), status, headers=dict(headers or {}), media_type="application/json"
    )


def _json(body: Any) -> Response:
    return Response(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")


# -- health and metadata ---------------------------------------------------------------------


async def live(request: Request) -> Response:
    return _json({"live": True})


async def ready(request: Request) -> Response:
    runtime = runtime_of(request)
    ok = runtime.ready and not runtime.draining
    return _json({"ready": ok}) if ok else _error(503, "not ready: warming up or draining")


async def server_metadata(request: Request) -> Response:
    return _json({"name": "chronoserve", "version": __version__, "extensions": ["binary_tensor_data"]})


def _split(path: str) -> tuple[str, str | None, str]:
    """``/v2/models/{name}[/versions/{v}][/ready|/infer]`` -> (name, version, action)."""
    rest = path[len("/v2/models/") :]
    action = ""
    for suffix in ("/ready", "/infer"):
        if rest.endswith(suffix):
            rest, action = rest[: -len(suffix)], suffix[1:]
            break
    version = None
    head, sep, tail = rest.rpartition("/versions/")
    if sep and tail and "/" not in tail:
        rest, version = head, tail
    return rest, version, action


async def _model(runtime: ServerRuntime, raw: str) -> tuple[str, Any]:
    """The canonical name and spec of a model HTTP may name here (else an HTTPError: 404)."""
    forecaster = runtime.forecaster
    assert forecaster is not None
    try:
        name = forecaster.canonical(raw)
        if runtime.engine is not None and not runtime.allowed(name):
            raise InvalidRequest("model", f"model {name!r} is not served here")
        loader = runtime.engine.loader if runtime.engine is not None else runtime.loader
        if loader is None:
            return name, None
        spec = await asyncio.to_thread(loader.resolve, name)
    except ChronoserveError as exc:
        raise HTTPError(404, str(exc)) from None
    return name, spec


async def infer_route(request: Request) -> Response:
    """``POST /v2/models/{name}[/versions/{v}]/infer`` alone (a front end's: the rest is its engine's)."""
    name, version, _ = _split(request.url.path)
    return await infer(request, runtime_of(request), name, version)


async def model_route(request: Request) -> Response:
    """Model metadata, readiness and inference, by the path (model names may hold slashes)."""
    runtime = runtime_of(request)
    name, version, action = _split(request.url.path)
    if action == "infer":
        if request.method != "POST":
            return _error(405, "infer takes POST")
        return await infer(request, runtime, name, version)
    if request.method != "GET":
        return _error(405, f"{request.url.path} takes GET")
    try:
        canonical, spec = await _model(runtime, name)
    except HTTPError as exc:
        return _error(exc.status, str(exc.detail))
    if action == "ready":
        ok = runtime.ready and not runtime.draining
        return _json({"name": canonical, "ready": ok}) if ok else _error(503, "not ready: warming up or draining")
    length = -1 if spec is None else int(spec.context_length)
    horizon = -1 if spec is None else int(spec.max_horizon)
    return _json(
        {
            "name": canonical,
            "versions": ["1"],
            "platform": f"chronoserve/{getattr(spec, 'family', 'chronos')}",
            "inputs": [
                {"name": HISTORY, "datatype": "FP32", "shape": [-1, -1]},
                {"name": "quantile_levels", "datatype": "FP32", "shape": [-1], "optional": True},
            ],
            "outputs": [
                {"name": "median", "datatype": "FP32", "shape": [-1, -1]},
                {"name": "quantiles", "datatype": "FP32", "shape": [-1, -1, -1]},
                {"name": "quantile_levels", "datatype": "FP32", "shape": [-1]},
            ],
            "parameters": {
                "context_length": length,
                "max_horizon": horizon,
                "supports_covariates": bool(getattr(spec, "supports_covariates", False)),
                "random_weights": bool(getattr(spec, "random_weights", False)),
            },
        }
    )


# -- inference -------------------------------------------------------------------------------


def _parse_body(raw: bytes, header_length: str | None) -> tuple[dict[str, Any], memoryview]:
    """The JSON header and the binary tensor data after it (the binary data extension)."""
    if header_length is None:
        json_part, binary = raw, memoryview(b"")
    else:
        try:
            n = int(header_length)
        except ValueError:
            raise ProtocolError(f"Inference-Header-Content-Length: not a length: {header_length[:40]!r}") from None
        if not 0 <= n <= len(raw):
            raise ProtocolError(f"Inference-Header-Content-Length {n} is beyond the body ({len(raw)} bytes)")
        json_part, binary = raw[:n], memoryview(raw)[n:]
    try:
        body = json.loads(json_part)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"the request is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ProtocolError("the request must be a JSON object")
    return body, binary


def _shape(item: Mapping[str, Any], name: str) -> list[int]:
    shape = item.get("shape")
    if not isinstance(shape, list) or not shape or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise ProtocolError(f"input {name!r}: shape must be a list of sizes")
    if len(shape) > 3 or math.prod(shape) > MAX_SERIES_POINTS:
        raise ProtocolError(f"input {name!r}: shape {shape} is too large (at most {MAX_SERIES_POINTS:,} values)")
    return shape


def _tensors(body: Mapping[str, Any], binary: memoryview) -> dict[str, np.ndarray]:
    """Every input as an array of its shape (bounds checked before anything is converted)."""
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise ProtocolError("inputs: a list of tensors is required")
    if len(inputs) > 2 * 1024 + 2:
        raise ProtocolError("inputs: too many")
    out: dict[str, np.ndarray] = {}
    offset = 0
    for item in inputs:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ProtocolError("inputs: each needs a name")
        name = item["name"]
        shape = _shape(item, name)
        dtype = _DTYPES.get(str(item.get("datatype")))
        if dtype is None:
            raise ProtocolError(
                f"input {name!r}: datatype {item.get('datatype')!r} is not numeric ({', '.join(_DTYPES)})"
            )
        count = math.prod(shape)
        size = (item.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size != count * np.dtype(dtype).itemsize or offset + size > len(binary):
                raise ProtocolError(
                    f"input {name!r}: binary_data_size {size!r} does not match shape {shape} of {item['datatype']}"
                )
            array = np.frombuffer(binary[offset : offset + size], dtype=dtype)
            offset += size
        else:
            data = item.get("data")
            if not isinstance(data, list):
                raise ProtocolError(f"input {name!r}: data (a flat or nested list) or binary data is required")
            try:
                array = np.asarray(data, dtype=np.float64).reshape(-1)
            except (TypeError, ValueError):
                raise ProtocolError(f"input {name!r}: data must be numbers (NaN or null for a gap)") from None
        if array.size != count:
            raise ProtocolError(f"input {name!r}: {array.size} values for shape {shape}")
        out[name] = array.astype(np.float32).reshape(shape)
    if offset != len(binary):
        raise ProtocolError(f"{len(binary) - offset} bytes of binary data belong to no input")
    return out


def _parameters(body: Mapping[str, Any], history: Mapping[str, Any]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for source in (history.get("parameters"), body.get("parameters")):
        if isinstance(source, dict):
            merged.update(source)
    return merged


def _int(parameters: Mapping[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = parameters.get(key, default)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ProtocolError(f"parameter {key!r}: an integer in [{low}, {high}], got {value!r}")
    return value


def _levels(parameters: Mapping[str, Any], tensors: Mapping[str, np.ndarray]) -> tuple[float, ...]:
    if "quantile_levels" in tensors:
        levels = [float(q) for q in tensors["quantile_levels"].reshape(-1)]
    elif "quantile_levels" in parameters:
        text = parameters["quantile_levels"]
        try:
            levels = [float(q) for q in str(text).split(",") if q.strip()]
        except ValueError:
            raise ProtocolError(f"parameter 'quantile_levels': comma-separated numbers, got {text!r}") from None
    else:
        return DEFAULT_QUANTILES
    if not 1 <= len(levels) <= MAX_QUANTILE_LEVELS:
        raise ProtocolError(f"quantile_levels: 1 to {MAX_QUANTILE_LEVELS} levels")
    return tuple(levels)


def build_requests(model: str, body: Mapping[str, Any], tensors: Mapping[str, np.ndarray]) -> list[ForecastRequest]:
    """One engine request per row of ``history``."""
    history_item = next((i for i in body["inputs"] if i.get("name") == HISTORY), None)
    if history_item is None:
        raise ProtocolError(f"input {HISTORY!r} is required (FP32 [batch, length], NaN for a gap)")
    history = tensors[HISTORY]
    rows = history if history.ndim == 2 else history.reshape(1, -1)
    if history.ndim not in (1, 2) or rows.shape[0] == 0 or rows.shape[1] == 0:
        raise ProtocolError(f"input {HISTORY!r}: shape [batch, length] or [length], got {list(history.shape)}")
    if rows.shape[0] > MAX_BATCH_ITEMS:
        raise ProtocolError(f"input {HISTORY!r}: at most {MAX_BATCH_ITEMS} series in one request")
    parameters = _parameters(body, history_item)
    horizon = _int(parameters, "horizon", DEFAULT_HORIZON, 1, MAX_HORIZON)
    seed = _int(parameters, "seed", 0, 0, 2**63 - 1)
    bound = parameters.get("lower_bound")
    levels = _levels(parameters, tensors)
    past: dict[str, np.ndarray] = {}
    future: dict[str, np.ndarray] = {}
    for name, array in tensors.items():
        if name in (HISTORY, "quantile_levels"):
            continue
        if name.startswith(PAST) and len(name) > len(PAST):
            past[name[len(PAST) :]] = array.reshape(rows.shape[0], -1) if array.ndim > 1 else array.reshape(1, -1)
        elif name.startswith(FUTURE) and len(name) > len(FUTURE):
            future[name[len(FUTURE) :]] = array.reshape(rows.shape[0], -1) if array.ndim > 1 else array.reshape(1, -1)
        else:
            raise ProtocolError(f"input {name!r}: not an input of this model ({HISTORY}, {PAST}<name>, {FUTURE}<name>)")
    requests = []
    for i, row in enumerate(rows):
        observed = np.flatnonzero(~np.isnan(row))
        first = int(observed[0]) if observed.size else row.shape[0] - 1
        requests.append(
            ForecastRequest(
                model=model,
                target=row[first:],  # padding before a shorter row's first value is not its history
                horizon=horizon,
                quantile_levels=levels,
                past_covariates={k: v[i][first:] for k, v in past.items()} or None,
                future_covariates={k: v[i] for k, v in future.items()} or None,
                seed=seed,
                lower_bound=bound,
            )
        )
    return requests


def _outputs(
    body: Mapping[str, Any], results: Sequence[ForecastResult], levels: Sequence[float]
) -> tuple[list[dict[str, Any]], list[bytes]]:
    """The requested outputs (all by default), in JSON or as binary data."""
    arrays = {
        "median": np.stack([r.median for r in results]).astype("<f4"),
        "quantiles": np.stack([r.quantiles for r in results]).astype("<f4"),
        "quantile_levels": np.asarray(levels, dtype="<f4"),
    }
    wanted = body.get("outputs")
    everything_binary = bool((body.get("parameters") or {}).get("binary_data_output", False))
    if wanted is None:
        wanted = [{"name": n} for n in OUTPUTS]
    if not isinstance(wanted, list) or not all(isinstance(w, dict) and w.get("name") in OUTPUTS for w in wanted):
        raise ProtocolError(f"outputs: each names one of {', '.join(OUTPUTS)}")
    described, chunks = [], []
    for w in wanted:
        array = arrays[w["name"]]
        item: dict[str, Any] = {"name": w["name"], "datatype": "FP32", "shape": list(array.shape)}
        if bool((w.get("parameters") or {}).get("binary_data", everything_binary)):
            data = array.tobytes()
            item["parameters"] = {"binary_data_size": len(data)}
            chunks.append(data)
        else:
            item["data"] = array.reshape(-1)
        described.append(item)
    return described, chunks


async def infer(request: Request, runtime: ServerRuntime, name: str, version: str | None) -> Response:
    s = runtime.settings
    try:
        raw = await read_body(request, limit=s.max_body_bytes, timeout=s.body_timeout, readers=runtime.readers)
    except HTTPError as exc:
        return _error(exc.status, str(exc.detail), exc.headers)
    except ClientGone:
        return Response(status_code=499)
    try:
        canonical, _ = await _model(runtime, name)
        body, binary = _parse_body(raw, request.headers.get(HEADER_LENGTH))
        tensors = _tensors(body, binary)
        requests = build_requests(canonical, body, tensors)
    except ProtocolError as exc:
        return _error(400, str(exc))
    except HTTPError as exc:
        return _error(exc.status, str(exc.detail), exc.headers)
    note(request.scope, model=canonical, items=len(requests))
    forecaster = runtime.forecaster
    if forecaster is None or runtime.draining:
        return _error(503, "the server is shutting down", {"Connection": "close"})
    try:
        results = await asyncio.gather(*(forecaster.forecast(r) for r in requests))
    except ChronoserveError as exc:
        error = error_for(exc, [])
        if isinstance(error.detail, str):
            detail = error.detail
        else:  # the field at fault, then what is wrong with it
            detail = "; ".join(f"{d['loc'][-1]}: {d['msg']}" for d in error.detail)
        status = 400 if error.status == 422 else error.status
        return _error(status, detail, error.headers)
    try:
        outputs, chunks = _outputs(body, results, requests[0].quantile_levels)
    except ProtocolError as exc:
        return _error(400, str(exc))
    answer: dict[str, Any] = {"model_name": canonical, "outputs": outputs}
    if version is not None:
        answer["model_version"] = version
    if isinstance(body.get("id"), str):
        answer["id"] = body["id"]
    clipped = sum(r.clipped for r in results)
    if requests[0].lower_bound is not None:
        answer["parameters"] = {"lower_bound": requests[0].lower_bound, "clipped_values": clipped}
    header = orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return Response(header, media_type="application/json")
    return Response(
        header + b"".join(chunks),
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(header))},
    )


#: The front end's own route (:mod:`.frontend`); it forwards the others to its engine.
FRONTEND_ROUTES = [Route("/v2/models/{rest:path}/infer", infer_route, methods=["POST"])]
ROUTES = [
    Route("/v2", server_metadata, methods=["GET"]),
    Route("/v2/health/live", live, methods=["GET"]),
    Route("/v2/health/ready", ready, methods=["GET"]),
    Route("/v2/models/{rest:path}", model_route, methods=["GET", "POST"]),
]
