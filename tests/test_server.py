"""The HTTP server in-process (httpx's ASGI transport): every endpoint, every class of bad input."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from asgi_lifespan import LifespanManager
from waiting import metric_value, queue_depth, until

from chronoserve.models.catalog import DEFAULT_MODEL
from chronoserve.server import ServerSettings, create_app
from chronoserve.server.schemas import BatchOut, ForecastIn, ForecastOut, ModelsOut
from chronoserve.testing import FakeLoader, fake_spec, server_settings

FAKE = "random/chronos-bolt-tiny"  # a catalog name, served by the fake loader in these tests


def fake_loader(**kw) -> FakeLoader:
    specs = {
        FAKE: fake_spec(FAKE, family="chronos-bolt", context_length=2048, max_horizon=64, supports_covariates=False),
        "random/chronos-2": fake_spec("random/chronos-2", family="chronos-2", context_length=8192, batch_patch=16),
        "/models/mine": fake_spec("/models/mine", family="chronos-bolt", supports_covariates=False),
    }
    return FakeLoader(specs=specs, **kw)


@asynccontextmanager
async def client_for(
    settings: ServerSettings | None = None, loader: FakeLoader | None = None, **engine_options
) -> AsyncIterator[httpx.AsyncClient]:
    settings = settings or server_settings(default_model=FAKE, policy_options={"max_wait": 0.001})
    app = create_app(settings, loader=loader or fake_loader(), engine_options=engine_options or None)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            runtime = app.state.runtime
            await until(lambda: runtime.ready or runtime.warmup_error, "the warm-up")  # it runs in the background
            yield client


async def server_queue_depth(client: httpx.AsyncClient) -> float:
    """The server's ``chronoserve_queue_depth`` gauge (all models), read from its /metrics."""
    return queue_depth((await client.get("/metrics")).text)


def loc(response: httpx.Response) -> list:
    return response.json()["detail"][0]["loc"]


# -- forecasts -----------------------------------------------------------------------------


async def test_forecast_from_a_known_city():
    async with client_for() as client:
        r = await client.post("/forecast", json={"city": "dongsi", "horizon_hours": 6, "request_id": "a1"})
    assert r.status_code == 200, r.text
    body = ForecastOut.model_validate(r.json())
    assert body.request_id == "a1"
    assert body.series == "dongsi"
    assert len(body.median) == 6
    assert len(body.timestamps) == 6
    assert body.timestamps[0] == "2017-01-01T00:00:00"  # the hour after the last reading
    assert body.timestamps[-1] == "2017-01-01T05:00:00"
    assert body.model.name == FAKE and body.model.random_weights is True
    assert set(body.quantiles) == {"0.1", "0.5", "0.9"}
    assert body.context_used == 512
    t = body.timings
    assert t.queue + t.load + t.inference == pytest.approx(t.total)


async def test_forecast_with_end_and_context_hours():
    async with client_for() as client:
        r = await client.post(
            "/forecast",
            json={"city": "tiantan", "end": "2016-10-01T00:00:00", "context_hours": 240, "horizon_hours": 12},
        )
    assert r.status_code == 200, r.text
    assert r.json()["timestamps"][0] == "2016-10-01T00:00:00"
    assert r.json()["context_used"] == 240


async def test_forecast_inline_history_with_gaps_and_timestamps():
    async with client_for() as client:
        r = await client.post(
            "/forecast",
            json={
                "target": [1.0, None, 3.0, 4.0],
                "horizon_hours": 3,
                "start": "2020-01-01T00:00:00",
                "quantile_levels": [0.25, 0.5],
            },
        )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["median"] == [4.0, 4.0, 4.0]  # the fake model repeats the last value
    assert body["timestamps"] == ["2020-01-01T04:00:00", "2020-01-01T05:00:00", "2020-01-01T06:00:00"]
    assert body["quantiles"]["0.25"] == [3.75, 3.75, 3.75]


async def test_covariates_from_a_city_go_to_chronos2():
    loader = fake_loader()
    async with client_for(loader=loader) as client:
        r = await client.post(
            "/forecast",
            json={
                "city": "dongsi",
                "model_name": "random/chronos-2",
                "use_covariates": True,
                "known_future_covariates": True,
                "end": "2016-11-01T00:00:00",
                "horizon_hours": 24,
            },
        )
    assert r.status_code == 200, r.text
    (seen,) = [b for m in loader.instances if m.spec.name == "random/chronos-2" for b in m.batches]
    request = seen[0]
    assert sorted(request.past_covariates) == ["relative_humidity", "temperature", "wind_speed"]
    assert sorted(request.future_covariates) == ["relative_humidity", "temperature", "wind_speed"]


async def test_batch_endpoint_answers_each_item_with_its_own_status():
    async with client_for() as client:
        r = await client.post(
            "/forecast/batch",
            json={
                "requests": [
                    {"city": "dongsi", "horizon_hours": 4},
                    {"city": "atlantis", "horizon_hours": 4},
                    {"target": [1.0, 2.0], "horizon_hours": 2},
                ]
            },
        )
    assert r.status_code == 200, r.text
    out = BatchOut.model_validate(r.json())
    assert [i.status for i in out.results] == [200, 422, 200]
    assert out.results[1].error.detail[0].loc == ["body", "requests", 1, "city"]


# -- bad input: 422 naming the field --------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"city": "atlantis"}, "city", "unknown series"),
        ({"city": "dongsi", "model_name": "no/such-model"}, "model_name", "not served here"),
        ({"city": "dongsi", "model_name": "/etc"}, "model_name", "not served here"),
        ({"city": "dongsi", "horizon_hours": 65}, "horizon_hours", "exceeds"),
        ({"city": "dongsi", "horizon_hours": 0}, "horizon_hours", "greater than or equal to 1"),
        ({"city": "dongsi", "context_hours": 2049}, "context_hours", "context limit"),
        ({"city": "dongsi", "context_hours": 5000}, "context_hours", "hours of history"),
        ({"target": [None, None], "horizon_hours": 2}, "target", "no observed value"),
        ({"target": [1.0, 2.0], "context_hours": 3}, "context_hours", "history given"),
        ({"city": "dongsi", "use_covariates": True}, "use_covariates", "only Chronos-2"),
        (
            {"target": [1.0, 2.0], "model_name": "random/chronos-2", "past_covariates": {"t": [1.0]}},
            "past_covariates.t",
            "must match",
        ),
        (
            {
                "target": [1.0, 2.0],
                "model_name": "random/chronos-2",
                "horizon_hours": 2,
                "past_covariates": {"t": [1.0, 2.0]},
                "future_covariates": {"t": [1.0]},
            },
            "future_covariates.t",
            "must match",
        ),
        ({"city": "dongsi", "quantile_levels": [0.5, 1.5]}, "quantile_levels.1", "less than 1"),
        ({"city": "dongsi", "horizon_hours": "soon"}, "horizon_hours", "integer"),
        ({"city": "dongsi", "colour": "red"}, "colour", "Extra inputs"),
        ({"horizon_hours": 4}, "city", "exactly one of"),
        ({"city": "dongsi", "target": [1.0]}, "target", "exclude each other"),
        ({"city": "dongsi", "start": "2016-01-01T00:00:00"}, "start", "goes with an inline `target`"),
        ({"target": [1.0], "use_covariates": True}, "use_covariates", "goes with `city`"),
        ({"city": "dongsi", "known_future_covariates": True}, "known_future_covariates", "needs `use_covariates`"),
        ({"city": "dongsi", "end": "1999-01-01T00:00:00"}, "end", ""),
    ],
)
async def test_invalid_requests_get_422_naming_the_field(body, field, message):
    async with client_for() as client:
        r = await client.post("/forecast", json=body)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"][0]
    if field is not None:
        assert detail["loc"][:2] == ["body", field] or ".".join(map(str, detail["loc"][1:])) == field
    assert message in detail["msg"]


async def test_not_json_gets_422_and_too_large_bodies_413():
    async with client_for(server_settings(default_model=FAKE, max_body_bytes=1000)) as client:
        r = await client.post("/forecast", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 422
        assert r.json()["detail"][0]["type"] == "json_invalid"
        r = await client.post("/forecast", json={"target": [1.0] * 500, "horizon_hours": 2})
        assert r.status_code == 413
        assert r.json()["detail"][0]["type"] == "body_too_large"
        metrics = (await client.get("/metrics")).text
    assert 'chronoserve_rejected_requests_total{reason="body_too_large"} 1.0' in metrics


async def test_operator_allowed_directories_are_served_others_are_not():
    settings = server_settings(default_model=FAKE, models=("/models/mine",), policy_options={"max_wait": 0.001})
    async with client_for(settings) as client:
        ok = await client.post("/forecast", json={"target": [1.0, 2.0], "model_name": "/models/mine"})
        refused = await client.post("/forecast", json={"target": [1.0, 2.0], "model_name": "/models/other"})
    assert ok.status_code == 200, ok.text
    assert refused.status_code == 422


# -- overload, failures, disconnects ----------------------------------------------------------


async def test_full_queue_answers_429_with_retry_after_before_any_work():
    settings = server_settings(
        default_model=FAKE, max_queue=2, warmup=False, policy_options={"max_batch": 100, "max_wait": 30}
    )
    async with client_for(settings) as client:
        first = [
            asyncio.create_task(client.post("/forecast", json={"target": [1.0], "horizon_hours": 1})) for _ in range(2)
        ]

        async def both_queued() -> bool:
            return await server_queue_depth(client) == 2

        await until(both_queued, "2 requests in the server's queue")
        r = await client.post("/forecast", json={"target": [1.0], "horizon_hours": 1})
        assert r.status_code == 429
        assert r.headers["retry-after"] == "1"
        assert "queue full" in r.json()["detail"]
        for task in first:
            task.cancel()
        metrics = (await client.get("/metrics")).text
    assert 'chronoserve_rejected_requests_total{reason="queue_full"} 1.0' in metrics


async def test_a_model_that_fails_to_load_gives_503_and_others_keep_serving():
    loader = fake_loader(fail_load={"random/chronos-2"})
    async with client_for(loader=loader) as client:
        bad = await client.post("/forecast", json={"target": [1.0, 2.0], "model_name": "random/chronos-2"})
        good = await client.post("/forecast", json={"target": [1.0, 2.0]})
    assert bad.status_code == 503
    assert "could not load" in bad.json()["detail"]
    assert good.status_code == 200


async def test_client_disconnect_while_queued_drops_the_request():
    settings = server_settings(default_model=FAKE, warmup=False, policy_options={"max_batch": 100, "max_wait": 0.3})
    loader = fake_loader()
    app = create_app(settings, loader=loader)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            task = asyncio.create_task(client.post("/forecast", json={"target": [1.0], "horizon_hours": 1}))
            engine = app.state.runtime.engine
            await until(lambda: sum(engine.queue_depths().values()) == 1, "the request in the queue")
            task.cancel()
            await until(lambda: engine.stats().cancelled == 1, "the request cancelled")
            assert sum(engine.queue_depths().values()) == 0
            r = await client.post("/forecast", json={"target": [5.0], "horizon_hours": 1})
            assert r.json()["median"] == [5.0]


# -- the other endpoints ----------------------------------------------------------------------


async def test_models_lists_the_catalog_and_the_resident_models():
    async with client_for() as client:
        await client.post("/forecast", json={"city": "dongsi"})
        body = (await client.get("/models")).json()
    names = {m["name"] for m in body["catalog"]}
    assert {"chronos-2", "chronos-bolt-tiny", "chronos-t5-large"} <= names
    (resident,) = body["resident"]
    assert resident["name"] == FAKE
    assert resident["status"] == "ready"
    assert resident["bytes"] > 0
    assert resident["loaded_at"] is not None
    assert (resident["backend"], resident["dtype"]) == ("fake", "float32")  # what runs it, as loaded
    assert body["default"] == FAKE
    ModelsOut.model_validate(body)
    (trained,) = [m for m in body["catalog"] if m["trained_here"]]
    assert trained["name"] == DEFAULT_MODEL == ServerSettings().default_model
    assert ForecastIn.model_fields["model_name"].default == DEFAULT_MODEL
    assert trained["hub_id"] is None and "trained" in trained["description"].lower()
    assert all(m["description"] == "" for m in body["catalog"] if not m["trained_here"])
    assert body["policy"]["name"] == "batched" and body["policy"]["max_batch"] == 32


async def test_models_shows_what_batched_auto_chose_per_model():
    options = {"max_batch": "auto", "max_wait": "auto", "slo_p95": 0.2}
    async with client_for(policy_options=options) as client:
        await client.post("/forecast", json={"city": "dongsi"})
        policy = (await client.get("/models")).json()["policy"]
    assert policy["max_batch"] == "auto" and policy["slo_p95"] == 0.2
    tuned = policy["tuned"][FAKE]
    assert set(tuned) == {"max_batch", "max_wait", "concurrency", "rate", "predicted_p95"}


async def test_series_lists_the_twelve_sites():
    async with client_for() as client:
        body = (await client.get("/series")).json()
    ids = [s["id"] for s in body["series"]]
    assert len(ids) == 12 and "dongsi" in ids
    dongsi = next(s for s in body["series"] if s["id"] == "dongsi")
    assert dongsi["rows"] == 4416
    assert dongsi["start"].startswith("2016-07-01")


async def test_health_and_readiness():
    loader = fake_loader()
    settings = server_settings(default_model=FAKE, policy_options={"max_wait": 0.001})
    app = create_app(settings, loader=loader)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            assert (await client.get("/healthz")).status_code == 200
            runtime = app.state.runtime
            runtime.ready = False
            r = await client.get("/readyz")
            assert r.status_code == 503 and r.json()["status"] == "warming_up"
            runtime.ready = True
            assert (await client.get("/readyz")).status_code == 200
            runtime.begin_drain()
            r = await client.get("/readyz")
            assert r.status_code == 503 and r.json()["status"] == "draining"
            r = await client.post("/forecast", json={"target": [1.0]})
            assert r.status_code == 503


async def test_metrics_count_requests_batches_and_loads():
    async with client_for() as client:
        for _ in range(3):
            await client.post("/forecast", json={"city": "dongsi"})
        await client.post("/forecast", json={"city": "atlantis"})
        text = (await client.get("/metrics")).text
    for name in (
        "chronoserve_queue_depth",
        "chronoserve_queue_time_seconds_bucket",
        "chronoserve_inference_time_seconds_bucket",
        "chronoserve_batch_size_bucket",
        "chronoserve_model_load_duration_seconds",
        "chronoserve_resident_models 1.0",
        "chronoserve_model_evictions",
        "chronoserve_rejected_requests",
    ):
        assert name in text, name
    # 3 forecasts plus the warm-up request
    assert f'chronoserve_requests_total{{model="{FAKE}",status="ok"}} 4.0' in text
    assert 'chronoserve_http_requests_total{code="422",route="/forecast"} 1.0' in text
    assert 'chronoserve_rejected_requests_total{reason="invalid_request"} 1.0' in text


async def test_a_request_without_model_name_gets_the_servers_default_model():
    settings = server_settings(default_model="random/chronos-2", policy_options={"max_wait": 0.001})
    async with client_for(settings) as client:
        unnamed = await client.post("/forecast", json={"target": [1.0, 2.0, 3.0], "horizon_hours": 2})
        named = await client.post("/forecast", json={"target": [1.0, 2.0], "horizon_hours": 2, "model_name": FAKE})
    assert unnamed.status_code == 200 and unnamed.json()["model"]["name"] == "random/chronos-2"
    assert named.status_code == 200 and named.json()["model"]["name"] == FAKE


async def test_openapi_and_docs():
    async with client_for() as client:
        spec = (await client.get("/openapi.json")).json()
        docs = await client.get("/docs")
    assert spec["openapi"].startswith("3.1")
    assert {"/forecast", "/forecast/batch", "/models", "/series", "/healthz", "/readyz", "/metrics"} <= set(
        spec["paths"]
    )
    assert "ForecastIn" in spec["components"]["schemas"]
    models_schema = spec["paths"]["/models"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert models_schema == {"$ref": "#/components/schemas/ModelsOut"}
    catalog_item = spec["components"]["schemas"]["CatalogModelOut"]["properties"]
    assert {"trained_here", "description"} <= set(catalog_item)
    assert docs.status_code == 200 and "openapi.json" in docs.text


async def test_nan_history_points_are_gaps_and_outputs_are_finite():
    async with client_for() as client:
        r = await client.post("/forecast", json={"target": [2.0, None, None], "horizon_hours": 2})
    assert r.status_code == 200
    assert all(not math.isnan(v) for v in r.json()["median"])


@pytest.mark.slow
async def test_a_burst_of_5000_gets_200_or_429_none_lost_and_the_metrics_count_them():
    settings = server_settings(default_model=FAKE, max_queue=64, policy_options={"max_batch": 32, "max_wait": 0.001})
    loader = fake_loader(predict_seconds=0.002)
    async with client_for(settings, loader=loader) as client:

        async def one(i: int) -> int:
            r = await client.post("/forecast", json={"target": [float(i), 1.0], "horizon_hours": 2})
            if r.status_code == 200:
                assert r.json()["median"] == [1.0, 1.0]
            elif r.status_code == 429:
                assert r.headers["retry-after"]
            return r.status_code

        codes = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(5000))), timeout=120)
        text = (await client.get("/metrics")).text
    ok, full = codes.count(200), codes.count(429)
    assert ok + full == 5000, sorted(set(codes))
    assert ok >= 64 and full > 0
    assert f'chronoserve_http_requests_total{{code="200",route="/forecast"}} {float(ok)}' in text
    assert f'chronoserve_http_requests_total{{code="429",route="/forecast"}} {float(full)}' in text
    assert f'chronoserve_rejected_requests_total{{reason="queue_full"}} {float(full)}' in text
    assert f'chronoserve_requests_total{{model="{FAKE}",status="ok"}} {float(ok + 1)}' in text  # + warm-up
    assert "chronoserve_queue_depth" in text


async def test_tiers_in_models_and_metrics_demotions_promotions_and_the_process_start():
    settings = server_settings(
        default_model=FAKE, policy_options={"max_wait": 0.001, "max_resident": 1}, host_budget=10**9
    )
    async with client_for(settings) as client:
        for model in ("random/chronos-2", FAKE):  # evicts the default model, then promotes it back from host
            r = await client.post("/forecast", json={"target": [1.0, 2.0, 3.0], "model_name": model})
            assert r.status_code == 200, r.text
        body = ModelsOut.model_validate((await client.get("/models")).json())
        metrics = (await client.get("/metrics")).text
    assert body.tiers["models"] == {FAKE: "resident", "random/chronos-2": "host"}
    assert body.tiers["host_models"] == ["random/chronos-2"] and body.tiers["host_budget"] == 10**9
    assert body.tiers["import_seconds"] is not None
    assert [m["loaded_from"] for m in body.resident] == ["host"]
    assert metric_value(metrics, "chronoserve_model_tier_loads_total", model=FAKE, tier="disk") == 1
    assert metric_value(metrics, "chronoserve_model_tier_loads_total", model=FAKE, tier="host") == 1
    assert metric_value(metrics, "chronoserve_model_tier_load_seconds_count", tier="host") == 1
    demoted = {"model": "random/chronos-2", "source": "resident", "target": "host"}
    assert metric_value(metrics, "chronoserve_model_demotions_total", **demoted) == 1
    assert metric_value(metrics, "chronoserve_host_tier_models") == 1
    assert metric_value(metrics, "chronoserve_host_tier_bytes") == 1_000_000
    assert metric_value(metrics, "chronoserve_process_start_seconds", method="process") > 0
