"""What the server answers: :class:`Forecast`, :class:`ChronoserveHTTPError`, and parsing them.

Error answers become :class:`ChronoserveHTTPError` naming the field (and, for a batch, the
item) they are about; ``Retry-After`` headers are read as seconds from now.
"""

from __future__ import annotations

import email.utils
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt

from ..errors import ChronoserveError


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


# -- parsing answers -------------------------------------------------------------------------------


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
