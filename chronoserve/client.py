"""A Python client for the chronoserve HTTP API: :class:`Client` (sync) and :class:`AsyncClient`.

Both have the same methods (``forecast``, ``forecast_batch``, ``predict_df``, ``models``,
``series``, ``health``, ``ready``, ``metrics``), like ``httpx.Client`` and ``httpx.AsyncClient``::

    with Client("http://127.0.0.1:8000") as client:
        fc = client.forecast(city="dongsi", horizon_hours=24)
        print(fc.timestamps[0], fc.median[:3], fc.quantiles.shape)

    async with AsyncClient("http://127.0.0.1:8000") as client:
        frame = await client.predict_df(df, prediction_length=48)

Each method is written once, as a generator that yields the HTTP calls and the pauses it
needs (a "sans-I/O" flow); the two classes only differ in how they carry them out. Bodies,
parsing, errors, the retry policy and the DataFrame assembly are plain functions.

Errors: an answer other than 2xx raises :class:`ChronoserveHTTPError` (``status``,
``detail``, ``field``). A 429 (queue full), and a 503 that carries ``Retry-After``, are
retried up to ``retries`` times after the ``Retry-After`` seconds (at most
``max_retry_after``). Connection errors and timeouts propagate as httpx exceptions.

Importing this module does not import pandas; :meth:`Client.predict_df` does.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import time
import warnings
from collections.abc import Awaitable, Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, cast

import httpx
import numpy as np
import numpy.typing as npt
import orjson

from .errors import ChronoserveError
from .limits import (
    MAX_ANSWER_VALUES,
    MAX_COVARIATES,
    MAX_HORIZON,
    MAX_QUANTILE_LEVELS,
    MAX_SERIES_POINTS,
    answer_values,
    check_model_name,
    check_time_axis,
)

if TYPE_CHECKING:
    import pandas as pd  # type: ignore[import-untyped,unused-ignore]

__all__ = [
    "DEFAULT_BASE_URL",
    "MAX_BATCH_ITEMS",
    "AsyncClient",
    "ChronoserveHTTPError",
    "Client",
    "Forecast",
    "forecast_body",
]

T = TypeVar("T")

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
MAX_BATCH_ITEMS = 1000
"""The most requests one ``POST /forecast/batch`` may carry (the server's limit)."""
DEFAULT_MAX_BODY_BYTES = 1 << 20
"""The server's default body limit; batches are split to stay under it."""
DEFAULT_QUANTILES = (0.1, 0.5, 0.9)
DF_QUANTILES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
_DEFAULT_RETRY_AFTER = 1.0
"""Seconds to wait before retrying a 429 that has no ``Retry-After`` (batch items never have one)."""

ArrayLike = Sequence[float | None] | npt.NDArray[Any]


# -- results and errors ------------------------------------------------------------------------


class ChronoserveHTTPError(ChronoserveError):
    """The server answered with an error status.

    ``detail`` is the answer's ``detail`` (a string, or a list of ``{loc, msg, type}``);
    ``field`` the request field the first ``loc`` names (``"horizon_hours"``,
    ``"past_covariates.t"``; for a batch item, relative to the item), or None;
    ``item`` the batch index (``forecast_batch``) or series id (``predict_df``) it is about.
    """

    reason = "http_error"

    def __init__(
        self,
        status: int,
        detail: Any,
        *,
        field: str | None = None,
        item: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.status = status
        self.detail = detail
        self.field = field
        self.item = item
        self.headers = dict(headers or {})
        super().__init__(self._message())

    def _message(self) -> str:
        where = ""
        if self.item is not None:
            where += f" for item {self.item!r}"
        if self.field is not None:
            where += f" on {self.field!r}"
        if isinstance(self.detail, list) and self.detail and isinstance(self.detail[0], Mapping):
            text = "; ".join(str(d.get("msg", d)) for d in self.detail)
        else:
            text = str(self.detail)
        return f"HTTP {self.status}{where}: {text}"

    @property
    def retry_after(self) -> float | None:
        """The ``Retry-After`` header in seconds, when the answer had one."""
        return _parse_retry_after(self.headers.get("retry-after"))

    def about(self, item: Any) -> ChronoserveHTTPError:
        """The same error, labelled with the item (a series id, an index) it is about."""
        return ChronoserveHTTPError(self.status, self.detail, field=self.field, item=item, headers=self.headers)


@dataclass(frozen=True, eq=False)
class Forecast:
    """One forecast, as the server answered it.

    ``quantiles[h, j]`` is step ``h`` at ``quantile_levels[j]``; gaps the server sent as
    null are NaN. ``timestamps`` is None when the server did not know them (an inline
    ``target`` sent without ``start``). ``raw`` is the answer's JSON.
    """

    request_id: str
    model: str
    family: str
    random_weights: bool
    policy: str
    series: str | None
    timestamps: list[datetime] | None
    median: npt.NDArray[np.float64]
    quantiles: npt.NDArray[np.float64]
    quantile_levels: tuple[float, ...]
    batch_size: int
    cold_start: bool
    timings: dict[str, float]
    context_used: int
    raw: dict[str, Any] = field(repr=False)

    @property
    def horizon(self) -> int:
        return int(self.median.shape[0])

    def quantile(self, level: float) -> npt.NDArray[np.float64]:
        """The forecast at one of ``quantile_levels``."""
        return self.quantiles[:, self.quantile_levels.index(level)]


# -- request bodies ------------------------------------------------------------------------------


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
) -> dict[str, Any]:
    """The JSON body of ``POST /forecast`` (one item of ``/forecast/batch``).

    Fields left at None are left out, so the server's defaults apply (``model_name``: the
    server's default model). The bounds that hold for every model and server
    (:mod:`chronoserve.limits`: horizon, name, time axis, counts) are checked here, before
    anything is sent (``ValueError`` naming the field); the server checks the rest and answers
    422 naming the field.
    """
    _check_count("horizon_hours", horizon_hours, 1, MAX_HORIZON)
    if context_hours is not None:
        _check_count("context_hours", context_hours, 1, MAX_SERIES_POINTS)
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


def _check_count(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name}: must be an integer, got {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{name}: must lie in [{low}, {high}], got {value}")


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


# -- answers ---------------------------------------------------------------------------------------


def _floats(values: Sequence[float | None]) -> npt.NDArray[np.float64]:
    return np.array([math.nan if v is None else v for v in values], dtype=np.float64)


def _quantile_values(quantiles: Mapping[str, Sequence[float | None]], level: float) -> Sequence[float | None]:
    for key in (f"{level:g}", str(level), repr(level)):
        if key in quantiles:
            return quantiles[key]
    raise ChronoserveError(f"the answer has no quantile {level} (it has {sorted(quantiles)})")


def _parse_forecast(body: Mapping[str, Any]) -> Forecast:
    levels = tuple(float(q) for q in body["quantile_levels"])
    median = _floats(body["median"])
    quantiles = np.empty((median.shape[0], len(levels)), dtype=np.float64)
    for j, q in enumerate(levels):
        quantiles[:, j] = _floats(_quantile_values(body["quantiles"], q))
    stamps = body.get("timestamps")
    model = body["model"]
    return Forecast(
        request_id=body["request_id"],
        model=model["name"],
        family=model.get("family", "unknown"),
        random_weights=bool(model.get("random_weights", False)),
        policy=body["policy"],
        series=body.get("series"),
        timestamps=None if stamps is None else [datetime.fromisoformat(t) for t in stamps],
        median=median,
        quantiles=quantiles,
        quantile_levels=levels,
        batch_size=int(body["batch_size"]),
        cold_start=bool(body["cold_start"]),
        timings={k: float(v) for k, v in body["timings"].items()},
        context_used=int(body["context_used"]),
        raw=dict(body),
    )


def _relocate(detail: Any, chunk: Sequence[int] | None) -> Any:
    """Rewrite ``["body", "requests", i, ...]`` locations from chunk positions to the caller's indices."""
    if chunk is None or not isinstance(detail, list):
        return detail
    out = []
    for entry in detail:
        loc = entry.get("loc") if isinstance(entry, Mapping) else None
        if (
            isinstance(loc, list)
            and loc[:2] == ["body", "requests"]
            and len(loc) >= 3
            and isinstance(loc[2], int)
            and 0 <= loc[2] < len(chunk)
        ):
            entry = {**entry, "loc": [*loc[:2], chunk[loc[2]], *loc[3:]]}
        out.append(entry)
    return out


def _field(detail: Any, *, in_item: bool) -> str | None:
    """The field the first error location names, without ``body`` (and ``requests.i`` for an item)."""
    if not (isinstance(detail, list) and detail and isinstance(detail[0], Mapping)):
        return None
    loc = list(detail[0].get("loc") or [])
    if loc[:1] == ["body"]:
        loc = loc[1:]
    if in_item and len(loc) >= 2 and loc[0] == "requests" and isinstance(loc[1], int):
        loc = loc[2:]
    return ".".join(str(part) for part in loc) or None


def _error_detail(response: httpx.Response) -> Any:
    try:
        body = response.json()
    except ValueError:
        return response.text or response.reason_phrase
    if isinstance(body, Mapping) and "detail" in body:
        return body["detail"]
    return body


def _http_error(response: httpx.Response, chunk: Sequence[int] | None = None) -> ChronoserveHTTPError:
    detail = _relocate(_error_detail(response), chunk)
    return ChronoserveHTTPError(
        response.status_code, detail, field=_field(detail, in_item=False), headers=response.headers
    )


def _item_error(item: Mapping[str, Any], index: int, chunk: Sequence[int]) -> ChronoserveHTTPError:
    error = item.get("error") or {}
    detail = _relocate(error.get("detail", "unknown error") if isinstance(error, Mapping) else error, chunk)
    return ChronoserveHTTPError(int(item["status"]), detail, field=_field(detail, in_item=True), item=index)


def _parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds from now: a number of seconds or an HTTP date."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = (when - datetime.now(timezone.utc)).total_seconds()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


@dataclass(frozen=True)
class _Policy:
    """What both clients share besides the connection: retries, limits, URL prefix, extra headers."""

    retries: int
    max_retry_after: float
    max_body_bytes: int
    prefix: str = ""
    headers: Mapping[str, str] | None = None

    def retry_delay(self, response: httpx.Response, attempt: int) -> float | None:
        """Seconds to wait before trying again after ``response``, or None to give up."""
        if attempt >= self.retries:
            return None
        after = _parse_retry_after(response.headers.get("retry-after"))
        if response.status_code == 429:
            delay = _DEFAULT_RETRY_AFTER if after is None else after
        elif response.status_code == 503 and after is not None:
            delay = after
        else:
            return None
        return min(delay, self.max_retry_after)


# -- flows: each method once, as a generator of calls and pauses ----------------------------------


@dataclass(frozen=True)
class _Call:
    method: str
    path: str
    content: bytes | None = None


@dataclass(frozen=True)
class _Sleep:
    seconds: float


_Flow = Generator["_Call | _Sleep", "httpx.Response | None", T]


def _exchange(policy: _Policy, call: _Call) -> _Flow[httpx.Response]:
    """One call, retried per the policy; returns the last answer, whatever its status."""
    attempt = 0
    while True:
        response = yield call
        assert response is not None
        delay = policy.retry_delay(response, attempt)
        if delay is None:
            return response
        attempt += 1
        yield _Sleep(delay)


def _json_flow(policy: _Policy, call: _Call) -> _Flow[Any]:
    response = yield from _exchange(policy, call)
    if not response.is_success:
        raise _http_error(response)
    return response.json()


def _forecast_flow(policy: _Policy, body: Mapping[str, Any]) -> _Flow[Forecast]:
    data = yield from _json_flow(policy, _Call("POST", "/forecast", _dumps(body)))
    return _parse_forecast(data)


def _batch_flow(
    policy: _Policy, bodies: Sequence[Mapping[str, Any]], max_items: int = MAX_BATCH_ITEMS
) -> _Flow[list[Forecast | ChronoserveHTTPError]]:
    """Every item through ``/forecast/batch`` in chunks; items refused with 429 are sent again."""
    encoded = [_dumps(b) for b in bodies]
    values = [_answer_size(b) for b in bodies]
    results: list[Forecast | ChronoserveHTTPError | None] = [None] * len(encoded)
    pending = list(range(len(encoded)))
    for attempt in range(policy.retries + 1):
        again: list[int] = []
        for chunk in _chunks(pending, encoded, values, min(max_items, MAX_BATCH_ITEMS), policy.max_body_bytes):
            response = yield from _exchange(policy, _Call("POST", "/forecast/batch", _batch_content(encoded, chunk)))
            if not response.is_success:
                raise _http_error(response, chunk)
            items = response.json()["results"]
            if len(items) != len(chunk):
                raise ChronoserveError(f"the server answered {len(items)} results for {len(chunk)} requests")
            for index, item in zip(chunk, items, strict=True):
                if item["status"] == 200:
                    results[index] = _parse_forecast(item["result"])
                else:
                    results[index] = _item_error(item, index, chunk)
                    if item["status"] == 429:
                        again.append(index)
        if not again or attempt == policy.retries:
            break
        yield _Sleep(min(_DEFAULT_RETRY_AFTER, policy.max_retry_after))
        pending = again
    assert all(r is not None for r in results)
    return cast("list[Forecast | ChronoserveHTTPError]", results)


def _status_flow(policy: _Policy, path: str) -> _Flow[httpx.Response]:
    return (yield from _exchange(policy, _Call("GET", path)))


def _ready_flow(policy: _Policy) -> _Flow[bool]:
    response = yield from _exchange(policy, _Call("GET", "/readyz"))
    if response.status_code == 503:
        return False
    if not response.is_success:
        raise _http_error(response)
    return True


def _text_flow(policy: _Policy, path: str) -> _Flow[str]:
    response = yield from _exchange(policy, _Call("GET", path))
    if not response.is_success:
        raise _http_error(response)
    return response.text


# -- predict_df: upstream Chronos' DataFrame contract ------------------------------------------------
# _normalize_df, _infer_freq and _make_future_df follow chronos.df_utils (chronos-forecasting 2.x,
# Apache-2.0) step for step, so the frames and timestamps are the same; importing chronos itself
# would import torch.


def _pandas() -> Any:
    import pandas  # type: ignore[import-untyped,unused-ignore]

    return pandas


def _normalize_df(df: pd.DataFrame, id_column: str, timestamp_column: str) -> pd.DataFrame:
    """Timestamps as datetimes, rows grouped by id in first-appearance order, sorted by time within."""
    pandas = _pandas()
    if not pandas.api.types.is_datetime64_any_dtype(df[timestamp_column]):
        df = df.assign(**{timestamp_column: pandas.to_datetime(df[timestamp_column])})
    codes, _ = pandas.factorize(df[id_column])
    ts = pandas.DatetimeIndex(df[timestamp_column]).asi8  # upstream's .view("int64") fails on tz-aware columns
    code_diff = np.diff(codes)
    grouped = bool(np.all(code_diff >= 0))
    sorted_within = grouped and bool(np.all((np.diff(ts) >= 0) | (code_diff > 0)))
    if not sorted_within:
        df = df.iloc[np.lexsort([ts, codes])].reset_index(drop=True)
    return df


def _infer_one(index: Any) -> str | None:
    """``pandas.infer_freq`` as a string, without pandas 3.1's warning that it will return an offset."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="A future version of pandas will return a BaseOffset")
        freq = _pandas().infer_freq(index)
    return freq if freq is None or isinstance(freq, str) else str(freq.freqstr)


def _infer_freq(df: pd.DataFrame, id_column: str, timestamp_column: str) -> str:
    """The frequency all series (of 3 points or more) share, as ``pandas.infer_freq`` names it."""
    pandas = _pandas()
    series_lengths = df[id_column].value_counts(sort=False).to_list()
    item_ids = df[id_column].to_numpy()
    timestamp_index = pandas.DatetimeIndex(df[timestamp_column])
    freqs: set[str] = set()
    start = 0
    for length in series_lengths:
        if length >= 3:
            freq = _infer_one(timestamp_index[start : start + length])
            if freq is None:
                raise ValueError(f"Could not infer frequency for series {item_ids[start]}")
            freqs.add(freq)
        start += length
    if len(freqs) > 1:
        raise ValueError("All time series must have the same frequency")
    if not freqs:
        raise ValueError(
            "Could not infer frequency: no time series has at least 3 regularly-spaced observations. "
            "Please provide an explicit `freq`."
        )
    return freqs.pop()


def _make_future_df(
    df: pd.DataFrame, prediction_length: int, freq: str, id_column: str, timestamp_column: str
) -> pd.DataFrame:
    """``prediction_length`` future timestamps per series, after each one's last timestamp."""
    pandas = _pandas()
    series_lengths = df[id_column].value_counts(sort=False).to_list()
    indptr = np.concatenate([[0], np.cumsum(series_lengths)]).astype("int64")
    last_ts = pandas.DatetimeIndex(df[timestamp_column].to_numpy()[indptr[1:] - 1])
    item_ids = df[id_column].to_numpy()[indptr[:-1]]
    offset = pandas.tseries.frequencies.to_offset(freq)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=pandas.errors.PerformanceWarning)
        future_ts = np.stack([last_ts + step * offset for step in range(1, prediction_length + 1)], axis=1).ravel()
    return pandas.DataFrame(
        {id_column: np.repeat(item_ids, prediction_length), timestamp_column: pandas.DatetimeIndex(future_ts)}
    )


def _freq_hours(freq: str) -> float | None:
    """The frequency in hours, when it is a fixed duration (``h``, ``15min``, ``D``); else None."""
    pandas = _pandas()
    try:
        hours = pandas.Timedelta(pandas.tseries.frequencies.to_offset(freq)) / pandas.Timedelta(hours=1)
    except (TypeError, ValueError):
        return None
    return float(hours) if hours > 0 else None


@dataclass
class _FramePlan:
    """What ``predict_df`` sends, and the frame its answers go into."""

    future: pd.DataFrame
    ids: list[Any]
    bodies: list[dict[str, Any]]
    target: str
    quantile_levels: list[Any]
    prediction_length: int


def _plan_frame(
    df: pd.DataFrame,
    *,
    id_column: str,
    timestamp_column: str,
    target: Any,
    prediction_length: int,
    quantile_levels: Sequence[Any],
    model_name: str | None,
    context_hours: int | None,
    freq: str | None,
) -> _FramePlan:
    pandas = _pandas()
    if not isinstance(target, str):
        raise ValueError(
            f"Expected `target` to be str, but found {type(target)}. chronoserve only supports univariate forecasting."
        )
    if target not in df.columns:
        raise ValueError(f"df does not contain the target column '{target}'")
    missing = {id_column, timestamp_column} - set(df.columns)
    if missing:
        raise ValueError(f"df does not contain all expected columns. Missing columns: {missing}")
    if not pandas.api.types.is_numeric_dtype(df[target]):
        raise ValueError(f"Target column '{target}' must be numeric, got dtype {df[target].dtype}")
    if isinstance(prediction_length, bool) or not isinstance(prediction_length, int) or prediction_length < 1:
        raise ValueError(f"prediction_length must be a positive integer, got {prediction_length!r}")
    if context_hours is not None and (
        isinstance(context_hours, bool) or not isinstance(context_hours, int) or context_hours < 1
    ):
        raise ValueError(f"context_hours must be a positive integer or None, got {context_hours!r}")
    levels = list(quantile_levels)
    if not levels or any(not (0.0 < float(q) < 1.0) for q in levels) or len({float(q) for q in levels}) < len(levels):
        raise ValueError(f"quantile_levels must be distinct levels strictly between 0 and 1, got {levels}")
    if len(df) == 0:
        raise ValueError("df has no rows")

    df = _normalize_df(df, id_column, timestamp_column)
    if freq is None:
        freq = _infer_freq(df, id_column, timestamp_column)
    future = _make_future_df(df, prediction_length, freq, id_column, timestamp_column)
    hours = _freq_hours(freq)
    step = timedelta(hours=hours) if hours is not None else None

    lengths = df[id_column].value_counts(sort=False).to_list()
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype("int64")
    values = df[target].to_numpy(dtype=np.float64, na_value=np.nan)
    stamps = pandas.DatetimeIndex(df[timestamp_column])
    future_stamps = pandas.DatetimeIndex(future[timestamp_column])
    ids = df[id_column].to_numpy()[indptr[:-1]].tolist()
    common: dict[str, Any] = {"horizon_hours": prediction_length, "quantile_levels": [float(q) for q in levels]}
    if model_name is not None:
        common["model_name"] = model_name
    bodies = []
    for i in range(len(lengths)):
        lo, hi = int(indptr[i]), int(indptr[i + 1])
        if context_hours is not None:
            lo = max(lo, hi - context_hours)
        body = {"target": _values("target", values[lo:hi]), **common}
        if step is not None:
            # Label the server's answer too, when its arithmetic (start + k * freq_hours) gives
            # the timestamps upstream's offsets give; the frame uses the latter either way.
            start = stamps[lo].to_pydatetime(warn=False)
            offsets = pandas.to_timedelta([step * (hi - lo + h) for h in range(prediction_length)])
            expected = future_stamps[i * prediction_length : (i + 1) * prediction_length]
            if bool(((pandas.Timestamp(start) + offsets) == expected).all()):
                body["start"] = _iso(start)
                body["freq_hours"] = hours
        bodies.append(body)
    return _FramePlan(future, ids, bodies, target, levels, prediction_length)


def _assemble_frame(plan: _FramePlan, results: Sequence[Forecast]) -> pd.DataFrame:
    """Upstream's output: id, timestamp, ``target_name``, ``predictions``, one column per level (float32)."""
    h = plan.prediction_length
    median = np.concatenate([r.median for r in results]) if results else np.empty(0)
    quantiles = np.empty((len(results) * h, len(plan.quantile_levels)), dtype=np.float64)
    for i, r in enumerate(results):
        if r.horizon != h:
            raise ChronoserveError(f"series {plan.ids[i]!r}: the server answered {r.horizon} steps, not {h}")
        if len(r.quantile_levels) != len(plan.quantile_levels):
            raise ChronoserveError(f"series {plan.ids[i]!r}: the server answered levels {r.quantile_levels}")
        quantiles[i * h : (i + 1) * h] = r.quantiles  # the server keeps the order of the levels asked for
    result = plan.future.copy()
    result["target_name"] = plan.target
    result["predictions"] = median.astype(np.float32)
    for j, q in enumerate(plan.quantile_levels):
        result[str(q)] = quantiles[:, j].astype(np.float32)
    return result


def _predict_df_flow(policy: _Policy, plan: _FramePlan, max_items: int) -> _Flow[pd.DataFrame]:
    if max_items < 1:
        raise ValueError(f"batch_size must be a positive integer, got {max_items!r}")
    results = yield from _batch_flow(policy, plan.bodies, max_items)
    forecasts: list[Forecast] = []
    for series_id, result in zip(plan.ids, results, strict=True):
        if isinstance(result, ChronoserveHTTPError):
            raise result.about(series_id)
        forecasts.append(result)
    return _assemble_frame(plan, forecasts)


# -- the clients ---------------------------------------------------------------------------------------


def _setup(
    base_url: str | None,
    *,
    timeout: float | httpx.Timeout | None,
    transport: object,
    headers: Mapping[str, str] | None,
    retries: int,
    max_retry_after: float,
    max_body_bytes: int,
    has_session: bool,
) -> tuple[_Policy, dict[str, Any]]:
    """The retry policy, and the keyword arguments of the httpx client to build (none with a session)."""
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    if has_session:
        if transport is not None:
            raise ValueError("give either `session` or `transport`, not both")
        prefix = base_url.rstrip("/") if base_url is not None else ""
        return _Policy(retries, max_retry_after, max_body_bytes, prefix, dict(headers or {})), {}
    kwargs: dict[str, Any] = {
        "base_url": base_url if base_url is not None else DEFAULT_BASE_URL,
        "timeout": timeout,
        "headers": dict(headers or {}),
    }
    if transport is not None:
        kwargs["transport"] = transport
    return _Policy(retries, max_retry_after, max_body_bytes), kwargs


def _request_args(policy: _Policy, call: _Call) -> dict[str, Any]:
    headers = dict(policy.headers or {})
    if call.content is not None:
        headers["content-type"] = "application/json"
    return {"method": call.method, "url": policy.prefix + call.path, "content": call.content, "headers": headers}


class Client:
    """A blocking client of a chronoserve server (``httpx.Client`` underneath).

    ``transport`` is an httpx transport (tests: ``httpx.MockTransport``). ``session`` is an
    ``httpx.Client`` to use instead of building one, e.g. ``starlette.testclient.TestClient(app)``;
    its base URL, timeout and headers apply (``base_url`` and ``headers``, when given, are used on
    each request) and :meth:`close` leaves it open. ``sleep`` waits between retries
    (``time.sleep``; tests pass a recorder). ``max_body_bytes`` bounds the batch bodies sent.
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        timeout: float | httpx.Timeout | None = 60.0,
        transport: httpx.BaseTransport | None = None,
        headers: Mapping[str, str] | None = None,
        retries: int = 3,
        max_retry_after: float = 10.0,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        session: httpx.Client | None = None,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        self._policy, kwargs = _setup(
            base_url,
            timeout=timeout,
            transport=transport,
            headers=headers,
            retries=retries,
            max_retry_after=max_retry_after,
            max_body_bytes=max_body_bytes,
            has_session=session is not None,
        )
        self._http = session if session is not None else httpx.Client(**kwargs)
        self._owns_http = session is None
        self._sleep = time.sleep if sleep is None else sleep

    def _run(self, flow: _Flow[T]) -> T:
        try:
            step = next(flow)
            while True:
                if isinstance(step, _Sleep):
                    self._sleep(step.seconds)
                    step = flow.send(None)
                else:
                    step = flow.send(self._http.request(**_request_args(self._policy, step)))
        except StopIteration as done:
            return cast(T, done.value)
        finally:
            flow.close()

    def close(self) -> None:
        """Close the connections (not those of a ``session`` given to the constructor)."""
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def forecast(
        self,
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
    ) -> Forecast:
        """One forecast (``POST /forecast``): of a series the server knows (``city``) or of ``target``.

        ``target`` and the covariates are lists or numpy arrays; NaN is a gap (sent as null).
        ``start`` (and ``freq_hours``, default 1) label an inline ``target``'s forecast hours.
        Raises :class:`ChronoserveHTTPError` for an error answer (422 names the field).
        """
        body = forecast_body(
            city=city,
            target=target,
            model_name=model_name,
            horizon_hours=horizon_hours,
            context_hours=context_hours,
            quantile_levels=quantile_levels,
            use_covariates=use_covariates,
            known_future_covariates=known_future_covariates,
            end=end,
            start=start,
            freq_hours=freq_hours,
            past_covariates=past_covariates,
            future_covariates=future_covariates,
            request_id=request_id,
            seed=seed,
        )
        return self._run(_forecast_flow(self._policy, body))

    def forecast_batch(self, items: Sequence[Mapping[str, Any]]) -> list[Forecast | ChronoserveHTTPError]:
        """Many forecasts through ``POST /forecast/batch``; each item has :meth:`forecast`'s keywords.

        Returns, in order, a :class:`Forecast` or the item's :class:`ChronoserveHTTPError`
        (``item`` is its index). Items refused with 429 are sent again, up to ``retries`` times.
        Sent in chunks of at most 1000 items and ``max_body_bytes``. A whole call refused
        (every item invalid in shape, draining) raises.
        """
        bodies = [forecast_body(**item) for item in items]
        return self._run(_batch_flow(self._policy, bodies))

    def predict_df(
        self,
        df: pd.DataFrame,
        *,
        id_column: str = "item_id",
        timestamp_column: str = "timestamp",
        target: str = "target",
        prediction_length: int | None = None,
        quantile_levels: Sequence[float] = DF_QUANTILES,
        model_name: str | None = None,
        context_hours: int | None = None,
        freq: str | None = None,
        batch_size: int = MAX_BATCH_ITEMS,
    ) -> pd.DataFrame:
        """Forecast every series of a long-format DataFrame, like Chronos' ``pipeline.predict_df``.

        ``df`` has one row per (``id_column``, ``timestamp_column``) and a numeric ``target``
        column; all series share one regular frequency (inferred with pandas, or ``freq``);
        NaN targets are gaps. Other columns are ignored: covariates are not sent in this version.

        ``prediction_length`` defaults to 24 steps (upstream: the model's default length).
        ``context_hours`` keeps at most that many last points of each series. ``batch_size``
        series go in one ``/forecast/batch`` call (at most 1000).

        Returns upstream's frame: ``id_column``, ``timestamp_column`` (the future timestamps
        upstream computes), ``"target_name"``, ``"predictions"`` (the median) and one float32
        column per level, named ``str(level)``. Raises ValueError for a malformed ``df`` and
        :class:`ChronoserveHTTPError` (``item`` is the series id) if a series is refused.
        """
        plan = _plan_frame(
            df,
            id_column=id_column,
            timestamp_column=timestamp_column,
            target=target,
            prediction_length=24 if prediction_length is None else prediction_length,
            quantile_levels=quantile_levels,
            model_name=model_name,
            context_hours=context_hours,
            freq=freq,
        )
        return self._run(_predict_df_flow(self._policy, plan, batch_size))

    def models(self) -> dict[str, Any]:
        """``GET /models``: the default model, the catalog and the resident models."""
        return cast("dict[str, Any]", self._run(_json_flow(self._policy, _Call("GET", "/models"))))

    def series(self) -> list[dict[str, Any]]:
        """``GET /series``: the series the server knows (``id``, ``start``, ``rows``, ...)."""
        return cast("list[dict[str, Any]]", self._run(_json_flow(self._policy, _Call("GET", "/series")))["series"])

    def health(self) -> bool:
        """Whether ``GET /healthz`` answers 200 (connection errors raise)."""
        return self._run(_status_flow(self._policy, "/healthz")).status_code == 200

    def ready(self) -> bool:
        """Whether ``GET /readyz`` answers 200 (False on 503: warming up or draining)."""
        return self._run(_ready_flow(self._policy))

    def metrics(self) -> str:
        """``GET /metrics``: Prometheus text."""
        return self._run(_text_flow(self._policy, "/metrics"))


class AsyncClient:
    """The asyncio twin of :class:`Client` (``httpx.AsyncClient`` underneath); same arguments and methods.

    ``transport``: e.g. ``httpx.ASGITransport(app=app)`` to talk to an app in-process.
    ``session``: an ``httpx.AsyncClient``. ``sleep``: an async sleep (``asyncio.sleep``).
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        timeout: float | httpx.Timeout | None = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
        headers: Mapping[str, str] | None = None,
        retries: int = 3,
        max_retry_after: float = 10.0,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        session: httpx.AsyncClient | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        self._policy, kwargs = _setup(
            base_url,
            timeout=timeout,
            transport=transport,
            headers=headers,
            retries=retries,
            max_retry_after=max_retry_after,
            max_body_bytes=max_body_bytes,
            has_session=session is not None,
        )
        self._http = session if session is not None else httpx.AsyncClient(**kwargs)
        self._owns_http = session is None
        self._sleep = asyncio.sleep if sleep is None else sleep

    async def _run(self, flow: _Flow[T]) -> T:
        try:
            step = next(flow)
            while True:
                if isinstance(step, _Sleep):
                    await self._sleep(step.seconds)
                    step = flow.send(None)
                else:
                    step = flow.send(await self._http.request(**_request_args(self._policy, step)))
        except StopIteration as done:
            return cast(T, done.value)
        finally:
            flow.close()

    async def aclose(self) -> None:
        """Close the connections (not those of a ``session`` given to the constructor)."""
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def forecast(
        self,
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
    ) -> Forecast:
        """See :meth:`Client.forecast`."""
        body = forecast_body(
            city=city,
            target=target,
            model_name=model_name,
            horizon_hours=horizon_hours,
            context_hours=context_hours,
            quantile_levels=quantile_levels,
            use_covariates=use_covariates,
            known_future_covariates=known_future_covariates,
            end=end,
            start=start,
            freq_hours=freq_hours,
            past_covariates=past_covariates,
            future_covariates=future_covariates,
            request_id=request_id,
            seed=seed,
        )
        return await self._run(_forecast_flow(self._policy, body))

    async def forecast_batch(self, items: Sequence[Mapping[str, Any]]) -> list[Forecast | ChronoserveHTTPError]:
        """See :meth:`Client.forecast_batch`."""
        bodies = [forecast_body(**item) for item in items]
        return await self._run(_batch_flow(self._policy, bodies))

    async def predict_df(
        self,
        df: pd.DataFrame,
        *,
        id_column: str = "item_id",
        timestamp_column: str = "timestamp",
        target: str = "target",
        prediction_length: int | None = None,
        quantile_levels: Sequence[float] = DF_QUANTILES,
        model_name: str | None = None,
        context_hours: int | None = None,
        freq: str | None = None,
        batch_size: int = MAX_BATCH_ITEMS,
    ) -> pd.DataFrame:
        """See :meth:`Client.predict_df` (``prediction_length`` defaults to 24)."""
        plan = _plan_frame(
            df,
            id_column=id_column,
            timestamp_column=timestamp_column,
            target=target,
            prediction_length=24 if prediction_length is None else prediction_length,
            quantile_levels=quantile_levels,
            model_name=model_name,
            context_hours=context_hours,
            freq=freq,
        )
        return await self._run(_predict_df_flow(self._policy, plan, batch_size))

    async def models(self) -> dict[str, Any]:
        """See :meth:`Client.models`."""
        return cast("dict[str, Any]", await self._run(_json_flow(self._policy, _Call("GET", "/models"))))

    async def series(self) -> list[dict[str, Any]]:
        """See :meth:`Client.series`."""
        body = await self._run(_json_flow(self._policy, _Call("GET", "/series")))
        return cast("list[dict[str, Any]]", body["series"])

    async def health(self) -> bool:
        """See :meth:`Client.health`."""
        return (await self._run(_status_flow(self._policy, "/healthz"))).status_code == 200

    async def ready(self) -> bool:
        """See :meth:`Client.ready`."""
        return await self._run(_ready_flow(self._policy))

    async def metrics(self) -> str:
        """See :meth:`Client.metrics`."""
        return await self._run(_text_flow(self._policy, "/metrics"))
