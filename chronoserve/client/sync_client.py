"""The blocking client, :class:`Client` (``httpx.Client`` underneath).

It carries out the flows of :mod:`.flows` with blocking calls and ``time.sleep`` between retries.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, cast

import httpx

from .answers import ChronoserveHTTPError, Forecast
from .bodies import DEFAULT_MAX_BODY_BYTES, DEFAULT_QUANTILES, MAX_BATCH_ITEMS, ArrayLike, forecast_body
from .flows import (
    _batch_flow,
    _Call,
    _Flow,
    _forecast_flow,
    _json_flow,
    _predict_df_flow,
    _ready_flow,
    _request_args,
    _setup,
    _Sleep,
    _status_flow,
    _text_flow,
)
from .frames import DF_QUANTILES, _plan_frame

if TYPE_CHECKING:
    import pandas as pd  # type: ignore[import-untyped,unused-ignore]

T = TypeVar("T")


class Client:
    """A blocking client of a chronoserve server (``httpx.Client`` underneath).

    ``transport`` is an httpx transport (tests: ``httpx.MockTransport``). ``session`` is an
    ``httpx.Client`` to use instead of building one, e.g. ``starlette.testclient.TestClient(app)``;
    its base URL, timeout and headers apply (``base_url`` and ``headers``, when given, are used on
    each request) and :meth:`close` leaves it open. ``sleep`` waits between retries
    (``time.sleep``; tests pass a recorder). ``max_body_bytes`` bounds the batch bodies sent.
    ``api_key``: a server's API key (``serve --api-key``), sent as ``Authorization: Bearer``.
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        timeout: float | httpx.Timeout | None = 60.0,
        transport: httpx.BaseTransport | None = None,
        headers: Mapping[str, str] | None = None,
        api_key: str | None = None,
        retries: int = 3,
        max_retry_after: float = 10.0,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        session: httpx.Client | None = None,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        self._settings, kwargs = _setup(
            base_url,
            timeout=timeout,
            transport=transport,
            headers=headers,
            api_key=api_key,
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
                    step = flow.send(self._http.request(**_request_args(self._settings, step)))
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
        deadline_ms: float | None = None,
        priority: int | None = None,
    ) -> Forecast:
        """One forecast (``POST /forecast``): of a series the server knows (``city``) or of ``target``.

        ``target`` and the covariates are lists or numpy arrays; NaN is a gap (sent as null).
        ``start`` (and ``freq_hours``, default 1) label an inline ``target``'s forecast hours.
        ``deadline_ms`` and ``priority`` (1 highest): the server answers 503 ``deadline_unmeetable``
        or 504 ``deadline_expired`` when it cannot answer in time (docs/http.md).
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
            deadline_ms=deadline_ms,
            priority=priority,
        )
        return self._run(_forecast_flow(self._settings, body))

    def forecast_batch(self, items: Sequence[Mapping[str, Any]]) -> list[Forecast | ChronoserveHTTPError]:
        """Many forecasts through ``POST /forecast/batch``; each item has :meth:`forecast`'s keywords.

        Returns, in order, a :class:`Forecast` or the item's :class:`ChronoserveHTTPError`
        (``item`` is its index). Items refused with 429 are sent again, up to ``retries`` times.
        Sent in chunks of at most 1000 items and ``max_body_bytes``. A whole call refused
        (every item invalid in shape, draining) raises.
        """
        bodies = [forecast_body(**item) for item in items]
        return self._run(_batch_flow(self._settings, bodies))

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
        return self._run(_predict_df_flow(self._settings, plan, batch_size))

    def models(self) -> dict[str, Any]:
        """``GET /models``: the default model, the catalog and the resident models."""
        return cast("dict[str, Any]", self._run(_json_flow(self._settings, _Call("GET", "/models"))))

    def series(self) -> list[dict[str, Any]]:
        """``GET /series``: the series the server knows (``id``, ``start``, ``rows``, ...)."""
        return cast("list[dict[str, Any]]", self._run(_json_flow(self._settings, _Call("GET", "/series")))["series"])

    def health(self) -> bool:
        """Whether ``GET /healthz`` answers 200 (connection errors raise)."""
        return self._run(_status_flow(self._settings, "/healthz")).status_code == 200

    def ready(self) -> bool:
        """Whether ``GET /readyz`` answers 200 (False on 503: warming up or draining)."""
        return self._run(_ready_flow(self._settings))

    def metrics(self) -> str:
        """``GET /metrics``: Prometheus text."""
        return self._run(_text_flow(self._settings, "/metrics"))
