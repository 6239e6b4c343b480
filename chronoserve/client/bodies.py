"""What the client sends: the JSON body of a forecast, checked before it goes, and batches in chunks.

:func:`forecast_body` builds one ``POST /forecast`` body (one item of ``/forecast/batch``) and
checks the bounds every server holds (:mod:`chronoserve.limits`); :func:`_chunks` splits a
batch under the server's item, body and answer limits.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from ..limits import (
    MAX_ANSWER_VALUES,
    MAX_COVARIATES,
    MAX_HORIZON,
    MAX_PRIORITY,
    MAX_QUANTILE_LEVELS,
    MAX_SERIES_POINTS,
    answer_values,
    check_deadline_ms,
    check_int,
    check_model_name,
    check_time_axis,
)

MAX_BATCH_ITEMS = 1000
"""The most requests one ``POST /forecast/batch`` may carry (the server's limit)."""
DEFAULT_MAX_BODY_BYTES = 1 << 20
"""The server's default body limit; batches are split to stay under it."""
DEFAULT_QUANTILES = (0.1, 0.5, 0.9)

ArrayLike = Sequence[float | None] | npt.NDArray[Any]


def _values(name: str, values: ArrayLike) -> list[float | None]:
    """A 1-D series as JSON numbers; NaN (and None) become null."""
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: expected numbers, got {exc}") from None
    if array.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D series, got shape {array.shape}")
    if np.isinf(array).any():
        raise ValueError(f"{name}: infinite values cannot be sent (use NaN for a gap)")
    return [None if math.isnan(v) else v for v in array.tolist()]


def _covariates(name: str, values: Mapping[str, ArrayLike] | None) -> dict[str, list[float | None]] | None:
    if values is None:
        return None
    return {str(k): _values(f"{name}.{k}", v) for k, v in values.items()}


def _iso(value: datetime | str) -> str:
    if isinstance(value, str):
        return value
    # datetime.isoformat, not pandas.Timestamp.isoformat: microseconds at most, as the server parses.
    return datetime.isoformat(value)


def forecast_body(
    *,
    city: str | None = None,
    target: ArrayLike | None = None,
    model_name: str | None = None,
    horizon_hours: int = 24,
    context_hours: int | None = None,
    quantile_levels: Sequence[float] = DEFAULT_QUANTILES,
    use_covariates: bool = False,
    known_future_covariates: bool = False,
    end: datetime | str | None = None,
    start: datetime | str | None = None,
    freq_hours: float | None = None,
    past_covariates: Mapping[str, ArrayLike] | None = None,
    future_covariates: Mapping[str, ArrayLike] | None = None,
    request_id: str | None = None,
    seed: int = 0,
    deadline_ms: float | None = None,
    priority: int | None = None,
) -> dict[str, Any]:
    """The JSON body of ``POST /forecast`` (one item of ``/forecast/batch``).

    Fields left at None are left out, so the server's defaults apply (``model_name``: the
    server's default model). The bounds that hold for every model and server
    (:mod:`chronoserve.limits`: horizon, name, time axis, counts) are checked here, before
    anything is sent (``ValueError`` naming the field); the server checks the rest and answers
    422 naming the field.
    """
    check_int("horizon_hours", horizon_hours, 1, MAX_HORIZON)
    if context_hours is not None:
        check_int("context_hours", context_hours, 1, MAX_SERIES_POINTS)
    if model_name is not None:
        model_name = check_model_name(model_name, "model_name")
    if len(quantile_levels) > MAX_QUANTILE_LEVELS:
        raise ValueError(f"quantile_levels: {len(quantile_levels)} levels; the limit is {MAX_QUANTILE_LEVELS}")
    for name, covariates in (("past_covariates", past_covariates), ("future_covariates", future_covariates)):
        if covariates is not None and len(covariates) > MAX_COVARIATES:
            raise ValueError(f"{name}: {len(covariates)} covariates; the limit is {MAX_COVARIATES}")
    body: dict[str, Any] = {
        "horizon_hours": horizon_hours,
        "quantile_levels": [float(q) for q in quantile_levels],
        "seed": seed,
    }
    if deadline_ms is not None:
        body["deadline_ms"] = check_deadline_ms("deadline_ms", deadline_ms)
    if priority is not None:
        body["priority"] = check_int("priority", priority, 1, MAX_PRIORITY)
    if request_id is not None:
        body["request_id"] = request_id
    if model_name is not None:
        body["model_name"] = model_name
    if city is not None:
        body["city"] = city
    if target is not None:
        body["target"] = _values("target", target)
    if context_hours is not None:
        body["context_hours"] = context_hours
    if use_covariates:
        body["use_covariates"] = True
    if known_future_covariates:
        body["known_future_covariates"] = True
    if end is not None:
        body["end"] = _iso(end)
    if start is not None:
        body["start"] = _iso(start)
        if "target" in body:  # the answer's time axis must exist (no step past year 9999)
            try:
                first = datetime.fromisoformat(body["start"])
            except ValueError:
                raise ValueError(f"start: not an ISO 8601 date-time: {body['start']!r}") from None
            check_time_axis(first, 1.0 if freq_hours is None else freq_hours, len(body["target"]), horizon_hours)
    if freq_hours is not None:
        body["freq_hours"] = freq_hours
    past = _covariates("past_covariates", past_covariates)
    if past is not None:
        body["past_covariates"] = past
    future = _covariates("future_covariates", future_covariates)
    if future is not None:
        body["future_covariates"] = future
    return body


def _answer_size(body: Mapping[str, Any]) -> int:
    """The numbers the answer to ``body`` holds (0 where its fields are not what the server takes)."""
    horizon, levels = body.get("horizon_hours", 24), body.get("quantile_levels", DEFAULT_QUANTILES)
    if isinstance(horizon, int) and isinstance(levels, Sequence):
        return answer_values(horizon, len(levels))
    return 0


def _dumps(body: Any) -> bytes:
    return orjson.dumps(body)


def _chunks(
    indices: Sequence[int], encoded: Sequence[bytes], values: Sequence[int], max_items: int, max_bytes: int
) -> Iterator[list[int]]:
    """Split ``indices`` into runs of at most ``max_items`` whose batch body stays under ``max_bytes``
    and whose answer stays under :data:`~chronoserve.limits.MAX_ANSWER_VALUES` numbers.

    An item too large on its own goes alone (the server then says what it thinks of it).
    """
    chunk: list[int] = []
    size = len(b'{"requests":[]}')
    total = 0
    for i in indices:
        extra = len(encoded[i]) + (1 if chunk else 0)
        if chunk and (len(chunk) >= max_items or size + extra > max_bytes or total + values[i] > MAX_ANSWER_VALUES):
            yield chunk
            chunk, size, total, extra = [], len(b'{"requests":[]}'), 0, len(encoded[i])
        chunk.append(i)
        size += extra
        total += values[i]
    if chunk:
        yield chunk


def _batch_content(encoded: Sequence[bytes], chunk: Sequence[int]) -> bytes:
    return b'{"requests":[' + b",".join(encoded[i] for i in chunk) + b"]}"
