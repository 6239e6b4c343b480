"""Every bound is checked before the work it bounds; failed loads back off; batches can be stopped.

Fake models and the fake clock: no torch, no sleeping on the test's side.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence

import numpy as np
import pytest

from chronoserve import ForecastRequest
from chronoserve.errors import EngineClosed, InferenceTimeout, InvalidRequest, ModelLoadError, TooCostly
from chronoserve.executor import ThreadExecutor
from chronoserve.limits import MAX_MODEL_NAME, MAX_SEED, Limits, check_model_name, estimate_gflop
from chronoserve.models.loader import ChronosLoader
from chronoserve.testing import FakeClock, FakeLoader, fake_engine, fake_spec, settle


class Untouchable(Sequence[float]):
    """A series that fails the test if anyone converts or reads it: proof that no work ran."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):  # type: ignore[no-untyped-def]
        raise AssertionError("the series was read")

    def __iter__(self) -> Iterator[float]:
        raise AssertionError("the series was read")

    def __array__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("the series was converted")


def req(model: str = "fake", n: int = 32, horizon: int = 4, **kw) -> ForecastRequest:
    return ForecastRequest(model=model, target=np.arange(n, dtype=np.float32), horizon=horizon, **kw)


# -- names --------------------------------------------------------------------------------------


async def test_spellings_of_one_model_share_one_spec_one_load_and_one_name():
    loader = FakeLoader.with_models("fake")
    async with fake_engine(loader=loader) as engine:
        results = [await engine.forecast(req(model)) for model in ("fake", " fake", "fake  ", "\tfake\n")]
    assert {r.model for r in results} == {"fake"}
    assert loader.loads == {"fake": 1}
    assert list(engine.resident()) == []  # closed; during the run there was one entry only


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("x" * (MAX_MODEL_NAME + 1), "limit"),
        ("x" * 100_000, "longer than"),
        ("fa\x00ke", "control"),
        ("fa\nke", "control"),
        (42, "string"),
        (None, "string"),
    ],
)
async def test_names_that_cannot_be_model_names_are_refused_naming_the_field(name, message):
    async with fake_engine() as engine:
        with pytest.raises(InvalidRequest, match=message) as info:
            await engine.forecast(req(name))
    assert info.value.field == "model"
    assert engine.stats().submitted == 0


def test_check_model_name_strips_and_bounds():
    assert check_model_name("  random/chronos-2 ") == "random/chronos-2"
    assert check_model_name("x" * MAX_MODEL_NAME) == "x" * MAX_MODEL_NAME


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("random/chronos-bolt-tiny", "random/chronos-bolt-tiny"),
        ("random/chronos-bolt-tiny   ", "random/chronos-bolt-tiny"),
        ("  random/chronos-bolt-tiny", "random/chronos-bolt-tiny"),
        ("random/amazon/chronos-bolt-tiny", "random/chronos-bolt-tiny"),
        ("amazon/chronos-bolt-tiny", "chronos-bolt-tiny"),
        (" chronos-bolt-tiny", "chronos-bolt-tiny"),
        ("tiny-chronos-bolt", "random/tiny-chronos-bolt"),
        ("chronos-2-pm25 ", "chronos-2-pm25"),
        ("./some//checkpoint/", "some/checkpoint"),
        ("org/model", "org/model"),
    ],
)
def test_chronos_loader_gives_every_spelling_of_a_model_one_name(name, canonical):
    assert ChronosLoader().canonical(name) == canonical


# -- bounds before work -------------------------------------------------------------------------


async def test_a_horizon_beyond_the_model_is_refused_before_the_series_is_read():
    loader = FakeLoader(specs={"fake": fake_spec("fake", max_horizon=64)})
    async with fake_engine(loader=loader) as engine:
        with pytest.raises(InvalidRequest) as info:
            await engine.forecast(ForecastRequest(model="fake", target=Untouchable(10), horizon=2755369720))
    assert info.value.field == "horizon"


async def test_too_many_covariates_are_refused_before_any_is_converted():
    async with fake_engine(limits=Limits(max_covariates=2)) as engine:
        covariates = {f"c{i}": Untouchable(32) for i in range(3)}
        with pytest.raises(InvalidRequest, match="at most 2") as info:
            await engine.forecast(req(past_covariates=covariates))
        assert info.value.field == "past_covariates"
        # past and known-future count once per name
        ok = {f"c{i}": np.zeros(32) for i in range(2)}
        result = await engine.forecast(req(past_covariates=ok, future_covariates={"c0": np.zeros(4)}))
        assert result.horizon == 4


async def test_a_series_longer_than_any_model_reads_is_refused_before_conversion():
    async with fake_engine() as engine:
        with pytest.raises(InvalidRequest, match="limit") as info:
            await engine.forecast(ForecastRequest(model="fake", target=Untouchable(10**9), horizon=1))
    assert info.value.field == "target"


async def test_seed_and_quantile_levels_are_bounded():
    async with fake_engine() as engine:
        with pytest.raises(InvalidRequest) as info:
            await engine.forecast(req(seed=MAX_SEED + 1))
        assert info.value.field == "seed"
        with pytest.raises(InvalidRequest) as info:
            await engine.forecast(req(quantile_levels=[i / 1000 for i in range(1, 201)]))
        assert info.value.field == "quantile_levels"


def test_the_cost_estimate_grows_with_rows_context_horizon_and_parameters():
    spec = fake_spec("m", nbytes=4_000_000)  # 1M parameters
    base = estimate_gflop(spec, context=512, horizon=16)
    assert estimate_gflop(spec, context=512, horizon=16, rows=5) == pytest.approx(5 * base)
    assert estimate_gflop(spec, context=1024, horizon=16) > base
    assert estimate_gflop(spec, context=512, horizon=64) > base
    bigger = fake_spec("m", nbytes=8_000_000)
    assert estimate_gflop(bigger, context=512, horizon=16) == pytest.approx(2 * base)
    t5 = fake_spec("t", family="chronos-t5", nbytes=4_000_000)
    # T5 decodes one step per horizon step and sample: the horizon dominates
    assert estimate_gflop(t5, context=512, horizon=64) > 3 * estimate_gflop(t5, context=512, horizon=1)


async def test_a_request_over_the_cost_budget_is_refused_naming_what_makes_it_costly():
    spec = fake_spec("fake", nbytes=4_000_000, context_length=8192)
    alone = estimate_gflop(spec, context=4096, horizon=4)
    limits = Limits(max_request_gflop=alone * 1.5)
    async with fake_engine(loader=FakeLoader(specs={"fake": spec}), limits=limits) as engine:
        assert (await engine.forecast(req(n=4096))).context_used == 4096
        with pytest.raises(TooCostly, match="GFLOP") as info:
            await engine.forecast(req(n=4096, past_covariates={"a": Untouchable(4096), "b": Untouchable(4096)}))
        assert info.value.field == "past_covariates"
        with pytest.raises(TooCostly) as info:
            await engine.forecast(req(n=8192))
        assert info.value.field == "context_length"
    assert engine.stats().submitted == 1


def test_limits_refuse_nonsense():
    with pytest.raises(ValueError, match="max_covariates"):
        Limits(max_covariates=-1)
    with pytest.raises(ValueError, match="max_request_gflop"):
        Limits(max_request_gflop=float("nan"))
    with pytest.raises(ValueError, match="max_inference_seconds"):
        Limits(max_inference_seconds=0)


# -- failed loads back off ----------------------------------------------------------------------


async def test_a_failed_load_is_not_retried_until_its_backoff_has_passed():
    clock = FakeClock()
    loader = FakeLoader(specs={"bad": fake_spec("bad"), "good": fake_spec("good")}, fail_load={"bad"})
    async with fake_engine(
        loader=loader, clock=clock, load_retry=(1.0, 4.0), policy_options={"max_wait": 0.0}
    ) as engine:
        waits = []
        for _ in range(4):
            with pytest.raises(ModelLoadError) as info:
                await engine.forecast(req("bad"))
            waits.append(info.value.retry_after)
            # at once again: refused without a new load, telling the time left
            with pytest.raises(ModelLoadError, match="next try") as again:
                await engine.forecast(req("bad"))
            assert again.value.retry_after == pytest.approx(waits[-1])
            clock.advance(waits[-1] / 2)
            with pytest.raises(ModelLoadError) as half:
                await engine.forecast(req("bad"))
            assert half.value.retry_after == pytest.approx(waits[-1] / 2)
            clock.advance(waits[-1] / 2)
        assert waits == [1.0, 2.0, 4.0, 4.0]  # doubling, capped
        assert loader.loads["bad"] == 4
        failure = engine.load_failures()["bad"]
        assert failure.failures == 4 and "told to fail" in failure.error
        # other models are not held back
        assert (await engine.forecast(req("good"))).model == "good"
        # once the load works, the failure is forgotten
        loader.fail_load.clear()
        assert (await engine.forecast(req("bad"))).model == "bad"
        assert "bad" not in engine.load_failures()


async def test_requests_queued_behind_a_failing_load_get_its_retry_after():
    loader = FakeLoader(specs={"bad": fake_spec("bad")}, fail_load={"bad"})
    async with fake_engine(loader=loader, clock=FakeClock(), load_retry=(3.0, 30.0)) as engine:
        results = await engine.forecast_many([req("bad") for _ in range(5)], return_exceptions=True)
    assert all(isinstance(r, ModelLoadError) and r.retry_after == pytest.approx(3.0) for r in results)
    assert loader.loads["bad"] == 1


async def test_naive_private_loads_back_off_too():
    loader = FakeLoader(specs={"bad": fake_spec("bad")}, fail_load={"bad"})
    async with fake_engine("naive", loader=loader, clock=FakeClock()) as engine:
        with pytest.raises(ModelLoadError):
            await engine.forecast(req("bad"))
        with pytest.raises(ModelLoadError, match="next try"):
            await engine.forecast(req("bad"))
    assert loader.loads["bad"] == 1


# -- stopping a running batch -------------------------------------------------------------------


def threaded_engine(loader: FakeLoader, clock: FakeClock, **options):
    from chronoserve import Engine

    return Engine(
        "batched",
        policy_options={"max_batch": 8, "max_wait": 0.0},
        loader=loader,
        clock=clock,
        executor=ThreadExecutor(1, None, "test-infer"),
        workers=1,
        prefetch=0,
        **options,
    )


async def wait_started(loader: FakeLoader, name: str) -> None:
    while not loader.instances or not loader.instances[-1].started.is_set():
        await asyncio.to_thread(lambda: loader.instances and loader.instances[-1].started.wait(0.05))
        await settle(2)


async def test_a_batch_past_max_inference_seconds_is_stopped_and_the_worker_freed():
    clock = FakeClock()
    loader = FakeLoader(specs={"slow": fake_spec("slow"), "fast": fake_spec("fast")}, hang={"slow"})
    async with threaded_engine(loader, clock, limits=Limits(max_inference_seconds=5.0)) as engine:
        task = asyncio.ensure_future(engine.forecast(req("slow")))
        await wait_started(loader, "slow")
        clock.advance(4.0)
        await settle()
        assert not task.done()
        clock.advance(2.0)
        with pytest.raises(InferenceTimeout, match="5 s"):
            await task
        # the one worker is free again
        assert (await engine.forecast(req("fast"))).model == "fast"


async def test_a_batch_whose_requests_all_left_stops():
    loader = FakeLoader(specs={"slow": fake_spec("slow")}, hang={"slow"})
    async with threaded_engine(loader, FakeClock(), limits=Limits(max_inference_seconds=None)) as engine:
        tasks = [asyncio.ensure_future(engine.forecast(req("slow"))) for _ in range(3)]
        await wait_started(loader, "slow")
        for task in tasks[:2]:
            task.cancel()
        await settle()
        assert engine.stats().running_batches == 1  # one client still waits
        tasks[2].cancel()
        # close() waits for running batches: it returns once the batch stopped at a checkpoint
        # (a batch nobody stops runs FakeModel.HANG_LIMIT = 60 s, far past this bound)
        await asyncio.wait_for(engine.close(), timeout=30)
    assert all(t.cancelled() for t in tasks)
    assert loader.instances[0].batches and engine.stats().completed == 0


async def test_close_stops_running_batches_once_the_drain_timeout_has_passed():
    loader = FakeLoader(specs={"slow": fake_spec("slow")}, hang={"slow"})
    engine = threaded_engine(loader, FakeClock(), limits=Limits(max_inference_seconds=None))
    await engine.start()
    task = asyncio.ensure_future(engine.forecast(req("slow")))
    await wait_started(loader, "slow")
    await engine.close(drain=True, timeout=0.05)
    with pytest.raises(EngineClosed, match="drain timeout"):
        await task
