"""From the HTTP API's request fields to a :class:`ForecastRequest`, and from a result back.

Shared by the server and by in-process replay, so a trace replayed without a server builds
exactly the requests the server would. Nothing here does work sized by a number in the
request before that number's bound is checked: the answer's timestamps are built from the
result (whose horizon the model has accepted), after the time axis was checked to exist.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from chronoserve.data import SeriesStore
from chronoserve.limits import check_time_axis, time_axis
from chronoserve.request import ForecastRequest, ForecastResult

from .schemas import DEFAULT_CONTEXT_HOURS, ForecastIn

#: The names an :class:`InvalidRequest` gives -> the HTTP API's names, for error locations: the
#: engine's (:class:`ForecastRequest` fields) and the series store's (:meth:`SeriesStore.window`
#: parameters). ``horizon`` is both; ``end`` and the others keep their name.
_HTTP_FIELDS = {
    # the engine
    "horizon": "horizon_hours",
    "context_length": "context_hours",
    "model": "model_name",
    "deadline": "deadline_ms",
    # the series store
    "series": "city",
    "context": "context_hours",
    "covariates": "use_covariates",
    "known_future": "known_future_covariates",
}


@dataclass
class ItemRequest:
    """An engine request and what the answer needs besides the result: its series and time axis."""

    request: ForecastRequest
    series: str | None
    start: datetime | None
    """The timestamp of the first forecast step, or None when the history had none."""
    freq_hours: float = 1.0

    def timestamps(self, horizon: int) -> list[str] | None:
        if self.start is None:
            return None
        return list(_timestamps(self.start, self.freq_hours, horizon))


@functools.lru_cache(maxsize=4096)
def _timestamps(start: datetime, freq_hours: float, horizon: int) -> tuple[str, ...]:
    """An answer's ISO timestamps: the same few axes come back request after request (a series'
    latest hours), and formatting 24 of them took longer than the rest of the answer."""
    return tuple(t.isoformat() for t in time_axis(start, freq_hours, 0, horizon))


def http_field(field_name: str, item: ForecastIn) -> str:
    """The HTTP field to blame for an :class:`InvalidRequest` on ``field_name`` from the engine or
    the series store (the only place their names are turned into the HTTP API's)."""
    head, _, rest = field_name.partition(".")
    if item.city is not None:
        if head in ("past_covariates", "future_covariates"):
            return "use_covariates"
        if head == "target":
            return "city"
    mapped = _HTTP_FIELDS.get(head, head)
    return f"{mapped}.{rest}" if rest else mapped


def _lower_bound(item: ForecastIn, store: SeriesStore) -> float | None:
    """The item's lower bound: ``nonnegative``, else ``lower_bound``, else its series' own (a ``city``)."""
    if item.nonnegative is not None:
        return 0.0 if item.nonnegative else None
    if item.lower_bound is not None or item.city is None:
        return item.lower_bound
    return store.info(item.city).lower_bound


def build_request(item: ForecastIn, store: SeriesStore, model: str) -> ItemRequest:
    """The engine request for a validated item and the canonical name of its model.

    Raises ``InvalidRequest`` for a bad series window, or a time axis that does not exist
    (``start`` and ``freq_hours`` such that a forecast step falls past year 9999).
    """
    kwargs: dict[str, Any] = {
        "model": model,
        "horizon": item.horizon_hours,
        "quantile_levels": item.quantile_levels,
        "seed": item.seed,
        "deadline": None if item.deadline_ms is None else item.deadline_ms / 1000.0,
        "priority": item.priority,
        "lower_bound": _lower_bound(item, store),
    }
    if item.request_id is not None:
        kwargs["request_id"] = item.request_id
    if item.city is not None:
        window = store.window(
            item.city,
            horizon=item.horizon_hours,
            context=item.context_hours,
            end=item.end,
            covariates=item.use_covariates,
            known_future=item.known_future_covariates,
            max_context=None if item.context_hours is not None else DEFAULT_CONTEXT_HOURS,
        )
        request = ForecastRequest(
            target=window.target,
            context_length=item.context_hours,  # so a context beyond the model's limit is refused, not cut
            past_covariates=window.past_covariates,
            future_covariates=window.future_covariates,
            **kwargs,
        )
        return ItemRequest(request, item.city, window.forecast_start)
    assert item.target is not None
    request = ForecastRequest(
        target=[float("nan") if v is None else v for v in item.target],
        context_length=item.context_hours,
        past_covariates=_nan_lists(item.past_covariates),
        future_covariates=_nan_lists(item.future_covariates),
        **kwargs,
    )
    if item.start is None:
        return ItemRequest(request, None, None)
    n = len(item.target)
    check_time_axis(item.start, item.freq_hours, n, item.horizon_hours)
    first = time_axis(item.start, item.freq_hours, n, 1)[0]
    return ItemRequest(request, None, first, item.freq_hours)


def _nan_lists(values: Mapping[str, list[float | None]] | None) -> dict[str, list[float]] | None:
    if not values:
        return None
    return {k: [float("nan") if v is None else v for v in vs] for k, vs in values.items()}


def result_body(result: ForecastResult, item: ItemRequest) -> dict[str, Any]:
    body = {
        "request_id": result.request_id,
        "model": {"name": result.model, "family": result.family, "random_weights": result.random_weights},
        "policy": result.policy,
        "series": item.series,
        "timestamps": item.timestamps(result.horizon),
        "median": result.median.tolist(),
        "quantile_levels": list(result.quantile_levels),
        "quantiles": {f"{q:g}": result.quantiles[:, j].tolist() for j, q in enumerate(result.quantile_levels)},
        "batch_size": result.batch_size,
        "cold_start": result.cold_start,
        "timings": result.timings.to_dict(),
        "context_used": result.context_used,
    }
    if result.served_by is not None:
        body["served_by"] = result.served_by
    if result.lower_bound is not None:
        body["lower_bound"] = result.lower_bound
        body["clipped_values"] = result.clipped
    return body
