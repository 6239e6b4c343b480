"""What crosses between a front-end process and the engine process: msgpack frames.

``chronoserve serve --http-workers N`` parses HTTP in N front-end processes and runs one
engine in another (:mod:`.frontend`, :mod:`.engine_process`); they speak over a ZeroMQ
``ipc://`` socket, as vLLM's API servers speak to its engine core. Every frame is one msgpack
array. NumPy arrays travel as raw bytes (an msgpack extension type), not as lists of floats.

From a front end (DEALER) to the engine (ROUTER)::

    [FORECAST, id, request]          a ForecastRequest as a dict (:func:`pack_request`)
    [CANCEL, id]                     the client left: drop the request if it has not run
    [HTTP, id, method, path, query, headers, body]   any other route, run by the engine's app
    [COUNTS, 0, [[route, status, n]], [[reason, n]], name, cpu]   a front end's HTTP counts
                                     and CPU seconds, for /metrics
    [VIEW, id]                       the engine's readiness, for placement (``--engines K``)

From the engine back::

    [id, OK, result]                 a ForecastResult as a dict (:func:`pack_result`)
    [id, ERROR, pickled error]       a ChronoserveError, rebuilt as the same class
    [id, HTTP, status, headers, body]
    [id, OK, readiness]              a :class:`~chronoserve.placement.Readiness` as a dict

Errors are pickled: both ends are chronoserve processes of one server, on one machine, and
the socket lives in a directory only this user can open (see :mod:`.supervisor`).
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping, Sequence
from typing import Any

import msgpack
import numpy as np

from chronoserve.errors import ChronoserveError, InvalidRequest
from chronoserve.request import ForecastRequest, ForecastResult, Timings

FORECAST, CANCEL, HTTP, COUNTS, VIEW = 0, 1, 2, 3, 4
OK, ERROR = 0, 1

_ARRAY = 1  # the msgpack extension code of a NumPy array


def _default(value: object) -> object:
    if isinstance(value, np.ndarray):
        array = np.ascontiguousarray(value)
        header = msgpack.packb([array.dtype.str, list(array.shape)])
        return msgpack.ExtType(_ARRAY, len(header).to_bytes(2, "little") + header + array.tobytes())
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot send a {type(value).__name__}")


def _ext_hook(code: int, data: bytes) -> object:
    if code != _ARRAY:
        return msgpack.ExtType(code, data)
    size = int.from_bytes(data[:2], "little")
    dtype, shape = msgpack.unpackb(data[2 : 2 + size])
    return np.frombuffer(data[2 + size :], dtype=np.dtype(dtype)).reshape(shape)


def dumps(frame: Sequence[object]) -> bytes:
    """One frame as bytes."""
    packed: bytes = msgpack.packb(frame, default=_default, use_bin_type=True)
    return packed


def loads(data: bytes) -> Any:
    """The frame of :func:`dumps` (arrays come back read-only, over the message's buffer)."""
    return msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False)


def _series(field: str, values: object) -> object:
    """An array (sent as raw bytes): a list of 240 floats converted in C, not element by element
    in Python, as the engine converts it (``request._as_series``: float64, then its checks)."""
    if values is None or isinstance(values, np.ndarray):
        return values
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidRequest(field, "must be a sequence of numbers") from None


def _covariates(field: str, values: Mapping[str, object] | None) -> dict[str, object] | None:
    if values is None:
        return None
    if not isinstance(values, Mapping):
        raise InvalidRequest(field, "must be a mapping from covariate names to series")
    return {str(name): _series(f"{field}.{name}", v) for name, v in values.items()}


def pack_request(request: ForecastRequest) -> dict[str, object]:
    """A request as msgpack-ready values. Checks only what the transport needs (numbers are
    numbers); the engine checks everything else, as it does for a request of its own process."""
    return {
        "model": request.model,
        "target": _series("target", request.target),
        "horizon": request.horizon,
        "request_id": request.request_id,
        "context_length": request.context_length,
        "quantile_levels": [float(q) for q in request.quantile_levels],
        "past_covariates": _covariates("past_covariates", request.past_covariates),
        "future_covariates": _covariates("future_covariates", request.future_covariates),
        "seed": request.seed,
        "deadline": request.deadline,
        "priority": request.priority,
        "lower_bound": request.lower_bound,
    }


def unpack_request(values: Mapping[str, Any]) -> ForecastRequest:
    return ForecastRequest(
        model=values["model"],
        target=values["target"],
        horizon=values["horizon"],
        request_id=values["request_id"],
        context_length=values["context_length"],
        quantile_levels=tuple(values["quantile_levels"]),
        past_covariates=values["past_covariates"],
        future_covariates=values["future_covariates"],
        seed=values["seed"],
        deadline=values["deadline"],
        priority=values["priority"],
        lower_bound=values.get("lower_bound"),
    )


def pack_result(result: ForecastResult) -> list[object]:
    t = result.timings
    return [
        result.request_id,
        result.model,
        result.family,
        result.random_weights,
        result.policy,
        list(result.quantile_levels),
        result.quantiles,
        result.median,
        result.batch_size,
        result.cold_start,
        [t.queue, t.load, t.inference, t.total],
        result.context_used,
        result.lower_bound,
        result.clipped,
    ]


def unpack_result(values: Sequence[Any]) -> ForecastResult:
    (
        request_id,
        model,
        family,
        random_weights,
        policy,
        levels,
        quantiles,
        median,
        batch,
        cold,
        t,
        used,
        bound,
        clipped,
    ) = values
    return ForecastResult(
        request_id=request_id,
        model=model,
        family=family,
        random_weights=random_weights,
        policy=policy,
        quantile_levels=tuple(levels),
        quantiles=quantiles,
        median=median,
        batch_size=batch,
        cold_start=cold,
        timings=Timings(*t),
        context_used=used,
        lower_bound=bound,
        clipped=clipped,
    )


def pack_error(error: BaseException) -> bytes:
    """A chronoserve error as it is; anything else as the generic error its message makes."""
    if not isinstance(error, ChronoserveError):
        error = ChronoserveError(f"internal error: {type(error).__name__}")
    return pickle.dumps(error)


def unpack_error(data: bytes) -> ChronoserveError:
    error = pickle.loads(data)
    if not isinstance(error, ChronoserveError):  # never sent by the engine; refuse to raise it
        return ChronoserveError("the engine answered with something that is not an error")
    return error
