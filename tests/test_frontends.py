"""Front ends apart from the engine (``serve --http-workers``): the wire, and a front end's app
talking to an engine server over ZeroMQ ipc in this process (fake model, no torch).

The real processes (spawned, with torch) are in ``test_frontends_process.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import pickle
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from asgi_lifespan import LifespanManager
from waiting import metric_value, until

from chronoserve import errors
from chronoserve.request import ForecastRequest, ForecastResult, Timings
from chronoserve.server import create_app, wire
from chronoserve.server.engine_process import EngineServer
from chronoserve.server.frontend import create_frontend_app
from chronoserve.testing import FakeLoader, fake_spec, server_settings

MODEL = "random/chronos-bolt-tiny"
BODY = {"model_name": MODEL, "city": "dongsi", "horizon_hours": 6}


#: A batching window longer than any test: requests wait in the engine's queue until something happens.
HELD: dict[str, Any] = {"policy_options": {"max_wait": 3600.0, "max_batch": 64}, "warmup": False}


@pytest.fixture(autouse=True)
def _collect_closed_sockets() -> Iterator[None]:
    """Closed zmq.asyncio sockets stay in reference cycles; collected at some later moment that
    happens to fall inside pytest's compile of another module, their finalizers trip CPython
    3.11's AST recursion check (SystemError at the end of the session). Collect them here."""
    yield
    gc.collect()


# -- the wire -----------------------------------------------------------------------------


def test_a_request_crosses_the_wire_unchanged():
    past = {"temp": np.arange(5, dtype=np.float32), "wind": [1.0, math.nan, 3.0, 4.0, 5.0]}
    request = ForecastRequest(
        model=MODEL,
        target=np.array([1.0, math.nan, 3.5, 1e15, -2.0]),
        horizon=3,
        context_length=4,
        quantile_levels=(0.05, 0.5),
        past_covariates=past,
        future_covariates={"temp": [7.0, 8.0, 9.0]},
        seed=11,
        deadline=0.25,
        priority=2,
    )
    back = wire.unpack_request(wire.loads(wire.dumps([wire.FORECAST, 1, wire.pack_request(request)]))[2])
    assert back.request_id == request.request_id
    np.testing.assert_array_equal(back.target, request.target)  # float64 stays float64: bounds are the engine's
    assert np.asarray(back.target).dtype == np.float64
    assert back.past_covariates is not None and back.future_covariates is not None
    np.testing.assert_array_equal(back.past_covariates["temp"], past["temp"])
    assert np.asarray(back.past_covariates["temp"]).dtype == np.float32
    np.testing.assert_array_equal(back.past_covariates["wind"], past["wind"])
    assert list(back.future_covariates["temp"]) == [7.0, 8.0, 9.0]
    for name in ("model", "horizon", "context_length", "quantile_levels", "seed", "deadline", "priority"):
        assert getattr(back, name) == getattr(request, name), name


def test_a_result_crosses_the_wire_unchanged():
    result = ForecastResult(
        request_id="r1",
        model=MODEL,
        family="chronos-bolt",
        random_weights=True,
        policy="batched",
        quantile_levels=(0.1, 0.9),
        quantiles=np.arange(6, dtype=np.float32).reshape(3, 2),
        median=np.array([0.5, math.nan, 2.5], dtype=np.float32),
        batch_size=7,
        cold_start=True,
        timings=Timings(0.1, 0.2, 0.3, 0.6),
        context_used=240,
    )
    back = wire.unpack_result(wire.loads(wire.dumps([1, wire.OK, wire.pack_result(result)]))[2])
    np.testing.assert_array_equal(back.quantiles, result.quantiles)
    np.testing.assert_array_equal(back.median, result.median)
    assert back.quantiles.dtype == np.float32 and back.quantiles.shape == (3, 2)
    for name in ("request_id", "model", "family", "random_weights", "policy", "quantile_levels", "batch_size"):
        assert getattr(back, name) == getattr(result, name), name
    assert (back.cold_start, back.timings, back.context_used) == (True, result.timings, 240)


def test_something_that_is_not_a_number_is_refused_naming_its_field():
    with pytest.raises(errors.InvalidRequest, match="past_covariates.temp"):
        wire.pack_request(ForecastRequest(model=MODEL, target=[1.0], horizon=1, past_covariates={"temp": ["x"]}))


ERRORS = [
    errors.InvalidRequest("horizon", "must be at least 1, got 0"),
    errors.TooCostly("context", "too much"),
    errors.UnknownModel("nope"),
    errors.ModelLoadError("m", "no weights", retry_after=4.0),
    errors.InferenceError("the batch raised"),
    errors.InferenceTimeout("ran past 30 s"),
    errors.QueueFull(16),
    errors.EngineClosed("closing"),
    errors.EngineUnavailable("restarting", 2.0),
    errors.Rejected("never fits"),
    errors.DeadlineUnmeetable(0.15, 0.4, retry_after=1.0),
    errors.DeadlineExpired(0.15),
    errors.PolicyError("bad decision"),
]


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: type(e).__name__)
def test_every_engine_error_crosses_as_itself(error):
    back = wire.unpack_error(wire.pack_error(error))
    assert type(back) is type(error)
    assert str(back) == str(error)
    assert back.__dict__ == error.__dict__
    assert back.reason == error.reason


def test_an_unexpected_exception_crosses_as_a_generic_error_without_its_payload():
    back = wire.unpack_error(wire.pack_error(KeyError("secret")))
    assert type(back) is errors.ChronoserveError
    assert str(back) == "internal error: KeyError"
    assert isinstance(wire.unpack_error(pickle.dumps(ValueError("x"))), errors.ChronoserveError)


# -- a front end and an engine server in this process ----------------------------------------


def fake_loader(**kw: Any) -> FakeLoader:
    spec = fake_spec(MODEL, family="chronos-bolt", context_length=2048, max_horizon=64, supports_covariates=False)
    return FakeLoader(specs={MODEL: spec}, **kw)


class Pair:
    """An engine app served by an :class:`EngineServer` and a front end's app, over ipc."""

    def __init__(self, address: str, loader: FakeLoader, **options: Any) -> None:
        self.address = address
        self.loader = loader
        self.settings = server_settings(default_model=MODEL, **options)
        self.server: EngineServer | None = None
        self._serving: asyncio.Task[None] | None = None
        self._engine_app: Any = None
        self._lifespan: Any = None

    async def start_engine(self) -> None:
        self._engine_app = create_app(self.settings, loader=self.loader)
        self._lifespan = self._engine_app.router.lifespan_context(self._engine_app)
        state = await self._lifespan.__aenter__()
        self.server = EngineServer(self._engine_app, state, self.address)
        self._serving = asyncio.create_task(self.server.serve())

    async def kill_engine(self) -> None:
        """The engine process's socket goes away, as when the process dies (no drain, no answers)."""
        assert self.server is not None and self._serving is not None
        self._serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._serving
        self.server._socket.close(linger=0)
        self.server._context.term()
        await self._lifespan.__aexit__(None, None, None)
        self.server = None

    @property
    def engine(self) -> Any:
        return self._engine_app.state.runtime.engine


@contextlib.asynccontextmanager
async def pair(tmp_path: Any, **options: Any) -> AsyncIterator[tuple[Pair, httpx.AsyncClient, Any]]:
    both = Pair(f"ipc://{tmp_path}/engine.ipc", fake_loader(), **options)
    await both.start_engine()
    app = create_frontend_app(both.settings, both.address)
    try:
        await until(lambda: both._engine_app.state.runtime.ready, "the engine warmed up (or needs no warm-up)")
        async with LifespanManager(app) as manager:
            runtime = app.state.runtime
            await until(runtime.forecaster.connected.is_set, "the front end connected to the engine")
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                yield both, client, runtime
    finally:
        if both.server is not None:
            await both.kill_engine()


async def test_a_forecast_through_the_front_end_is_the_one_process_servers_answer(tmp_path):
    body = {**BODY, "quantile_levels": [0.2, 0.5, 0.75], "horizon_hours": 9}
    app = create_app(server_settings(default_model=MODEL), loader=fake_loader())
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            alone = (await client.post("/forecast", json=body)).json()
    async with pair(tmp_path) as (both, client, _):
        before = both.engine.counters["submitted"]
        r = await client.post("/forecast", json=body)
        assert r.status_code == 200, r.text
        assert both.engine.counters["submitted"] == before + 1  # the engine process's engine ran it
    split = r.json()
    for key in ("model", "policy", "series", "timestamps", "median", "quantile_levels", "quantiles", "context_used"):
        assert split[key] == alone[key], key
    assert len(split["median"]) == 9


async def test_refusals_keep_their_status_and_field_across_the_boundary(tmp_path):
    async with pair(tmp_path, max_queue=None) as (_, client, _runtime):
        r = await client.post("/forecast", json={**BODY, "horizon_hours": 65})  # beyond the model: the engine says
        assert r.status_code == 422, r.text
        assert r.json()["detail"][0]["loc"] == ["body", "horizon_hours"]
        r = await client.post("/forecast", json={**BODY, "deadline_ms": 5000, "priority": 0})  # pydantic, here
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "priority"]


async def test_other_routes_are_the_engine_apps_own(tmp_path):
    async with pair(tmp_path) as (_, client, _runtime):
        assert (await client.post("/forecast", json=BODY)).status_code == 200
        models = await client.get("/models")
        assert models.status_code == 200 and models.json()["default"] == MODEL
        assert [m["name"] for m in models.json()["resident"]] == [MODEL]
        ready = await client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "ready"
        missing = await client.get("/nowhere")
        assert missing.status_code == 404 and "detail" in missing.json()
        # The front end's own counts reach the engine's metrics before the scrape answers.
        text = (await client.get("/metrics")).text
        assert metric_value(text, "chronoserve_http_requests_total", route="/forecast", code="200") == 1
        assert metric_value(text, "chronoserve_requests_total", model=MODEL, status="ok") >= 1
        assert (await client.get("/healthz")).json() == {"status": "alive"}


async def test_a_client_that_leaves_takes_its_request_out_of_the_engine(tmp_path):
    # A batching window longer than the test: the request waits in the engine's queue.
    async with pair(tmp_path, **HELD) as (both, client, _):
        sent = asyncio.create_task(client.post("/forecast", json=BODY))
        await until(lambda: both.engine.queue_depths().get(MODEL) == 1, "the request queued in the engine")
        sent.cancel()  # the client goes away
        with contextlib.suppress(asyncio.CancelledError):
            await sent
        await until(lambda: both.engine.counters["cancelled"] == 1, "the engine dropped the request")
        assert both.engine.queue_depths().get(MODEL) is None


async def test_an_engine_that_dies_fails_what_it_held_with_503_and_is_used_again_once_back(tmp_path):
    async with pair(tmp_path, **HELD) as (both, client, runtime):
        held = [asyncio.create_task(client.post("/forecast", json=BODY)) for _ in range(3)]
        await until(lambda: both.engine.queue_depths().get(MODEL) == 3, "three requests held by the engine")
        await both.kill_engine()
        answers = await asyncio.gather(*held)
        assert [a.status_code for a in answers] == [503] * 3
        assert all(a.headers["retry-after"] == "2" for a in answers)
        assert all("stopped while this request was in it" in a.json()["detail"] for a in answers)
        await until(lambda: not runtime.forecaster.connected.is_set(), "the front end saw the engine go")
        r = await client.post("/forecast", json=BODY)
        assert r.status_code == 503 and "restarting" in r.json()["detail"]
        ready = await client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["status"] == "engine_unavailable"

        both.settings = server_settings(default_model=MODEL)  # the restarted engine: no window
        await both.start_engine()
        await until(runtime.forecaster.connected.is_set, "the front end reconnected")
        r = await client.post("/forecast", json=BODY)
        assert r.status_code == 200, r.text


async def test_the_server_cpu_counts_the_front_ends_and_never_goes_back(tmp_path):
    async with pair(tmp_path) as (both, client, runtime):
        runtime.counts.flush()
        scrape = (await client.get("/metrics")).text
        total = metric_value(scrape, "chronoserve_server_cpu_seconds_total")
        assert total > 0
        cpu = both._engine_app.state.runtime.metrics.server_cpu
        assert set(cpu.others) == {"http-0"}  # the front end reported (this test's two apps share a process)
        cpu.report("http-0", cpu.others["http-0"] + 5.0)
        after = metric_value((await client.get("/metrics")).text, "chronoserve_server_cpu_seconds_total")
        assert after >= total + 5.0
        cpu.report("http-0", 0.1)  # restarted: what it had used stays counted
        assert cpu.gone >= 5.0


async def test_an_unexpected_engine_failure_is_answered_and_the_engine_server_keeps_serving(tmp_path, monkeypatch):
    async with pair(tmp_path) as (both, client, _):

        def broken(request, spec):
            raise RuntimeError("a bug")

        monkeypatch.setattr(both.engine, "enqueue", broken)
        r = await client.post("/forecast", json=BODY)
        assert r.status_code == 500 and r.json()["detail"] == "internal error: RuntimeError"
        monkeypatch.undo()
        assert (await client.post("/forecast", json=BODY)).status_code == 200  # the loop still takes frames
