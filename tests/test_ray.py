"""chronoserve on Ray Serve (the ``ray`` extra), on the Ray tests' cluster on 127.0.0.1: the engine replicas as a
library, and the HTTP API through Serve's proxy: the same app and answers as ``chronoserve serve``,
requests placed by model, merged ``/metrics`` and ``/models``, backpressure 429, drain."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

ray = pytest.importorskip("ray")
pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(300), pytest.mark.xdist_group("ray")]

from ray import serve  # noqa: E402
from ray_cluster import BODY, MODELS, PATIENT_REPLICAS, SERIES, RayCluster, fake_loader  # noqa: E402
from waiting import until  # noqa: E402

from chronoserve import ForecastRequest  # noqa: E402
from chronoserve.errors import InvalidRequest  # noqa: E402
from chronoserve.ray.handle import RayEngines  # noqa: E402
from chronoserve.ray.ingress import ingress_app  # noqa: E402
from chronoserve.ray.replica import engine_deployment  # noqa: E402
from chronoserve.server import create_app  # noqa: E402
from chronoserve.settings import EngineSettings  # noqa: E402
from chronoserve.testing import server_settings  # noqa: E402

#: Seconds a pair of requests may take to find their places (Ray polls the replicas every 0.2 s).
SETTLE_SECONDS = 120.0
#: One model per replica fits: placing a request where its model is not costs a load (and an eviction).
ONE_EACH = {"policy": "batched", "policy_options": {"max_wait": 0.001, "max_resident": 1}, "workers": 1}


@pytest.fixture(scope="module")
def url(ray_cluster: RayCluster) -> str:
    return ray_cluster.url


@pytest.fixture(scope="module")
def engines(url: str) -> Iterator[RayEngines]:
    """Two engine replicas as a library (no HTTP)."""
    app = engine_deployment(
        EngineSettings(**ONE_EACH), replicas=2, loader=fake_loader(), stats_period=0.2, **PATIENT_REPLICAS
    )
    handle = serve.run(app, name="library", route_prefix=None)
    yield RayEngines(handle, fake_loader()())
    serve.delete("library")


@pytest.fixture(scope="module")
def http(url: str) -> Iterator[str]:
    """The HTTP API over two engine replicas, at ``url``."""
    settings = server_settings(default_model="a", models=("b",), **ONE_EACH)
    app = ingress_app(settings, replicas=2, loader=fake_loader(), stats_period=0.2, engine_options=PATIENT_REPLICAS)
    serve.run(app, name="http", route_prefix="/")
    yield url
    serve.delete("http")


def request(model: str) -> ForecastRequest:
    return ForecastRequest(model=model, target=SERIES, horizon=4)


async def settled(forecast: Any) -> tuple[str, str]:
    """Forecast ``a`` then ``b`` (``forecast(model)`` returns the replica that answered) until three
    pairs in a row went to the same two different replicas; those two."""
    deadline = time.monotonic() + SETTLE_SECONDS
    where: tuple[str, str] | None = None
    streak = 0
    while streak < 3:
        assert time.monotonic() < deadline, "the models never settled on one replica each"
        ra, rb = [await forecast(m) for m in MODELS]
        streak = streak + 1 if ra != rb and (ra, rb) == where else int(ra != rb)
        where = (ra, rb)
        await asyncio.sleep(0.05)  # pacing only: what is waited for is the streak above
    assert where is not None
    return where


async def test_each_model_settles_on_its_own_replica_and_stays_there(engines: RayEngines) -> None:
    # One model per replica fits (max_resident 1): once the readiness polls show where each model
    # is, every request for it goes there, and neither replica thrashes between the two.
    async def replica_of(model: str) -> str:
        replica, answer = await engines.served(request(model))
        assert answer.model == model
        return replica

    where = await settled(replica_of)
    served = [await engines.served(request(m)) for m in MODELS * 4]
    assert [replica for replica, _ in served] == list(where) * 4
    assert list(served[0][1].median) == [SERIES[-1]] * 4  # the fake model's answer, through Ray


async def test_an_engine_error_crosses_as_itself(engines: RayEngines) -> None:
    with pytest.raises(InvalidRequest) as caught:
        await engines.forecast(ForecastRequest(model="a", target=SERIES, horizon=0))
    assert caught.value.field == "horizon"


async def test_the_http_api_is_chronoserve_serves_with_each_answer_saying_its_replica(http: str) -> None:
    alone = create_app(server_settings(default_model="a", models=("b",), **ONE_EACH), loader=fake_loader()())
    from asgi_lifespan import LifespanManager

    async with LifespanManager(alone) as manager:
        local = httpx.AsyncClient(transport=httpx.ASGITransport(app=manager.app), base_url="http://test")
        expected = (await local.post("/forecast", json=BODY)).json()
        schema = (await local.get("/openapi.json")).json()
        bad = await local.post("/forecast", json={**BODY, "horizon_hours": 0})
    async with httpx.AsyncClient(base_url=http, timeout=60) as client:
        await until(lambda: _ready(client), "every replica ready", deadline=SETTLE_SECONDS)
        r = await client.post("/forecast", json=BODY)
        assert r.status_code == 200, r.text
        answer = r.json()
        for key in ("model", "policy", "series", "timestamps", "median", "quantile_levels", "quantiles"):
            assert answer[key] == expected[key], key
        assert answer["served_by"] and "served_by" not in expected  # only where there are several engines
        assert (await client.get("/openapi.json")).json() == schema  # one app, one schema
        refused = await client.post("/forecast", json={**BODY, "horizon_hours": 0})
        assert (refused.status_code, refused.json()) == (bad.status_code, bad.json())


async def test_http_requests_follow_their_models_and_the_routes_merge_every_replica(http: str) -> None:
    async with httpx.AsyncClient(base_url=http, timeout=60) as client:

        async def replica_of(model: str) -> str:
            r = await client.post("/forecast", json={**BODY, "model_name": model})
            assert r.status_code == 200, r.text
            return str(r.json()["served_by"])

        where = await settled(replica_of)
        models = (await client.get("/models")).json()
        assert sorted(r["replica"] for r in models["replicas"]) == sorted(where)
        assert {(m["name"], m["replica"]) for m in models["resident"]} == set(zip(MODELS, where, strict=True))
        # The ingress's HTTP counts reach one replica (flushed every 0.5 s): wait for them.
        await until(lambda: _counted(client), "the ingress's HTTP counts in /metrics", deadline=SETTLE_SECONDS)
        metrics = (await client.get("/metrics")).text
        for replica in where:
            assert f'chronoserve_resident_models{{replica="{replica}"}} 1.0' in metrics
        ready = await client.get("/readyz")
        assert ready.status_code == 200, ready.text


async def test_requests_beyond_max_queued_requests_get_429_with_retry_after_and_none_is_lost(url: str) -> None:
    # One replica that takes one request at a time, and two more may wait for it at the ingress;
    # the model `h` never finishes a batch, so exactly three are accepted and the rest refused.
    settings = server_settings(default_model="a", models=("h",), drain_timeout=1.0, **ONE_EACH)
    options = {**PATIENT_REPLICAS, "max_ongoing_requests": 1, "graceful_shutdown_timeout_s": 2.0}
    app = ingress_app(
        settings, loader=fake_loader(hang={"h"}), max_queued_requests=2, no_replica_timeout=2.0, engine_options=options
    )
    serve.run(app, name="backpressure", route_prefix="/bp")
    async with httpx.AsyncClient(base_url=f"{url}/bp", timeout=120) as client:
        sent = [asyncio.create_task(client.post("/forecast", json={**BODY, "model_name": "h"})) for _ in range(6)]
        await until(lambda: sum(t.done() for t in sent) >= 3, "three refused", deadline=SETTLE_SECONDS)
        refused = [t.result() for t in sent if t.done()]
        assert [r.status_code for r in refused] == [429] * 3
        assert all(r.headers["retry-after"] == "1" for r in refused)
        assert all("queue full" in r.json()["detail"] for r in refused)
        deleting = asyncio.get_running_loop().run_in_executor(None, serve.delete, "backpressure")
        # The three accepted end too: Serve waits 2 s for the one running (it never finishes), then
        # stops the replica; that one fails with 503 (after one retry), and the two waiting for a
        # replica with 503 once there has been none for 2 s. Each says to retry later.
        answers = await asyncio.gather(*sent)
        await deleting
    assert sorted(r.status_code for r in answers) == [429, 429, 429, 503, 503, 503], [r.text for r in answers]
    assert all(r.headers["retry-after"] == "1" for r in answers)


async def test_deleting_the_application_drains_what_it_holds(url: str) -> None:
    settings = server_settings(default_model="a", **ONE_EACH)
    app = ingress_app(settings, loader=fake_loader(predict_seconds=0.2), engine_options=PATIENT_REPLICAS)
    serve.run(app, name="drain", route_prefix="/drain")
    async with httpx.AsyncClient(base_url=f"{url}/drain", timeout=120) as client:
        sent = [asyncio.create_task(client.post("/forecast", json={**BODY, "seed": i})) for i in range(8)]
        await until(lambda: any(t.done() for t in sent), "the first answer", deadline=SETTLE_SECONDS)
        deleting = asyncio.get_running_loop().run_in_executor(None, serve.delete, "drain")
        answers = await asyncio.gather(*sent)
        await deleting
    assert [r.status_code for r in answers] == [200] * 8, [r.text for r in answers if r.status_code != 200]


async def _ready(client: httpx.AsyncClient) -> bool:
    return (await client.get("/readyz")).status_code == 200


async def _counted(client: httpx.AsyncClient) -> bool:
    lines = (await client.get("/metrics")).text.splitlines()
    return any(line.startswith("chronoserve_http_requests_total{") and 'route="/forecast"' in line for line in lines)
