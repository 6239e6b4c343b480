"""The engine's mechanism with fake models and a fake clock: no torch, no sleeping."""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest

import chronoserve
from chronoserve import ForecastRequest
from chronoserve.errors import (
    EngineClosed,
    InferenceError,
    InvalidRequest,
    ModelLoadError,
    PolicyError,
    QueueFull,
    UnknownModel,
)
from chronoserve.policy import Dispatch, Load, Policy
from chronoserve.testing import FakeClock, FakeLoader, fake_engine, fake_spec, settle


def req(model="fake", value=1.0, horizon=4, **kw):
    return ForecastRequest(model=model, target=[0.0, 1.0, value], horizon=horizon, **kw)


async def submit_all(engine, requests):
    return [await engine.submit(r) for r in requests]


# -- policies end to end ---------------------------------------------------------------------


async def test_batched_dispatches_at_max_wait_on_the_engine_clock():
    clock, loader = FakeClock(), FakeLoader()
    options = {"max_batch": 4, "max_wait": 0.05}
    async with fake_engine("batched", clock=clock, loader=loader, policy_options=options) as engine:
        futures = await submit_all(engine, [req(value=i) for i in range(3)])
        await settle()
        clock.advance(0.0499)
        await settle()
        assert not any(f.done() for f in futures)
        clock.advance(0.0001)
        await settle()
        results = [f.result() for f in futures]
    assert loader.batch_sizes() == [3]
    assert [r.batch_size for r in results] == [3, 3, 3]
    assert [float(r.median[0]) for r in results] == [0.0, 1.0, 2.0]
    assert all(r.policy == "batched" for r in results)


async def test_batched_dispatches_at_once_when_max_batch_are_waiting():
    clock, loader = FakeClock(), FakeLoader()
    async with fake_engine(
        "batched", clock=clock, loader=loader, policy_options={"max_batch": 4, "max_wait": 10}
    ) as engine:
        futures = await submit_all(engine, [req(value=i) for i in range(9)])
        await settle()
        assert [f.done() for f in futures] == [True] * 8 + [False]
        assert loader.batch_sizes() == [4, 4]
        clock.advance(10)
        await settle()
        assert futures[8].done()
    assert loader.batch_sizes() == [4, 4, 1]


async def test_lru_keeps_models_resident_and_evicts_the_least_recently_used():
    clock = FakeClock()
    loader = FakeLoader.with_models("a", "b", "c")
    async with fake_engine("lru", clock=clock, loader=loader, policy_options={"max_resident": 2}) as engine:
        for model in ["a", "b", "a", "c", "a", "b"]:
            clock.advance(1.0)
            result = await engine.forecast(req(model))
            assert result.batch_size == 1
        assert loader.loads == {"a": 1, "b": 2, "c": 1}
        assert set(engine.resident()) == {"a", "b"}
        assert engine.stats().evictions == 2


async def test_naive_loads_a_private_model_for_every_request_and_keeps_none():
    loader = FakeLoader()
    async with fake_engine("naive", loader=loader, workers=2) as engine:
        results = await engine.forecast_many([req(value=i) for i in range(5)])
        assert engine.resident() == {}
    assert loader.loads == {"fake": 5}
    assert all(r.cold_start and r.batch_size == 1 for r in results)
    assert all(m.closed for m in loader.instances)


async def test_a_request_that_waited_for_its_model_load_is_a_cold_start():
    clock = FakeClock()

    class SlowLoader(FakeLoader):
        def load(self, spec):
            clock.advance(0.25)  # the load takes 0.25 s of engine time
            return super().load(spec)

    async with fake_engine("lru", clock=clock, loader=SlowLoader()) as engine:
        first = await engine.forecast(req())
        second = await engine.forecast(req())
    assert first.cold_start and first.timings.load == pytest.approx(0.25)
    assert not second.cold_start and second.timings.load == 0.0
    for r in (first, second):
        t = r.timings
        assert t.queue + t.load + t.inference == pytest.approx(t.total)


# -- nothing is lost -------------------------------------------------------------------------


async def test_a_thousand_concurrent_requests_all_answered_in_order():
    loader = FakeLoader.with_models("a", "b", "c")
    async with fake_engine(
        "batched", loader=loader, workers=2, policy_options={"max_batch": 32, "max_wait": 0}
    ) as engine:
        requests = [req("abc"[i % 3], value=float(i)) for i in range(1000)]
        results = await engine.forecast_many(requests)
    assert len(results) == 1000
    assert [r.request_id for r in results] == [r.request_id for r in requests]
    assert [float(r.median[0]) for r in results] == [float(i) for i in range(1000)]
    assert sum(loader.batch_sizes()) == 1000
    assert engine.stats().completed == 1000


async def test_cancelled_while_queued_is_dropped_without_poisoning_its_batch():
    clock, loader = FakeClock(), FakeLoader()
    async with fake_engine(
        "batched", clock=clock, loader=loader, policy_options={"max_batch": 8, "max_wait": 1}
    ) as engine:
        tasks = [asyncio.create_task(engine.forecast(req(value=i))) for i in range(4)]
        await settle()
        tasks[1].cancel()
        await settle()
        clock.advance(1)
        await settle()
        assert tasks[1].cancelled()
        assert [float(tasks[i].result().median[0]) for i in (0, 2, 3)] == [0.0, 2.0, 3.0]
    assert loader.batch_sizes() == [3]
    assert engine.stats().cancelled == 1


async def test_a_model_that_fails_to_load_fails_its_requests_and_others_keep_serving():
    loader = FakeLoader.with_models("good", "bad")
    loader.fail_load.add("bad")
    async with fake_engine("batched", loader=loader, policy_options={"max_wait": 0}) as engine:
        results = await engine.forecast_many([req("bad"), req("good"), req("bad"), req("good")], return_exceptions=True)
        assert isinstance(results[0], ModelLoadError) and "bad" in str(results[0])
        assert isinstance(results[2], ModelLoadError)
        assert float(results[1].median[0]) == 1.0
        # The engine is still healthy and will try the bad model again later.
        assert float((await engine.forecast(req("good", value=5))).median[0]) == 5.0
    assert engine.stats().load_failures >= 1


async def test_an_exception_inside_a_batch_fails_that_batch_only():
    loader = FakeLoader.with_models("good", "broken")
    loader.fail_predict.add("broken")
    async with fake_engine("batched", loader=loader, policy_options={"max_wait": 0}) as engine:
        results = await engine.forecast_many([req("broken"), req("good")], return_exceptions=True)
        assert isinstance(results[0], InferenceError)
        assert "told to fail" in repr(results[0].__cause__)
        assert float(results[1].median[0]) == 1.0
        assert float((await engine.forecast(req("good", value=7))).median[0]) == 7.0


async def test_close_with_drain_answers_everything_queued():
    clock = FakeClock()
    engine = fake_engine("batched", clock=clock, policy_options={"max_batch": 100, "max_wait": 3600})
    await engine.start()
    futures = await submit_all(engine, [req(value=i) for i in range(10)])
    await engine.close(drain=True)
    assert [float(f.result().median[0]) for f in futures] == [float(i) for i in range(10)]
    with pytest.raises(EngineClosed):
        await engine.forecast(req())


async def test_close_without_drain_fails_what_is_queued():
    clock = FakeClock()
    engine = fake_engine("batched", clock=clock, policy_options={"max_batch": 100, "max_wait": 3600})
    await engine.start()
    futures = await submit_all(engine, [req(value=i) for i in range(3)])
    await engine.close(drain=False)
    for f in futures:
        with pytest.raises(EngineClosed):
            f.result()


async def test_a_full_queue_refuses_at_once():
    clock = FakeClock()
    async with fake_engine(
        "batched", clock=clock, max_queue=2, policy_options={"max_batch": 10, "max_wait": 1}
    ) as engine:
        await submit_all(engine, [req(), req()])
        with pytest.raises(QueueFull, match="2 requests"):
            await engine.submit(req())
        assert engine.stats().rejected_queue_full == 1
        clock.advance(1)
        await settle()
        await engine.submit(req())  # room again


# -- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field", "message"),
    [
        ({"horizon": 0}, "horizon", "at least 1"),
        ({"horizon": 65}, "horizon", "exceeds"),
        ({"horizon": 2.5}, "horizon", "integer"),
        ({"target": []}, "target", "empty"),
        ({"target": [math.nan, math.nan]}, "target", "no observed value"),
        ({"target": [1.0, math.inf]}, "target", "infinite"),
        ({"target": [1.0, 3.4028235677973366e38]}, "target", "within"),
        ({"past_covariates": {"x": [1.0, 2.0, 1e16]}}, "past_covariates.x", "within"),
        ({"target": [[1.0]]}, "target", "one-dimensional"),
        ({"target": ["a"]}, "target", "numbers"),
        ({"context_length": 5}, "context_length", "history given"),
        ({"context_length": 200}, "context_length", "context limit"),
        ({"quantile_levels": [0.5, 1.0]}, "quantile_levels", "between 0 and 1"),
        ({"quantile_levels": []}, "quantile_levels", "empty"),
        ({"past_covariates": {"x": [1.0]}}, "past_covariates.x", "must match"),
        ({"future_covariates": {"x": [1.0] * 4}}, "future_covariates.x", "past values"),
    ],
)
async def test_invalid_requests_name_the_field(kwargs, field, message):
    loader = FakeLoader(specs={"fake": fake_spec("fake", context_length=100, max_horizon=64)})
    async with fake_engine(loader=loader) as engine:
        base = {"model": "fake", "target": [1.0, 2.0, 3.0], "horizon": 4}
        with pytest.raises(InvalidRequest) as info:
            await engine.forecast(ForecastRequest(**{**base, **kwargs}))
    assert info.value.field == field
    assert message in str(info.value)


async def test_covariates_for_a_model_that_cannot_use_them_name_the_field():
    loader = FakeLoader(specs={"bolt": fake_spec("bolt", family="chronos-bolt", supports_covariates=False)})
    async with fake_engine(loader=loader) as engine:
        with pytest.raises(InvalidRequest) as info:
            await engine.forecast(req("bolt", past_covariates={"t": [1.0, 2.0, 3.0]}))
    assert info.value.field == "past_covariates"
    assert "only Chronos-2" in str(info.value)


async def test_unknown_model():
    async with fake_engine() as engine:
        with pytest.raises(UnknownModel) as info:
            await engine.forecast(req("nope"))
    assert info.value.field == "model"


async def test_context_is_truncated_to_the_last_points():
    async with fake_engine() as engine:
        result = await engine.forecast(
            ForecastRequest(model="fake", target=[5.0, 6.0, 7.0, 8.0], horizon=2, context_length=2)
        )
    assert result.context_used == 2


# -- bad policies --------------------------------------------------------------------------


class _Raising(Policy):
    name = "raising"

    def decide(self, state, now):
        raise RuntimeError("boom")


class _Mixer(Policy):
    """Loads the model and then dispatches everything together, keys or not."""

    name = "mixer"

    def decide(self, state, now):
        out = []
        for model, queue in state.queues.items():
            if model not in state.models:
                out.append(Load(model))
            elif state.models[model].status == "ready" and state.free_slots:
                out.append(Dispatch(model, tuple(r.seq for r in queue)))
        return out


class _Confused(Policy):
    name = "confused"

    def decide(self, state, now):
        return ["dispatch everything"] if state.queues else []


class _BadDescribe(Policy):
    name = "baddescribe"

    def decide(self, state, now):
        return []

    def describe(self):
        raise RuntimeError("no settings today")


async def test_a_decision_of_the_wrong_type_fails_the_queued_requests_with_policy_error():
    async with fake_engine(_Confused) as engine:
        with pytest.raises(PolicyError, match="'dispatch everything', which is not a decision"):
            await engine.forecast(req())
        assert engine.stats().failed == 1 and engine.stats().queued == 0


def test_a_describe_that_raises_does_not_take_stats_down():
    engine = fake_engine(_BadDescribe)
    policy = engine.stats().policy
    assert policy["name"] == "baddescribe" and "no settings today" in str(policy["describe_error"])


async def test_a_policy_that_raises_fails_the_queued_requests_not_the_engine():
    async with fake_engine(_Raising) as engine:
        with pytest.raises(PolicyError, match="boom"):
            await engine.forecast(req())


async def test_the_engine_refuses_a_batch_that_mixes_batch_keys():
    loader = FakeLoader(specs={"c2": fake_spec("c2", batch_patch=16)})
    async with fake_engine(_Mixer, loader=loader, clock=FakeClock()) as engine:
        futures = await submit_all(engine, [req("c2", horizon=16), req("c2", horizon=17)])
        await settle()
    for f in futures:
        with pytest.raises(PolicyError, match="batch keys differ"):
            f.result()


# -- synchronous use -------------------------------------------------------------------------


def test_blocking_engine_and_forecast_helper_from_sync_code():
    loader = FakeLoader()
    with chronoserve.BlockingEngine("lru", loader=loader, workers=2) as engine:
        one = engine.forecast(req(value=3))
        many = engine.forecast_many([req(value=i) for i in range(5)])
    assert float(one.median[0]) == 3.0
    assert [float(r.median[0]) for r in many] == [0.0, 1.0, 2.0, 3.0, 4.0]
    result = chronoserve.forecast(req(value=9), policy="naive", loader=FakeLoader())
    assert isinstance(result, chronoserve.ForecastResult)
    np.testing.assert_array_equal(result.median, np.full(4, 9.0, dtype=np.float32))


# -- the cost of a burst -------------------------------------------------------------------------


async def test_a_burst_during_a_load_costs_a_few_decisions_not_one_per_request():
    import threading

    from chronoserve.executor import InlineExecutor, ThreadExecutor
    from chronoserve.policies.batched import BatchedPolicy

    gate = threading.Event()

    class GatedLoader(FakeLoader):
        def load(self, spec):
            gate.wait(30)  # the model loads until the burst is in
            return super().load(spec)

    class Counting(BatchedPolicy):
        calls = 0

        def decide(self, state, now):
            self.calls += 1
            return super().decide(state, now)

    policy = Counting(max_batch=32, max_wait=0.0)
    engine = chronoserve.Engine(
        policy,
        loader=GatedLoader(),
        clock=FakeClock(),
        executor=InlineExecutor(),
        load_executor=ThreadExecutor(1, None, "test-load"),
        resolve_executor=InlineExecutor(),
        workers=1,
    )
    async with engine:
        first = await engine.submit(req())
        await settle()  # the load has started
        before = policy.calls
        try:
            futures = [await engine.submit(req()) for _ in range(2000)]
            await settle()
            assert policy.calls - before <= 3  # one per loop turn that had news, not one per request
        finally:
            gate.set()
        results = await asyncio.gather(first, *futures)
    assert len(results) == 2001 and max(r.batch_size for r in results) == 32
