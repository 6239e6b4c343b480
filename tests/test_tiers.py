"""Residency in tiers: demotion to the host tier on eviction, promotion from it, its budget,
imports timed apart from loads, and the cost model's load times per tier."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
from waiting import until

from chronoserve import ForecastRequest
from chronoserve.costs import CostModel
from chronoserve.engine import Engine
from chronoserve.events import EngineObserver
from chronoserve.executor import InlineExecutor
from chronoserve.models.base import HostCopy, ModelBackend, ModelSpec
from chronoserve.testing import FakeClock, FakeLoader, fake_engine
from chronoserve.tiers import HostTier

SERIES = [float(i % 24) for i in range(48)]


def request(model: str) -> ForecastRequest:
    return ForecastRequest(model=model, target=SERIES, horizon=6)


class Moves(EngineObserver):
    def __init__(self) -> None:
        self.moves: list[tuple[str, str, str]] = []

    def model_moved(self, model: str, source: str, target: str, seconds: float) -> None:
        self.moves.append((model, source, target))


# -- the host tier's bookkeeping ---------------------------------------------------------------


def copy(model: str, nbytes: int) -> HostCopy:
    return HostCopy(model, nbytes, payload=model)


def test_the_host_tier_drops_the_copies_demoted_longest_ago_to_make_room() -> None:
    tier = HostTier(100)
    assert tier.put(copy("a", 40)) == []
    assert tier.put(copy("b", 40)) == []
    assert tier.put(copy("c", 40)) == ["a"]
    assert tier.models() == ("b", "c") and tier.nbytes == 80
    assert tier.put(copy("d", 100)) == ["b", "c"]
    assert tier.models() == ("d",) and tier.nbytes == 100


def test_a_copy_larger_than_the_budget_is_not_kept_and_a_newer_copy_replaces_an_older() -> None:
    tier = HostTier(100)
    assert tier.put(copy("big", 101)) == ["big"]
    assert "big" not in tier and tier.nbytes == 0
    tier.put(copy("a", 30))
    tier.put(copy("a", 50))
    assert tier.models() == ("a",) and tier.nbytes == 50
    taken = tier.take("a")
    assert taken is not None and taken.nbytes == 50
    assert tier.take("a") is None and tier.nbytes == 0


def test_no_budget_means_no_host_tier() -> None:
    assert not HostTier(None).enabled and not HostTier(0).enabled
    with pytest.raises(ValueError, match="budget"):
        HostTier(-1)


# -- the engine: demote, promote ---------------------------------------------------------------


async def test_an_evicted_model_is_demoted_to_host_and_promoted_from_there_with_the_same_answers() -> None:
    loader = FakeLoader.with_models("a", "b")
    moves = Moves()
    engine = fake_engine("lru", loader=loader, policy_options={"max_resident": 1}, host_budget=10**9)
    engine.add_observer(moves)
    async with engine:
        first = await engine.forecast(request("a"))
        await engine.forecast(request("b"))  # evicts a: demoted
        assert engine.stats().host_models == ("a",)
        assert engine.stats().host_bytes == 1_000_000
        assert engine.tiers() == {"a": "host", "b": "resident"}
        again = await engine.forecast(request("a"))  # evicts b, promotes a from host
        assert loader.promotions == {"a": 1}
        assert engine.resident()["a"].loaded_from == "host"
        assert engine.stats().host_models == ("b",)
    np.testing.assert_array_equal(again.median, first.median)
    np.testing.assert_array_equal(again.quantiles, first.quantiles)
    assert again.cold_start
    assert moves.moves == [
        ("a", "disk", "resident"),
        ("a", "resident", "host"),
        ("b", "disk", "resident"),
        ("b", "resident", "host"),
        ("a", "host", "resident"),
    ]


async def test_without_a_host_budget_an_evicted_model_is_dropped_and_reloaded_from_its_tier() -> None:
    loader = FakeLoader.with_models("a", "b")
    loader.hub = {"b"}
    moves = Moves()
    engine = fake_engine("lru", loader=loader, policy_options={"max_resident": 1})
    engine.add_observer(moves)
    async with engine:
        await engine.forecast(request("a"))
        await engine.forecast(request("b"))
        await engine.forecast(request("a"))
        assert engine.stats().host_models == () and engine.stats().host_budget == 0
        assert engine.resident()["a"].loaded_from == "disk"
    assert loader.promotions == {}
    assert ("b", "hub", "resident") in moves.moves
    assert ("a", "resident", "disk") in moves.moves and ("b", "resident", "hub") in moves.moves


async def test_a_model_larger_than_the_host_budget_or_not_offloadable_goes_down_to_disk() -> None:
    loader = FakeLoader.with_models("a", "b", "c")
    loader.no_offload = {"c"}
    engine = fake_engine("lru", loader=loader, policy_options={"max_resident": 1}, host_budget=999_999)
    async with engine:
        for model in ("a", "b", "c", "a"):
            await engine.forecast(request(model))
        assert engine.stats().host_models == ()
    assert loader.promotions == {}
    assert loader.loads == {"a": 2, "b": 1, "c": 1}


async def test_the_host_tier_drops_its_oldest_copy_when_full_and_says_so() -> None:
    loader = FakeLoader.with_models("a", "b", "c")
    moves = Moves()
    engine = fake_engine("lru", loader=loader, policy_options={"max_resident": 1}, host_budget=1_500_000)
    engine.add_observer(moves)
    async with engine:
        for model in ("a", "b", "c"):
            await engine.forecast(request(model))
        assert engine.stats().host_models == ("b",)  # a was dropped to make room for b
    assert ("a", "host", "disk") in moves.moves


class SlowOffload(FakeLoader):
    """Offloading blocks until ``release`` is set (on a real load thread)."""

    def __init__(self) -> None:
        super().__init__(specs=FakeLoader.with_models("a", "b").specs)
        self.release = threading.Event()
        self.offloading = threading.Event()

    def offload(self, backend: ModelBackend) -> HostCopy | None:
        self.offloading.set()
        assert self.release.wait(30), "the test never released the offload"
        return super().offload(backend)


async def test_a_load_of_a_model_still_being_demoted_waits_for_its_host_copy() -> None:
    loader = SlowOffload()
    engine = Engine(
        "lru",
        policy_options={"max_resident": 1},
        loader=loader,
        load_workers=2,  # the reload could otherwise only queue behind the demotion anyway
        workers=1,
        torch_threads=1,
        host_budget=10**9,
    )
    async with engine:
        await engine.forecast(request("a"))
        await engine.forecast(request("b"))  # evicts a; its offload blocks
        await asyncio.to_thread(loader.offloading.wait, 30)
        again = asyncio.ensure_future(engine.forecast(request("a")))  # evicts b, loads a
        await until(lambda: "a" in engine.resident() and engine.resident()["a"].status == "loading", "a loads")
        assert not again.done()
        loader.release.set()
        await again
    assert loader.promotions == {"a": 1}
    assert loader.loads == {"a": 2, "b": 1}


# -- imports apart, loads timed where they run ----------------------------------------------------


class SlowImports(FakeLoader):
    """Its imports take 5 s of the fake clock; its loads take 0.25 s."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(specs=FakeLoader.with_models("a").specs)
        self.clock = clock

    def import_modules(self) -> None:
        self.clock.advance(5.0)

    def load(self, spec: ModelSpec, host: HostCopy | None = None) -> ModelBackend:
        self.clock.advance(0.25)
        return super().load(spec, host)


async def test_the_imports_are_timed_apart_and_a_load_is_the_load_alone() -> None:
    clock = FakeClock()
    engine = Engine(
        "lru",
        loader=SlowImports(clock),
        clock=clock,
        executor=InlineExecutor(),
        load_executor=InlineExecutor(),
        resolve_executor=InlineExecutor(),
        workers=1,
        torch_threads=1,
    )
    async with engine:
        result = await engine.forecast(request("a"))
        assert engine.stats().import_seconds == 5.0
        assert engine.resident()["a"].load_seconds == 0.25
    assert engine.costs.predict_load("a", 1_000_000, "disk") == pytest.approx(0.25, rel=0.01)
    assert result.timings.load == pytest.approx(0.25)


async def test_a_load_waits_for_the_imports_on_another_load_thread() -> None:
    started = threading.Event()
    release = threading.Event()

    class BlockingImports(FakeLoader):
        def import_modules(self) -> None:
            started.set()
            assert release.wait(30)

    loader = BlockingImports(specs=FakeLoader.with_models("a").specs)
    engine = Engine("lru", loader=loader, load_workers=2, workers=1, torch_threads=1)
    async with engine:
        await asyncio.to_thread(started.wait, 30)
        answer = asyncio.ensure_future(engine.forecast(request("a")))
        await until(lambda: "a" in engine.resident(), "a is decided")
        assert loader.loads == {}  # resolved and decided, but not loaded before the imports end
        release.set()
        await answer
    assert loader.loads == {"a": 1}


# -- the cost model's loads per tier --------------------------------------------------------------


def test_load_times_are_learned_per_tier_and_an_unseen_tier_is_predicted_as_a_disk_load() -> None:
    costs = CostModel()
    for _ in range(5):
        costs.observe_load("m", 100_000_000, 0.4, "disk")
    assert costs.predict_load("m", 100_000_000, "host") == pytest.approx(0.4, rel=0.05)
    for _ in range(5):
        costs.observe_load("m", 100_000_000, 0.1, "host")
    assert costs.predict_load("m", 100_000_000, "host") == pytest.approx(0.1, rel=0.05)
    assert costs.predict_load("m", 100_000_000, "disk") == pytest.approx(0.4, rel=0.05)
    assert costs.predict_load("m", 100_000_000) == pytest.approx(0.4, rel=0.05)
