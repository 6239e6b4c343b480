"""One EngineSettings: built once (the CLI's flags or by hand), embedded in the server's, handed down."""

from __future__ import annotations

import httpx
from asgi_lifespan import LifespanManager

from chronoserve._cli_common import engine_settings
from chronoserve.cli import build_parser
from chronoserve.limits import Limits
from chronoserve.models.loader import ChronosLoader
from chronoserve.server import ServerSettings, create_app
from chronoserve.settings import SERVE_BACKEND, EngineSettings
from chronoserve.testing import FakeLoader, fake_engine, fake_spec, server_settings


def test_the_cli_builds_one_engine_settings_with_the_loaders_own_options():
    args = build_parser().parse_args(
        ["serve", "--policy", "lru", "--max-resident", "2", "--workers", "1", "--dtype", "bfloat16"]
    )
    settings = engine_settings(args, max_queue=7)
    assert settings == EngineSettings(
        policy="lru", policy_options={"max_resident": 2}, workers=1, max_queue=7, dtype="bfloat16", backend="onnx"
    )  # serve's backend is onnx unless told otherwise
    loader = settings.loader()
    assert isinstance(loader, ChronosLoader) and loader.dtype == "bfloat16" and loader.device == "cpu"
    kwargs = settings.engine_kwargs()
    assert "dtype" not in kwargs and "device" not in kwargs  # the engine never sees the loader's options
    assert kwargs["policy_options"] == {"max_resident": 2} and kwargs["limits"] == Limits()


def test_with_options_merges_policy_options_and_leaves_the_original_alone():
    base = EngineSettings(policy_options={"max_batch": 8})
    changed = base.with_options(policy_options={"max_wait": 0.5}, workers=3)
    assert changed.policy_options == {"max_batch": 8, "max_wait": 0.5} and changed.workers == 3
    assert base.policy_options == {"max_batch": 8} and base.workers is None


def test_the_server_embeds_the_engine_settings():
    assert ServerSettings().engine == EngineSettings(max_queue=1024, backend=SERVE_BACKEND) and SERVE_BACKEND == "onnx"
    settings = server_settings(default_model="m", max_covariates=3, max_queue=5, policy_options={"max_wait": 0})
    assert settings.engine.limits == Limits(max_covariates=3) and settings.engine.max_queue == 5
    assert settings.default_model == "m"


async def test_create_app_serves_an_engine_it_is_given():
    loader = FakeLoader(specs={"m": fake_spec("m", family="chronos-bolt", supports_covariates=False)})
    engine = fake_engine(loader=loader, policy_options={"max_wait": 0.0})
    app = create_app(server_settings(default_model="m"), engine=engine)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            r = await client.post("/forecast", json={"target": [1.0, 2.0], "horizon_hours": 2})
            assert r.status_code == 200, r.text
            metrics = (await client.get("/metrics")).text
    assert 'chronoserve_requests_total{model="m",status="ok"}' in metrics  # the app observes it
    assert engine.stats().completed >= 2  # the warm-up and the request went through the given engine
    assert loader.loads == {"m": 1}


def test_backend_and_int8_reach_the_loader_from_every_engine_command():
    for command in (["serve"], ["eval"], ["replay", "trace.jsonl"], ["forecast", "--values", "1,2"]):
        try:
            args = build_parser().parse_args([*command, "--backend", "onnx", "--dtype", "int8", "--torch-threads", "3"])
        except SystemExit:  # pragma: no cover - a command whose positional arguments differ
            raise AssertionError(f"{command[0]} does not take --backend") from None
        settings = engine_settings(args)
        assert (settings.backend, settings.dtype) == ("onnx", "int8")
        loader = settings.loader()
        assert isinstance(loader, ChronosLoader)
        assert (loader.backend, loader.dtype, loader.onnx_threads) == ("onnx", "int8", 3)
    serve = engine_settings(build_parser().parse_args(["serve"]))
    assert serve.backend == "onnx" and serve.loader().backend == "onnx"  # type: ignore[attr-defined]
    for command in (["eval"], ["replay", "trace.jsonl"], ["forecast", "--values", "1,2"]):  # the reference answers
        assert engine_settings(build_parser().parse_args(command)).backend == "torch", command[0]
    assert EngineSettings().backend == "torch"


def test_an_unknown_backend_is_a_usage_error_naming_the_flag(capsys):
    import pytest

    from chronoserve.cli import main

    with pytest.raises(SystemExit) as info:
        main(["serve", "--backend", "tensorrt"])
    assert info.value.code == 2
    assert "--backend: invalid choice: 'tensorrt'" in capsys.readouterr().err
