"""The flows: each client method written once, as a generator of HTTP calls and pauses.

A flow yields a :class:`_Call` (and is sent the ``httpx.Response``) or a :class:`_Sleep`
(and is sent None), and returns the method's result; :class:`~.sync_client.Client` and
:class:`~.async_client.AsyncClient` only differ in how they carry these out (the "sans-I/O"
split of httpx's auth flows). :class:`_CallSettings` holds what both clients share besides the
connection: how often and how long to retry, the body limit, the URL prefix, extra headers.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, cast

import httpx

from ..errors import ChronoserveError
from .answers import ChronoserveHTTPError, Forecast, _http_error, _item_error, _parse_forecast, _parse_retry_after
from .bodies import MAX_BATCH_ITEMS, _answer_size, _batch_content, _chunks, _dumps
from .frames import _assemble_frame, _FramePlan

if TYPE_CHECKING:
    import pandas as pd  # type: ignore[import-untyped,unused-ignore]

T = TypeVar("T")

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
_DEFAULT_RETRY_AFTER = 1.0
"""Seconds to wait before retrying a 429 that has no ``Retry-After`` (batch items never have one)."""


# -- the call settings -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _CallSettings:
    """How both clients make their calls, besides the connection: how often and how long to retry
    (``retries``, ``max_retry_after``), the batch body limit, the URL prefix and extra headers."""

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
        elif response.status_code == 503 and after is not None and not _deadline_refusal(response):
            delay = after
        else:
            return None
        return min(delay, self.max_retry_after)


def _deadline_refusal(response: httpx.Response) -> bool:
    """A 503 for a deadline the server cannot meet: retrying later would be later than the deadline."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        return False
    return isinstance(detail, list) and any(
        isinstance(d, dict) and d.get("type") == "deadline_unmeetable" for d in detail
    )


# -- flows: each method once, as a generator of calls and pauses -----------------------------------


@dataclass(frozen=True)
class _Call:
    method: str
    path: str
    content: bytes | None = None


@dataclass(frozen=True)
class _Sleep:
    seconds: float


_Flow = Generator["_Call | _Sleep", "httpx.Response | None", T]


def _exchange(settings: _CallSettings, call: _Call) -> _Flow[httpx.Response]:
    """One call, retried as the settings say; returns the last answer, whatever its status."""
    attempt = 0
    while True:
        response = yield call
        assert response is not None
        delay = settings.retry_delay(response, attempt)
        if delay is None:
            return response
        attempt += 1
        yield _Sleep(delay)


def _json_flow(settings: _CallSettings, call: _Call) -> _Flow[Any]:
    response = yield from _exchange(settings, call)
    if not response.is_success:
        raise _http_error(response)
    return response.json()


def _forecast_flow(settings: _CallSettings, body: Mapping[str, Any]) -> _Flow[Forecast]:
    data = yield from _json_flow(settings, _Call("POST", "/forecast", _dumps(body)))
    return _parse_forecast(data)


def _batch_flow(
    settings: _CallSettings, bodies: Sequence[Mapping[str, Any]], max_items: int = MAX_BATCH_ITEMS
) -> _Flow[list[Forecast | ChronoserveHTTPError]]:
    """Every item through ``/forecast/batch`` in chunks; items refused with 429 are sent again."""
    encoded = [_dumps(b) for b in bodies]
    values = [_answer_size(b) for b in bodies]
    results: list[Forecast | ChronoserveHTTPError | None] = [None] * len(encoded)
    pending = list(range(len(encoded)))
    for attempt in range(settings.retries + 1):
        again: list[int] = []
        for chunk in _chunks(pending, encoded, values, min(max_items, MAX_BATCH_ITEMS), settings.max_body_bytes):
            response = yield from _exchange(settings, _Call("POST", "/forecast/batch", _batch_content(encoded, chunk)))
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
        if not again or attempt == settings.retries:
            break
        yield _Sleep(min(_DEFAULT_RETRY_AFTER, settings.max_retry_after))
        pending = again
    assert all(r is not None for r in results)
    return cast("list[Forecast | ChronoserveHTTPError]", results)


def _status_flow(settings: _CallSettings, path: str) -> _Flow[httpx.Response]:
    return (yield from _exchange(settings, _Call("GET", path)))


def _ready_flow(settings: _CallSettings) -> _Flow[bool]:
    response = yield from _exchange(settings, _Call("GET", "/readyz"))
    if response.status_code == 503:
        return False
    if not response.is_success:
        raise _http_error(response)
    return True


def _text_flow(settings: _CallSettings, path: str) -> _Flow[str]:
    response = yield from _exchange(settings, _Call("GET", path))
    if not response.is_success:
        raise _http_error(response)
    return response.text


def _predict_df_flow(settings: _CallSettings, plan: _FramePlan, max_items: int) -> _Flow[pd.DataFrame]:
    if max_items < 1:
        raise ValueError(f"batch_size must be a positive integer, got {max_items!r}")
    results = yield from _batch_flow(settings, plan.bodies, max_items)
    forecasts: list[Forecast] = []
    for series_id, result in zip(plan.ids, results, strict=True):
        if isinstance(result, ChronoserveHTTPError):
            raise result.about(series_id)
        forecasts.append(result)
    return _assemble_frame(plan, forecasts)


# -- setting up a client and making its calls ------------------------------------------------------


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
    api_key: str | None = None,
) -> tuple[_CallSettings, dict[str, Any]]:
    """The call settings, and the keyword arguments of the httpx client to build (none with a session).
    ``api_key``: sent as ``Authorization: Bearer <api_key>`` on every call."""
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    if api_key is not None:
        headers = {**dict(headers or {}), "Authorization": f"Bearer {api_key}"}
    if has_session:
        if transport is not None:
            raise ValueError("give either `session` or `transport`, not both")
        prefix = base_url.rstrip("/") if base_url is not None else ""
        return _CallSettings(retries, max_retry_after, max_body_bytes, prefix, dict(headers or {})), {}
    kwargs: dict[str, Any] = {
        "base_url": base_url if base_url is not None else DEFAULT_BASE_URL,
        "timeout": timeout,
        "headers": dict(headers or {}),
    }
    if transport is not None:
        kwargs["transport"] = transport
    return _CallSettings(retries, max_retry_after, max_body_bytes), kwargs


def _request_args(settings: _CallSettings, call: _Call) -> dict[str, Any]:
    headers = dict(settings.headers or {})
    if call.content is not None:
        headers["content-type"] = "application/json"
    return {"method": call.method, "url": settings.prefix + call.path, "content": call.content, "headers": headers}
