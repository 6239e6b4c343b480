"""The Hugging Face hub only where the operator allows it, and an unreachable hub failing at once:
no download for a name a caller sends, no ``huggingface_hub`` retries, no ``Retry-After`` for what
no retry can fix, and a client that does not retry it."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from test_serve_process import free_port
from test_server import FAKE, fake_loader

from chronoserve import errors
from chronoserve.client import AsyncClient, ChronoserveHTTPError
from chronoserve.models import hub
from chronoserve.models import loader as loader_module
from chronoserve.models.hub import HubAccess
from chronoserve.models.loader import ChronosLoader
from chronoserve.server import create_app
from chronoserve.testing import server_settings

BOLT = "amazon/chronos-bolt-small"  # a catalog entry published on the hub, not on this machine


@pytest.fixture(autouse=True)
def nothing_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever this machine's Hugging Face cache holds, these tests see none of it."""
    monkeypatch.setattr(loader_module, "cached_weights", lambda repo_id: False)
    monkeypatch.setattr(loader_module, "cached_config", lambda repo_id: None)


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> str:
    """The hub's endpoint on a port nobody listens on (refused at once), and from_pretrained never reached."""
    endpoint = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    for proxy in ("HTTPS_PROXY", "https_proxy", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(proxy, raising=False)

    def no_download(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("from_pretrained was called for a hub that cannot be reached")

    import chronos

    monkeypatch.setattr(chronos.BaseChronosPipeline, "from_pretrained", no_download)
    return endpoint


def test_allow_hub_reads_none_any_or_a_list_of_ids() -> None:
    assert HubAccess.of(None).allowed == () and not HubAccess.of(False).allows(BOLT)
    assert HubAccess.of(True).any and HubAccess.of("*").allows("anyone/anything")
    listed = HubAccess.of(f" {BOLT}, chronos-2 ,,")
    assert listed.allowed == (BOLT, "chronos-2")
    assert listed.allows("x", BOLT) and listed.allows("chronos-2") and not listed.allows("amazon/chronos-t5-mini")


def test_a_hub_model_is_refused_at_resolve_unless_allowed() -> None:
    with pytest.raises(errors.HubNotAllowed) as refused:
        ChronosLoader().resolve(BOLT)
    assert refused.value.field == "model" and f"--allow-hub {BOLT}" in refused.value.message
    # allowed by its hub id, by its catalog name, or any: described (no download: the catalog knows it)
    for allowed in (BOLT, "chronos-bolt-small", "*"):
        spec = ChronosLoader(allow_hub=allowed).resolve(BOLT)
        assert spec.source == BOLT and spec.extra["hub_id"] == BOLT


def test_an_allowed_download_fails_at_once_without_retries_when_the_hub_is_unreachable(
    offline: str, caplog: pytest.LogCaptureFixture
) -> None:
    loader = ChronosLoader(allow_hub=BOLT)
    spec = loader.resolve(BOLT)
    assert loader.tier(spec) == "hub"
    with caplog.at_level(logging.DEBUG), pytest.raises(errors.ModelLoadError) as failed:
        loader.load(spec)
    assert failed.value.permanent and "not reachable" in failed.value.message and offline in failed.value.message
    assert not [r for r in caplog.records if "Retrying" in r.getMessage()]


def test_hf_hub_offline_refuses_a_download_at_once(offline: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loader = ChronosLoader(allow_hub="*")
    with pytest.raises(errors.ModelLoadError) as failed:
        loader.load(loader.resolve(BOLT))
    assert failed.value.permanent and "HF_HUB_OFFLINE" in failed.value.message


def test_a_hub_id_beyond_the_catalog_is_fetched_only_when_allowed(offline: str) -> None:
    with pytest.raises(errors.UnknownModel) as unknown:
        ChronosLoader().resolve("someone/chronos-finetuned")
    assert "local cache" in unknown.value.message  # not allowed: not even looked up
    with pytest.raises(errors.UnknownModel) as unreachable:
        ChronosLoader(allow_hub="someone/chronos-finetuned").resolve("someone/chronos-finetuned")
    assert "not reachable" in unreachable.value.message and unreachable.value.field == "model"
    assert not hub.looks_like_hub_id("../x") and not hub.looks_like_hub_id("a/b/c") and hub.looks_like_hub_id("a/b")


async def test_http_callers_cannot_make_the_server_download() -> None:
    settings = server_settings(default_model="random/tiny-chronos-bolt", warmup=False)
    async with LifespanManager(create_app(settings, loader=ChronosLoader())) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            r = await client.post("/forecast", json={"model_name": BOLT, "target": [1.0, 2.0], "horizon_hours": 2})
    assert r.status_code == 422, r.text
    (detail,) = r.json()["detail"]
    assert detail["loc"] == ["body", "model_name"] and detail["type"] == "hub_not_allowed"
    assert "--allow-hub" in detail["msg"] and "retry-after" not in r.headers


async def test_a_permanent_load_failure_has_no_retry_after_and_the_client_does_not_retry() -> None:
    loader = fake_loader(fail_load={"/models/mine"}, permanent={"/models/mine"})
    settings = server_settings(default_model=FAKE, models=("/models/mine",), policy_options={"max_wait": 0.001})
    app = create_app(settings, loader=loader)
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with AsyncClient("http://test", transport=transport, sleep=sleep, retries=5) as client:
            with pytest.raises(ChronoserveHTTPError) as failed:
                await client.forecast(model_name="/models/mine", target=[1.0, 2.0], horizon_hours=2)
            assert failed.value.status == 503 and "told to fail" in str(failed.value)
            raw = await client._http.post(  # the answer itself: no Retry-After, while the load backs off
                "/forecast", json={"model_name": "/models/mine", "target": [1.0], "horizon_hours": 2}
            )
            models = await client.models()
    assert raw.status_code == 503 and "retry-after" not in raw.headers
    assert slept == []  # never retried
    assert [(f["name"], f["permanent"]) for f in models["failed"]] == [("/models/mine", True)]
    assert loader.loads["/models/mine"] <= 2  # at start-up (an extra), and no more for the requests
