"""``serve --engines K``: a front end over several engine servers (ZeroMQ ipc, in this process,
fake models): requests placed by readiness, ``/metrics`` ``/models`` ``/readyz`` merged, an
engine lost while the others serve."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
from asgi_lifespan import LifespanManager
from test_frontends import MODEL, Pair, fake_loader
from waiting import metric_value, until

from chronoserve.server.frontend import create_frontend_app
from chronoserve.server.supervisor import engine_settings
from chronoserve.testing import fake_spec, server_settings

OTHER = "random/chronos-2"
OPTIONS: dict[str, Any] = {"policy_options": {"max_wait": 0.001, "max_resident": 1}}


def loader() -> Any:
    fake = fake_loader(load_seconds=0.2)  # a load costs something: placing a model where it is not is worse
    fake.specs = {**fake.specs, OTHER: fake_spec(OTHER, family="chronos-2", batch_patch=16)}
    return fake


@contextlib.asynccontextmanager
async def engines(tmp_path: Any, defaults: list[str]) -> AsyncIterator[tuple[list[Pair], httpx.AsyncClient, Any]]:
    """One engine server per default model (each warms its own), and a front end over all of them."""
    pairs = []
    for i, default in enumerate(defaults):
        p = Pair(f"ipc://{tmp_path}/engine-{i}.ipc", loader(), **OPTIONS)
        p.settings = server_settings(default_model=default, **OPTIONS)
        await p.start_engine()
        pairs.append(p)
    front = create_frontend_app(pairs[0].settings, [p.address for p in pairs])
    try:
        for p in pairs:
            await until(lambda p=p: p._engine_app.state.runtime.ready, "an engine warmed up")
        async with LifespanManager(front) as manager:
            runtime = front.state.runtime
            await until(runtime.forecaster.connected.is_set, "the front end connected to every engine")
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                yield pairs, client, runtime
    finally:
        for p in pairs:
            if p.server is not None:
                await p.kill_engine()


def submitted(p: Pair) -> int:
    return int(p.engine.counters["submitted"])


async def views_of_both(runtime: Any) -> None:
    router = runtime.forecaster.router
    await until(
        lambda: router.views[0].tiers.get(MODEL) == "resident" and router.views[1].tiers.get(OTHER) == "resident",
        "views of both engines, each holding its default model",
    )


async def test_each_request_goes_to_the_engine_that_holds_its_model(tmp_path):
    async with engines(tmp_path, [MODEL, OTHER]) as (pairs, client, runtime):
        await views_of_both(runtime)
        before = [submitted(p) for p in pairs]
        for _ in range(3):
            for model in (MODEL, OTHER):
                r = await client.post("/forecast", json={"target": [1.0, 2.0, 3.0], "model_name": model})
                assert r.status_code == 200, r.text
                assert r.json()["model"]["name"] == model
        assert [submitted(p) - b for p, b in zip(pairs, before, strict=True)] == [3, 3]
        assert [p.loader.loads for p in pairs] == [{MODEL: 1}, {OTHER: 1}]  # nothing loaded twice


async def test_metrics_models_and_readyz_cover_every_engine(tmp_path):
    async with engines(tmp_path, [MODEL, OTHER]) as (_, client, runtime):
        await views_of_both(runtime)
        await client.post("/forecast", json={"target": [1.0, 2.0], "model_name": OTHER})
        metrics = (await client.get("/metrics")).text
        models = (await client.get("/models")).json()
        ready = await client.get("/readyz")
    assert metric_value(metrics, "chronoserve_resident_models", engine="0") == 1
    assert metric_value(metrics, "chronoserve_resident_models", engine="1") == 1
    assert metric_value(metrics, "chronoserve_requests_total", engine="1", model=OTHER, status="ok") >= 1
    assert sorted((m["name"], m["engine"]) for m in models["resident"]) == [(OTHER, 1), (MODEL, 0)]
    assert models["tiers"]["models"] == {MODEL: "resident", OTHER: "resident"}
    assert [e["engine"] for e in models["engines"]] == [0, 1]
    assert ready.status_code == 200


async def test_an_engine_lost_leaves_the_others_serving_and_readyz_says_so(tmp_path):
    async with engines(tmp_path, [MODEL, MODEL]) as (pairs, client, runtime):
        await pairs[1].kill_engine()
        await until(lambda: not runtime.forecaster.remotes[1].connected.is_set(), "the front end saw engine 1 go")
        before = submitted(pairs[0])
        answers = await asyncio.gather(
            *(client.post("/forecast", json={"target": [1.0, 2.0], "model_name": MODEL}) for _ in range(6))
        )
        assert [a.status_code for a in answers] == [200] * 6
        assert submitted(pairs[0]) == before + 6
        ready = await client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["status"] == "engine_unavailable"


def test_each_engine_gets_its_share_of_the_cores_unless_told():
    settings = server_settings(workers=1)
    assert engine_settings(settings, 1) is settings
    two = engine_settings(settings, 2)
    assert two.engine.torch_threads is not None and two.engine.torch_threads >= 1
    told = server_settings(workers=1, torch_threads=3)
    assert engine_settings(told, 2).engine.torch_threads == 3
