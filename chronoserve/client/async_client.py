"""The asyncio client, :class:`AsyncClient` (``httpx.AsyncClient`` underneath).

The twin of :class:`~.sync_client.Client`: it carries out the same flows with awaited calls.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
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
        api_key: str | None = None,
        retries: int = 3,
        max_retry_after: float = 10.0,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        session: httpx.AsyncClient | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
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
                    step = flow.send(await self._http.request(**_request_args(self._settings, step)))
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
        deadline_ms: float | None = None,
        priority: int | None = None,
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
            deadline_ms=deadline_ms,
            priority=priority,
        )
        return await self._run(_forecast_flow(self._settings, body))

    async def forecast_batch(self, items: Sequence[Mapping[str, Any]]) -> list[Forecast | ChronoserveHTTPError]:
        """See :meth:`Client.forecast_batch`."""
        bodies = [forecast_body(**item) for item in items]
        return await self._run(_batch_flow(self._settings, bodies))

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
        return await self._run(_predict_df_flow(self._settings, plan, batch_size))

    async def models(self) -> dict[str, Any]:
        """See :meth:`Client.models`."""
        return cast("dict[str, Any]", await self._run(_json_flow(self._settings, _Call("GET", "/models"))))

    async def series(self) -> list[dict[str, Any]]:
        """See :meth:`Client.series`."""
        body = await self._run(_json_flow(self._settings, _Call("GET", "/series")))
        return cast("list[dict[str, Any]]", body["series"])

    async def health(self) -> bool:
        """See :meth:`Client.health`."""
        return (await self._run(_status_flow(self._settings, "/healthz"))).status_code == 200

    async def ready(self) -> bool:
        """See :meth:`Client.ready`."""
        return await self._run(_ready_flow(self._settings))

    async def metrics(self) -> str:
        """See :meth:`Client.metrics`."""
        return await self._run(_text_flow(self._settings, "/metrics"))
