"""From the HTTP API's request fields to a :class:`ForecastRequest`, and from a result back.

Shared by the server and by in-process replay, so a trace replayed without a server builds
exactly the requests the server would.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from chronoserve.data import SeriesStore
from chronoserve.request import ForecastRequest, ForecastResult

from .schemas import DEFAULT_CONTEXT_HOURS, ForecastIn

#: Engine field names -> the HTTP API's names, for error locations.
_HTTP_FIELDS = {"horizon": "horizon_hours", "context_length": "context_hours", "model": "model_name"}


@dataclass
class Prepared:
    request: ForecastRequest
    series: str | None
    timestamps: list[datetime] | None


def http_field(field_name: str, item: ForecastIn) -> str:
    """The HTTP field to blame for an engine-side :class:`InvalidRequest` on ``field_name``."""
    head, _, rest = field_name.partition(".")
    if item.city is not None:
        if head in ("past_covariates", "future_covariates"):
            return "use_covariates"
        if head == "target":
            return "city"
    mapped = _HTTP_FIELDS.get(head, head)
    return f"{mapped}.{rest}" if rest else mapped


def build_request(item: ForecastIn, store: SeriesStore) -> Prepared:
    """The engine request for a validated item (raises ``InvalidRequest`` for a bad series window)."""
    kwargs: dict[str, Any] = {
        "model": item.model_name,
        "horizon": item.horizon_hours,
        "quantile_levels": item.quantile_levels,
        "seed": item.seed,
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
        return Prepared(request, item.city, list(window.forecast_timestamps))
    assert item.target is not None
    request = ForecastRequest(
        target=[float("nan") if v is None else v for v in item.target],
        context_length=item.context_hours,
        past_covariates=_nan_lists(item.past_covariates),
        future_covariates=_nan_lists(item.future_covariates),
        **kwargs,
    )
    timestamps = None
    if item.start is not None:
        step = timedelta(hours=item.freq_hours)
        n = len(item.target)
        timestamps = [item.start + step * (n + h) for h in range(item.horizon_hours)]
    return Prepared(request, None, timestamps)


def _nan_lists(values: Mapping[str, list[float | None]] | None) -> dict[str, list[float]] | None:
    if not values:
        return None
    return {k: [float("nan") if v is None else v for v in vs] for k, vs in values.items()}


def result_body(result: ForecastResult, prepared: Prepared, family: str) -> dict[str, Any]:
    return {
        "request_id": result.request_id,
        "model": {"name": result.model, "family": family, "random_weights": result.random_weights},
        "policy": result.policy,
        "series": prepared.series,
        "timestamps": [t.isoformat() for t in prepared.timestamps] if prepared.timestamps is not None else None,
        "median": result.median.tolist(),
        "quantile_levels": list(result.quantile_levels),
        "quantiles": {f"{q:g}": result.quantiles[:, j].tolist() for j, q in enumerate(result.quantile_levels)},
        "batch_size": result.batch_size,
        "cold_start": result.cold_start,
        "timings": result.timings.to_dict(),
        "context_used": result.context_used,
    }
