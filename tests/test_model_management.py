"""Model management at run time (admin key): load, warm and unload through the API, checkpoint
directories only from the operator's roots, through a front end too (its engine process decides)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from asgi_lifespan import LifespanManager
from test_frontends import Pair
from test_server import FAKE, fake_loader
from waiting import until

from chronoserve.server import create_app
from chronoserve.server.frontend import create_frontend_app
from chronoserve.testing import fake_spec, server_settings

ADMIN = "admin-key-0123456789abcdef"
AS_ADMIN = {"Authorization": f"Bearer {ADMIN}"}


def layout(tmp_path: Path) -> tuple[Path, Path, Any]:
    """A model root holding a checkpoint directory, one outside it, and a loader that serves both."""
    root, outside = tmp_path / "root", tmp_path / "elsewhere"
    (root / "mine").mkdir(parents=True)
    outside.mkdir()
    loader = fake_loader()
    loader.specs = {
        **loader.specs,
        str(root / "mine"): fake_spec(str(root / "mine")),
        str(outside): fake_spec(str(outside)),
    }
    return root, outside, loader


def settings(root: Path, **options: Any) -> Any:
    given = {"admin_keys": (ADMIN,), "model_roots": (str(root),), "policy_options": {"max_wait": 0.001}, **options}
    return server_settings(default_model=FAKE, **given)


@contextlib.asynccontextmanager
async def served(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", headers=AS_ADMIN) as client:
            runtime = app.state.runtime
            await until(lambda: runtime.ready or runtime.fatal, "the warm-up")
            yield client


def path(name: str, action: str) -> str:
    return f"/models/{quote(name, safe='')}/{action}"


async def test_load_warm_and_unload_a_catalog_model(tmp_path: Path) -> None:
    root, _, loader = layout(tmp_path)
    async with served(create_app(settings(root), loader=loader)) as client:
        assert (await client.post(path("random/chronos-2", "unload"))).json() == {
            "model": "random/chronos-2",
            "unloaded": False,  # not resident: nothing to do
        }
        loaded = await client.post(path("random/chronos-2", "load"))
        assert loaded.status_code == 200, loaded.text
        assert loaded.json()["status"] == "ready" and loaded.json()["cold_start"] is True
        resident = {m["name"] for m in (await client.get("/models")).json()["resident"]}
        assert "random/chronos-2" in resident
        warmed = await client.post(path("random/chronos-2", "warm"), json={"batch_size": 3, "context_length": 64})
        assert warmed.status_code == 200, warmed.text
        assert warmed.json()["warmed"] == {"batch_size": 3, "context_length": 64, "horizon": 24}
        assert 1 <= warmed.json()["largest_batch"] <= 3 and warmed.json()["cold_start"] is False
        bad = await client.post(path("random/chronos-2", "warm"), json={"batch_size": 0})
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "batch_size"]
        gone = await client.post(path("random/chronos-2", "unload"))
        assert gone.json() == {"model": "random/chronos-2", "unloaded": True}
        resident = {m["name"] for m in (await client.get("/models")).json()["resident"]}
        assert "random/chronos-2" not in resident
        unknown = await client.post(path("no-such-model", "load"))
        assert unknown.status_code == 404 and unknown.json()["detail"][0]["type"] == "unknown_model"


async def test_a_directory_under_a_model_root_is_served_until_unloaded(tmp_path: Path) -> None:
    root, outside, loader = layout(tmp_path)
    mine = str(root / "mine")
    body = {"model_name": mine, "target": [1.0, 2.0], "horizon_hours": 2}
    async with served(create_app(settings(root), loader=loader)) as client:
        assert (await client.post("/forecast", json=body)).status_code == 422  # not allowed yet
        assert (await client.post(path(mine, "load"))).status_code == 200
        assert (await client.post("/forecast", json=body)).status_code == 200
        assert (await client.post(path(mine, "unload"))).json()["unloaded"] is True
        assert (await client.post("/forecast", json=body)).status_code == 422  # unloaded: not served
        refused = await client.post(path(str(outside), "load"))
        assert refused.status_code == 403 and "--model-root" in refused.json()["detail"]
        sneaky = await client.post(path(str(root / ".." / "elsewhere"), "load"))
        assert sneaky.status_code == 403
        (root / "link").symlink_to(outside)
        assert (await client.post(path(str(root / "link"), "load"))).status_code == 403  # a link out of the root
        missing = await client.post(path(str(root / "nothing"), "load"))
        assert missing.status_code == 404
    async with served(create_app(settings(root, model_roots=()), loader=loader)) as client:
        off = await client.post(path(mine, "load"))
        assert off.status_code == 403 and "--model-root" in off.json()["detail"]


async def test_a_model_in_use_is_not_unloaded(tmp_path: Path) -> None:
    root, _, loader = layout(tmp_path)
    loader.hang = {"random/chronos-2"}
    async with served(create_app(settings(root, max_inference_seconds=30.0), loader=loader)) as client:
        body = {"model_name": "random/chronos-2", "target": [1.0, 2.0], "horizon_hours": 2}
        running = asyncio.create_task(client.post("/forecast", json=body))
        await until(
            lambda: any(m.started.is_set() for m in loader.instances if m.spec.name == "random/chronos-2"),
            "its batch running",
        )
        busy = await client.post(path("random/chronos-2", "unload"))
        assert busy.status_code == 409 and busy.headers["retry-after"] == "1"
        assert "running" in busy.json()["detail"]
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running


async def test_through_a_front_end_the_engine_process_loads_and_then_serves_it(tmp_path: Path) -> None:
    root, _, loader = layout(tmp_path)
    mine = str(root / "mine")
    engine = Pair(f"ipc://{tmp_path}/engine.ipc", loader, admin_keys=(ADMIN,), model_roots=(str(root),))
    await engine.start_engine()
    try:
        await until(lambda: engine._engine_app.state.runtime.ready, "the engine warmed up")
        front = create_frontend_app(engine.settings, engine.address)
        async with LifespanManager(front) as manager:
            await until(front.state.runtime.forecaster.connected.is_set, "the front end connected")
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                body = {"model_name": mine, "target": [1.0, 2.0], "horizon_hours": 2}
                refused = await client.post("/forecast", json=body)
                assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body", "model_name"]
                assert (await client.post(path(mine, "load"))).status_code == 401  # the front end checks keys
                assert (await client.post(path(mine, "load"), headers=AS_ADMIN)).status_code == 200
                served_now = await client.post("/forecast", json=body)
                assert served_now.status_code == 200, served_now.text
    finally:
        await engine.kill_engine()


@pytest.mark.parametrize("action", ["load", "warm", "unload"])
async def test_management_needs_the_admin_key(tmp_path: Path, action: str) -> None:
    root, _, loader = layout(tmp_path)
    async with served(create_app(settings(root), loader=loader)) as client:
        r = await client.post(path(FAKE, action), headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401
