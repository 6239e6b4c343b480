"""The HTTP client against the real app in-process (fake models), and its retry policy on a mock transport."""

from __future__ import annotations

import asyncio
import importlib.util
import subprocess
import sys
import warnings
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from asgi_lifespan import LifespanManager
from starlette.testclient import TestClient
from waiting import until, until_sync

from chronoserve.client import AsyncClient, ChronoserveHTTPError, Client, Forecast, forecast_body
from chronoserve.client.frames import _plan_frame
from chronoserve.errors import ChronoserveError
from chronoserve.server import ServerSettings, create_app
from chronoserve.testing import FakeLoader, fake_spec, server_settings

FAKE = "random/chronos-bolt-tiny"
LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def fake_loader() -> FakeLoader:
    specs = {
        FAKE: fake_spec(FAKE, family="chronos-bolt", context_length=2048, max_horizon=64, supports_covariates=False),
        "random/chronos-2": fake_spec("random/chronos-2", family="chronos-2", context_length=8192, batch_patch=16),
    }
    return FakeLoader(specs=specs)


def fast_settings(**kw: Any) -> ServerSettings:
    kw.setdefault("policy_options", {"max_wait": 0.001})
    kw.setdefault("default_model", FAKE)  # the fake loader serves FAKE, not the shipped default
    return server_settings(**kw)


class Sleeps(list[float]):
    """Records the pauses a client asks for, without pausing."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)

    async def asleep(self, seconds: float) -> None:
        self.append(seconds)


@asynccontextmanager
async def serve(settings: ServerSettings | None = None, **client_kw: Any) -> AsyncIterator[tuple[AsyncClient, Any]]:
    """An AsyncClient on the real app (fake models) over httpx's ASGI transport."""
    app = create_app(settings or fast_settings(), loader=fake_loader())
    async with LifespanManager(app) as manager:
        runtime = app.state.runtime
        # warm-up runs in the background
        await until(lambda: runtime.ready or runtime.warmup_error or not runtime.settings.warmup, "the warm-up")
        transport = httpx.ASGITransport(app=manager.app)
        async with AsyncClient("http://test", transport=transport, **client_kw) as client:
            yield client, app


@contextmanager
def serve_sync(settings: ServerSettings | None = None, **client_kw: Any) -> Iterator[tuple[Client, Any]]:
    """A blocking Client on the real app through starlette's TestClient (an httpx.Client)."""
    app = create_app(settings or fast_settings(), loader=fake_loader())
    with TestClient(app) as session:
        runtime = app.state.runtime
        until_sync(lambda: runtime.ready or runtime.warmup_error, "the warm-up")
        with Client(session=session, **client_kw) as client:
            yield client, app


def upstream_df_utils() -> ModuleType:
    """chronos.df_utils, loaded from its file: ``import chronos`` would import torch."""
    spec = importlib.util.find_spec("chronos")
    if spec is None or spec.origin is None:
        pytest.skip("chronos-forecasting is not installed")
    path = Path(spec.origin).parent / "df_utils.py"
    module_spec = importlib.util.spec_from_file_location("_upstream_chronos_df_utils", path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def upstream_expected(
    df: pd.DataFrame,
    prediction_length: int,
    *,
    id_column: str = "item_id",
    timestamp_column: str = "timestamp",
    target: str = "target",
    quantile_levels: tuple[float, ...] = LEVELS,
    freq: str | None = None,
) -> pd.DataFrame:
    """What upstream ``BaseChronosPipeline.predict_df`` returns with the fake model, built the way it
    builds it (df_utils for the frame and timestamps; float32 numbers as Chronos pipelines return)."""
    du = upstream_df_utils()
    if isinstance(df[timestamp_column].dtype, pd.DatetimeTZDtype):
        norm = df  # upstream's normalize_df cannot sort tz-aware columns; these frames are sorted already
    else:
        norm = du.normalize_df(df, id_column=id_column, timestamp_column=timestamp_column)
    with warnings.catch_warnings():  # pandas 3.1: infer_freq will return an offset (upstream's own warning)
        warnings.filterwarnings("ignore", message="A future version of pandas will return a BaseOffset")
        future = du.make_future_df(
            norm, prediction_length, freq=freq, id_column=id_column, timestamp_column=timestamp_column
        )
    lengths = norm[id_column].value_counts(sort=False).to_list()
    values = norm[target].to_numpy(dtype=np.float64)
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    last = []
    for i in range(len(lengths)):
        series = values[indptr[i] : indptr[i + 1]]
        last.append(np.float32(series[~np.isnan(series)][-1]))
    median = np.repeat(np.array(last, dtype=np.float32), prediction_length)
    result = future.copy()
    result["target_name"] = target
    result["predictions"] = median
    for q in quantile_levels:
        result[str(q)] = median + (np.float32(q) - np.float32(0.5))
    return result


def two_series_hourly() -> pd.DataFrame:
    """Two hourly series, rows shuffled, ids in the order b then a, NaN gaps (one at the end), an extra column."""
    b = pd.DataFrame(
        {
            "item_id": "b",
            "timestamp": pd.date_range("2021-03-01 00:00", periods=6, freq="h"),
            "target": [1.0, 2.0, np.nan, 4.0, 5.0, np.nan],
        }
    )
    a = pd.DataFrame(
        {
            "item_id": "a",
            "timestamp": pd.date_range("2021-02-10 12:00", periods=5, freq="h"),
            "target": [10.0, np.nan, 12.0, 13.0, 14.5],
        }
    )
    df = pd.concat([b, a], ignore_index=True)
    df["temperature"] = np.arange(len(df), dtype=np.float64)  # a covariate: ignored
    return df.iloc[[3, 0, 8, 5, 1, 2, 10, 4, 7, 6, 9]].reset_index(drop=True)


# -- forecasts -------------------------------------------------------------------------------------


async def test_forecast_by_city_returns_a_typed_forecast():
    async with serve() as (client, _):
        fc = await client.forecast(city="dongsi", horizon_hours=6, request_id="c1")
    assert isinstance(fc, Forecast)
    assert fc.request_id == "c1" and fc.series == "dongsi"
    assert fc.model == FAKE and fc.family == "chronos-bolt" and fc.random_weights is True
    assert fc.timestamps is not None and fc.timestamps[0] == datetime(2017, 1, 1, 0, 0)
    assert len(fc.timestamps) == 6 == fc.horizon
    assert fc.median.dtype == np.float64 and fc.median.shape == (6,)
    assert fc.quantiles.shape == (6, 3) and fc.quantile_levels == (0.1, 0.5, 0.9)
    np.testing.assert_allclose(fc.quantile(0.9) - fc.median, 0.4, atol=1e-3)  # float32 in the model
    assert fc.context_used == 512 and fc.batch_size >= 1 and fc.cold_start is False
    assert set(fc.timings) == {"queue", "load", "inference", "total"}
    assert fc.raw["request_id"] == "c1"


def test_sync_client_forecasts_inline_history_with_numpy_nans():
    with serve_sync() as (client, _):
        fc = client.forecast(
            target=np.array([1.0, np.nan, 3.0, 4.0]),
            horizon_hours=3,
            start=datetime(2020, 1, 1),
            quantile_levels=[0.25, 0.5],
        )
        by_city = client.forecast(city="tiantan", end="2016-10-01T00:00:00", context_hours=240, horizon_hours=2)
    np.testing.assert_array_equal(fc.median, [4.0, 4.0, 4.0])  # the fake repeats the last value
    np.testing.assert_array_equal(fc.quantile(0.25), [3.75, 3.75, 3.75])
    assert fc.timestamps == [datetime(2020, 1, 1, 4), datetime(2020, 1, 1, 5), datetime(2020, 1, 1, 6)]
    assert by_city.context_used == 240 and by_city.timestamps is not None
    assert by_city.timestamps[0] == datetime(2016, 10, 1)


def test_forecast_body_sends_nan_as_null_and_refuses_what_json_cannot_say():
    body = forecast_body(
        target=[1.0, None, float("nan")],
        past_covariates={"t": np.array([0.5, np.nan, 1.0])},
        start=pd.Timestamp("2020-01-01 00:00:00.000001500"),
    )
    assert body["target"] == [1.0, None, None]
    assert body["past_covariates"] == {"t": [0.5, None, 1.0]}
    assert body["start"] == "2020-01-01T00:00:00.000001"
    assert "model_name" not in body and "city" not in body  # the server's defaults apply
    with pytest.raises(ValueError, match="infinite"):
        forecast_body(target=[1.0, float("inf")])
    with pytest.raises(ValueError, match="1-D"):
        forecast_body(target=np.ones((2, 2)))
    with pytest.raises(ValueError, match="future_covariates.w: expected numbers"):
        forecast_body(target=[1.0], future_covariates={"w": ["windy"]})


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"horizon_hours": 2755369720}, "horizon_hours"),
        ({"horizon_hours": True}, "horizon_hours"),
        ({"context_hours": 0}, "context_hours"),
        ({"model_name": "x" * 1000}, "model"),
        ({"model_name": "a\x00b"}, "model"),
        ({"start": "9999-12-31T22:00:00", "horizon_hours": 3}, "start"),
        ({"start": "2000-01-01T00:00:00", "freq_hours": 1e300}, "start"),
        ({"start": "2000-01-01T00:00:00", "freq_hours": 1e-12}, "freq_hours"),
        ({"start": "yesterday"}, "start"),
        ({"quantile_levels": [0.5] * 100}, "quantile_levels"),
    ],
)
def test_forecast_body_checks_the_bounds_every_server_has_before_sending(kwargs, field):
    with pytest.raises(ValueError, match=field):
        forecast_body(target=[1.0, 2.0], **kwargs)


# -- errors name the field -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field", "message"),
    [
        ({"city": "dongsi", "horizon_hours": 65}, "horizon_hours", "exceeds what"),
        ({"city": "atlantis"}, "city", "unknown series"),
        ({"city": "dongsi", "model_name": "no/such-model"}, "model_name", "not served here"),
        ({"target": [1.0, 2.0], "context_hours": 3}, "context_hours", "history given"),
        (
            {"target": [1.0, 2.0], "model_name": "random/chronos-2", "past_covariates": {"t": [1.0]}},
            "past_covariates.t",
            "must match",
        ),
        ({"horizon_hours": 4}, "city", "exactly one of"),
    ],
)
async def test_invalid_requests_raise_naming_the_field(kwargs, field, message):
    async with serve() as (client, _):
        with pytest.raises(ChronoserveHTTPError) as caught:
            await client.forecast(**kwargs)
    error = caught.value
    assert isinstance(error, ChronoserveError)
    assert error.status == 422 and error.field == field
    assert message in str(error)
    if field is not None:
        assert repr(field) in str(error)
    assert error.detail[0]["msg"]


def test_sync_client_raises_the_same_errors():
    with serve_sync() as (client, _), pytest.raises(ChronoserveHTTPError, match="'horizon_hours'") as caught:
        client.forecast(city="dongsi", horizon_hours=65)
    assert caught.value.status == 422 and caught.value.field == "horizon_hours"


# -- batches ---------------------------------------------------------------------------------------


async def test_forecast_batch_gives_each_item_its_result_or_error():
    async with serve() as (client, _):
        out = await client.forecast_batch(
            [
                {"city": "dongsi", "horizon_hours": 4},
                {"city": "atlantis", "horizon_hours": 4},
                {"target": np.array([1.0, np.nan]), "horizon_hours": 2},
            ]
        )
        assert await client.forecast_batch([]) == []
    assert isinstance(out[0], Forecast) and out[0].horizon == 4
    assert isinstance(out[1], ChronoserveHTTPError)
    assert out[1].status == 422 and out[1].field == "city" and out[1].item == 1
    assert isinstance(out[2], Forecast)
    np.testing.assert_array_equal(out[2].median, [1.0, 1.0])


async def test_batch_items_refused_for_a_full_queue_are_sent_again():
    # Two items fit the queue and wait 0.2 s for a batch; the third is refused (429), then sent again.
    settings = fast_settings(max_queue=2, warmup=False, policy_options={"max_batch": 100, "max_wait": 0.2})
    sleeps = Sleeps()
    async with serve(settings, sleep=sleeps.asleep) as (client, _):
        out = await client.forecast_batch([{"target": [float(i)], "horizon_hours": 1} for i in range(3)])
    assert all(isinstance(r, Forecast) for r in out), out
    assert [float(r.median[0]) for r in out if isinstance(r, Forecast)] == [0.0, 1.0, 2.0]
    assert sleeps == [1.0]


def batch_answer(n: int) -> dict[str, Any]:
    return {"results": [{"status": 200, "result": forecast_json(i)} for i in range(n)]}


def forecast_json(i: int = 0, h: int = 2) -> dict[str, Any]:
    return {
        "request_id": f"r{i}",
        "model": {"name": FAKE, "family": "chronos-bolt", "random_weights": True},
        "policy": "batched",
        "series": None,
        "timestamps": None,
        "median": [float(i)] * h,
        "quantile_levels": [0.1, 0.5, 0.9],
        "quantiles": {"0.1": [i - 0.4] * h, "0.5": [float(i)] * h, "0.9": [None] * h},
        "batch_size": 1,
        "cold_start": False,
        "timings": {"queue": 0.0, "load": 0.0, "inference": 0.0, "total": 0.0},
        "context_used": 1,
    }


def test_batches_are_split_at_1000_items_and_errors_point_at_the_callers_index():
    sizes: list[int] = []
    fail_second = True

    def handler(request: httpx.Request) -> httpx.Response:
        n = len(httpx.Response(200, content=request.content).json()["requests"])
        sizes.append(n)
        if fail_second and len(sizes) == 2:
            detail = [{"loc": ["body", "requests", 1, "horizon_hours"], "msg": "bad", "type": "x"}]
            return httpx.Response(422, json={"detail": detail})
        return httpx.Response(200, json=batch_answer(n))

    items = [{"target": [1.0], "horizon_hours": 2}] * 2500
    with Client(transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(ChronoserveHTTPError) as caught:
            client.forecast_batch(items)
        assert sizes == [1000, 1000]
        assert caught.value.field == "requests.1001.horizon_hours"  # the caller's index, not the chunk's

        sizes.clear()
        fail_second = False
        out = client.forecast_batch(items)
    assert sizes == [1000, 1000, 500]
    assert len(out) == 2500 and all(isinstance(r, Forecast) for r in out)
    first = out[0]
    assert isinstance(first, Forecast)
    assert np.isnan(first.quantile(0.9)).all()  # null in the answer: NaN


def test_batches_stay_under_the_body_limit():
    sizes: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert len(request.content) <= 2000 or len(sizes) == 3
        n = len(httpx.Response(200, content=request.content).json()["requests"])
        sizes.append(n)
        return httpx.Response(200, json=batch_answer(n))

    items: list[dict[str, Any]] = [{"target": [1.0] * 40} for _ in range(20)]
    items.append({"target": [1.0] * 1000})  # too large alone: sent alone
    with Client(transport=httpx.MockTransport(handler), max_body_bytes=2000) as client:
        out = client.forecast_batch(items)
    assert len(out) == 21 and sum(sizes) == 21 and sizes[-1] == 1 and max(sizes) < 20


# -- retries -----------------------------------------------------------------------------------------


def scripted(*answers: httpx.Response) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    """A transport that answers with ``answers`` in turn (the last one repeats)."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answers[min(len(seen), len(answers)) - 1]

    return httpx.MockTransport(handler), seen


def too_busy(after: str | None = "3", status: int = 429) -> httpx.Response:
    headers = {"Retry-After": after} if after is not None else {}
    return httpx.Response(status, json={"detail": "queue full (2 requests waiting); retry later"}, headers=headers)


def test_429_is_retried_after_retry_after_seconds():
    transport, seen = scripted(too_busy("3"), too_busy("3"), httpx.Response(200, json=forecast_json(7)))
    sleeps = Sleeps()
    with Client(transport=transport, sleep=sleeps) as client:
        fc = client.forecast(target=[1.0])
    assert fc.request_id == "r7" and len(seen) == 3
    assert sleeps == [3.0, 3.0]


def test_retries_give_up_and_raise_the_last_error():
    transport, seen = scripted(too_busy("120"))  # capped at max_retry_after
    sleeps = Sleeps()
    with Client(transport=transport, sleep=sleeps, retries=2) as client, pytest.raises(ChronoserveHTTPError) as caught:
        client.forecast(target=[1.0])
    assert len(seen) == 3 and sleeps == [10.0, 10.0]
    assert caught.value.status == 429 and caught.value.retry_after == 120.0
    assert "queue full" in str(caught.value)


@pytest.mark.parametrize(
    ("answer", "retried", "delay"),
    [
        (too_busy(None), True, 1.0),  # 429 without Retry-After: 1 s
        (too_busy("5", status=503), True, 5.0),  # 503 that says when: retried
        (too_busy(None, status=503), False, None),  # 503 that does not (draining): not
        (too_busy("0.25", status=422), False, None),  # never a client error
        (
            lambda: too_busy(format_datetime(datetime.now(timezone.utc) + timedelta(seconds=30), usegmt=True)),
            True,
            30.0,
        ),
        (too_busy("soon"), True, 1.0),  # unreadable: the default
        (
            lambda: httpx.Response(
                503,
                headers={"Retry-After": "2"},
                json={"detail": [{"loc": ["body", "deadline_ms"], "msg": "late", "type": "deadline_unmeetable"}]},
            ),
            False,
            None,
        ),  # a deadline the server cannot meet: later would be later still
    ],
)
async def test_which_answers_are_retried(answer, retried, delay):
    if callable(answer):  # an HTTP date: made when the test runs
        answer = answer()
    transport, seen = scripted(answer, httpx.Response(200, json=forecast_json()))
    sleeps = Sleeps()
    async with AsyncClient(transport=transport, sleep=sleeps.asleep, max_retry_after=60) as client:
        if retried:
            await client.forecast(city="dongsi")
        else:
            with pytest.raises(ChronoserveHTTPError):
                await client.forecast(city="dongsi")
    assert len(seen) == (2 if retried else 1)
    if retried:
        assert sleeps == [pytest.approx(delay, abs=1.5)]
    else:
        assert sleeps == []


async def test_a_full_queue_on_the_real_app_is_retried_then_raised():
    settings = fast_settings(max_queue=1, warmup=False, policy_options={"max_batch": 100, "max_wait": 30})
    sleeps = Sleeps()
    async with serve(settings, sleep=sleeps.asleep, retries=2) as (client, app):
        held = asyncio.create_task(client.forecast(target=[1.0], horizon_hours=1))
        engine = app.state.runtime.engine
        await until(lambda: engine.stats().queued == 1, "the first request in the queue")
        with pytest.raises(ChronoserveHTTPError) as caught:
            await client.forecast(target=[2.0], horizon_hours=1)
        held.cancel()
        await asyncio.gather(held, return_exceptions=True)
    assert caught.value.status == 429 and caught.value.retry_after == 1.0
    assert sleeps == [1.0, 1.0]


def test_connection_errors_propagate_as_httpx_errors():
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with Client(transport=httpx.MockTransport(refuse)) as client, pytest.raises(httpx.ConnectError):
        client.health()


# -- predict_df: upstream's contract -------------------------------------------------------------------


def test_predict_df_matches_upstream_columns_dtypes_timestamps_and_values():
    df = two_series_hourly()
    with serve_sync() as (client, _):
        out = client.predict_df(df, prediction_length=5)
    expected = upstream_expected(df, 5)
    assert list(out.columns) == ["item_id", "timestamp", "target_name", "predictions", *map(str, LEVELS)]
    pd.testing.assert_frame_equal(out, expected, check_exact=True)
    assert list(out["item_id"].unique()) == ["b", "a"]  # first-appearance order, as upstream
    assert out["timestamp"].iloc[0] == pd.Timestamp("2021-03-01 06:00")
    assert out["predictions"].iloc[0] == 5.0  # b's last observed value; its last row is NaN
    assert out["0.1"].iloc[-1] == np.float32(14.5) - np.float32(0.4)


async def test_async_predict_df_with_other_names_levels_and_horizon():
    df = two_series_hourly().rename(columns={"item_id": "site", "timestamp": "ts", "target": "pm25"})
    levels = (0.05, 0.5, 0.95)
    async with serve() as (client, _):
        out = await client.predict_df(
            df, id_column="site", timestamp_column="ts", target="pm25", quantile_levels=levels
        )
    assert len(out) == 2 * 24  # the default prediction_length here: 24
    expected = upstream_expected(df, 24, id_column="site", timestamp_column="ts", target="pm25", quantile_levels=levels)
    pd.testing.assert_frame_equal(out, expected, check_exact=True)
    assert list(out.columns)[-3:] == ["0.05", "0.5", "0.95"]


def frame(timestamps: list[pd.DatetimeIndex], ids: list[Any] | None = None) -> pd.DataFrame:
    ids = ids or [f"s{i}" for i in range(len(timestamps))]
    parts = [
        pd.DataFrame({"item_id": i, "timestamp": ts, "target": np.arange(len(ts), dtype=np.float64) + 1.0})
        for i, ts in zip(ids, timestamps, strict=True)
    ]
    return pd.concat(parts, ignore_index=True)


@pytest.mark.parametrize(
    ("name", "df"),
    [
        ("30min", frame([pd.date_range("2020-01-01", periods=7, freq="30min")])),
        (
            "daily",
            frame([pd.date_range("2020-01-01", periods=5, freq="D"), pd.date_range("2021-01-01", periods=2, freq="D")]),
        ),
        ("month starts", frame([pd.date_range("2020-01-01", periods=4, freq="MS")])),
        ("weekly", frame([pd.date_range("2020-01-05", periods=4, freq="W-SUN")])),
        ("business days", frame([pd.date_range("2020-01-01", periods=6, freq="B")])),
        ("hourly across DST", frame([pd.date_range("2021-03-28 00:00", periods=4, freq="h", tz="Europe/Berlin")])),
        ("integer ids", frame([pd.date_range("2020-01-01", periods=3, freq="h")] * 2, ids=[7, 3])),
        ("string timestamps", frame([pd.date_range("2020-01-01", periods=3, freq="h")]).astype({"timestamp": str})),
    ],
)
async def test_predict_df_future_timestamps_are_upstreams_for_any_frequency(name, df):
    async with serve() as (client, _):
        out = await client.predict_df(df, prediction_length=4, quantile_levels=[0.5])
    pd.testing.assert_frame_equal(out, upstream_expected(df, 4, quantile_levels=(0.5,)), check_exact=True)


def test_predict_df_labels_the_servers_answers_only_when_its_arithmetic_agrees():
    def bodies(df: pd.DataFrame, **kw: Any) -> list[dict[str, Any]]:
        options = {"id_column": "item_id", "timestamp_column": "timestamp", "target": "target", "prediction_length": 3}
        options |= {"quantile_levels": LEVELS, "model_name": None, "context_hours": None, "freq": None} | kw
        return _plan_frame(df, **options).bodies

    hourly = bodies(two_series_hourly())
    assert [(b["start"], b["freq_hours"]) for b in hourly] == [
        ("2021-03-01T00:00:00", 1.0),
        ("2021-02-10T12:00:00", 1.0),
    ]
    assert hourly[0]["target"] == [1.0, 2.0, None, 4.0, 5.0, None]
    (half,) = bodies(frame([pd.date_range("2020-01-01", periods=3, freq="30min")]))
    assert half["freq_hours"] == 0.5
    (monthly,) = bodies(frame([pd.date_range("2020-01-01", periods=4, freq="MS")]))
    assert "start" not in monthly and "freq_hours" not in monthly
    (trimmed, _) = bodies(two_series_hourly(), context_hours=2)
    assert trimmed["target"] == [5.0, None] and trimmed["start"] == "2021-03-01T04:00:00"


def test_predict_df_context_hours_keeps_the_last_points():
    df = frame([pd.date_range("2020-01-01", periods=4, freq="h")])
    df.loc[3, "target"] = np.nan
    with serve_sync() as (client, _):
        out = client.predict_df(df, prediction_length=2, context_hours=2)
        assert out["predictions"].tolist() == [3.0, 3.0]
        with pytest.raises(ChronoserveHTTPError) as caught:
            client.predict_df(df, prediction_length=2, context_hours=1)  # only a gap left
    assert caught.value.status == 422 and caught.value.item == "s0" and caught.value.field == "target"
    assert "for item 's0'" in str(caught.value)


@pytest.mark.parametrize(
    ("change", "kwargs", "message"),
    [
        (None, {"target": ["target"]}, "Expected `target` to be str"),
        (None, {"target": "pm25"}, "df does not contain the target column 'pm25'"),
        (lambda df: df.drop(columns="item_id"), {}, "Missing columns: {'item_id'}"),
        (lambda df: df.assign(target="x"), {}, "Target column 'target' must be numeric"),
        (lambda df: df.drop(index=2), {}, "Could not infer frequency for series s0"),
        (lambda df: df.iloc[:2], {}, "no time series has at least 3"),
        (lambda df: df.iloc[:0], {}, "df has no rows"),
        (None, {"prediction_length": 0}, "prediction_length must be a positive integer"),
        (None, {"quantile_levels": [0.5, 1.0]}, "strictly between 0 and 1"),
        (None, {"context_hours": 0}, "context_hours must be a positive integer"),
    ],
)
def test_predict_df_validates_the_frame_like_upstream_before_sending(change, kwargs, message):
    df = frame([pd.date_range("2020-01-01", periods=4, freq="h")])
    if change is not None:
        df = change(df)

    def nothing_to_send(request: httpx.Request) -> httpx.Response:
        raise AssertionError("nothing should be sent")

    with Client(transport=httpx.MockTransport(nothing_to_send)) as client, pytest.raises(ValueError, match=message):
        client.predict_df(df, **kwargs)


def test_predict_df_rejects_series_of_different_frequencies_and_accepts_short_ones_with_freq():
    mixed = frame([pd.date_range("2020-01-01", periods=4, freq="h"), pd.date_range("2020-01-01", periods=4, freq="D")])
    refuse = httpx.MockTransport(lambda r: httpx.Response(500))
    with Client(transport=refuse) as client, pytest.raises(ValueError, match="All time series must have the same"):
        client.predict_df(mixed)
    short = frame([pd.date_range("2020", periods=2, freq="h")] * 2)
    with serve_sync() as (client, _):
        out = client.predict_df(short, prediction_length=3, freq="h")
    pd.testing.assert_frame_equal(out, upstream_expected(short, 3, freq="h"), check_exact=True)


# -- the other endpoints and the client's own life ------------------------------------------------------


async def test_models_series_health_ready_metrics():
    async with serve() as (client, app):
        await client.forecast(city="dongsi")
        models = await client.models()
        series = await client.series()
        assert await client.health() is True
        assert await client.ready() is True
        metrics = await client.metrics()
        app.state.runtime.begin_drain()
        assert await client.ready() is False
        with pytest.raises(ChronoserveHTTPError) as caught:  # 503 without Retry-After: not retried
            await client.forecast(target=[1.0])
    assert models["default"] == FAKE and any(m["name"] == "chronos-2" for m in models["catalog"])
    assert len(series) == 12 and "dongsi" in {s["id"] for s in series}
    assert "chronoserve_requests_total" in metrics
    assert caught.value.status == 503 and "shutting down" in str(caught.value)


def test_sync_client_endpoints_and_session_ownership():
    app = create_app(fast_settings(), loader=fake_loader())
    with TestClient(app) as session:
        client = Client(session=session)
        assert client.health() is True
        assert len(client.series()) == 12
        assert "resident" in client.models()
        assert "chronoserve_queue_depth" in client.metrics()
        client.close()  # leaves the session it was given open
        assert session.get("/healthz").status_code == 200
    with pytest.raises(ValueError, match="session"):
        Client(session=httpx.Client(), transport=httpx.MockTransport(lambda r: httpx.Response(200)))
    with pytest.raises(ValueError, match="retries"):
        Client(retries=-1)


def test_base_url_and_headers_are_used():
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"status": "alive"})

    with Client("http://forecasts.example:9000/", transport=httpx.MockTransport(handler), headers={"x-k": "v"}) as c:
        c.health()
    with httpx.Client(transport=httpx.MockTransport(handler)) as session:
        Client("http://other.example", session=session, headers={"x-k": "w"}).health()
    assert str(seen[0].url) == "http://forecasts.example:9000/healthz" and seen[0].headers["x-k"] == "v"
    assert str(seen[1].url) == "http://other.example/healthz" and seen[1].headers["x-k"] == "w"


def test_importing_the_client_does_not_import_pandas():
    code = "import sys, chronoserve.client; assert 'pandas' not in sys.modules and 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_batches_are_split_so_that_no_answer_is_over_the_servers_answer_limit():
    from chronoserve.client.bodies import _chunks
    from chronoserve.limits import MAX_ANSWER_VALUES

    encoded = [b"{}"] * 6
    values = [MAX_ANSWER_VALUES // 2] * 4 + [MAX_ANSWER_VALUES * 2, 10]
    chunks = list(_chunks(range(6), encoded, values, max_items=1000, max_bytes=1 << 20))
    assert chunks == [[0, 1], [2, 3], [4], [5]]  # an item over the limit alone goes alone


def test_the_client_sends_a_deadline_and_a_priority_and_checks_them_first():
    from chronoserve.client.bodies import forecast_body

    body = forecast_body(city="dongsi", deadline_ms=250, priority=1)
    assert body["deadline_ms"] == 250.0 and body["priority"] == 1
    assert "deadline_ms" not in forecast_body(city="dongsi") and "priority" not in forecast_body(city="dongsi")
    for bad, message in [
        ({"deadline_ms": 0}, "deadline_ms: must be in"),
        ({"deadline_ms": float("nan")}, "deadline_ms: must be in"),
        ({"deadline_ms": "250"}, "deadline_ms: must be a number"),
        ({"priority": 0}, "priority: must be at least 1"),
        ({"priority": 101}, "priority: must be at most 100"),
    ]:
        with pytest.raises(ValueError, match=message):
            forecast_body(city="dongsi", **bad)
