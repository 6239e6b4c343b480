"""Placement by readiness: the estimate (queue wait and load estimate by tier), the router's
own account between views, and an engine group that follows its models."""

from __future__ import annotations

import asyncio

import pytest

from chronoserve import ForecastRequest
from chronoserve.group import EngineGroup
from chronoserve.placement import SPILL, Readiness, Router, place
from chronoserve.testing import FakeLoader, fake_engine

SERIES = [float(i % 24) for i in range(48)]


def view(backlog: float = 0.0, **models: float) -> Readiness:
    tiers = {m: "resident" if s == 0 else "disk" for m, s in models.items()}
    return Readiness(backlog=backlog, models=models, tiers=tiers, new_model=0.5, per_request=0.01, workers=1)


def test_a_request_goes_where_its_model_is_resident() -> None:
    assert place("a", [view(b=0.0), view(a=0.0)]) == 1


def test_a_busy_engine_loses_to_a_load_elsewhere_once_its_queue_outlasts_it_by_the_spill_margin() -> None:
    margin = 0.5 * (1 + SPILL)  # the load elsewhere, and SPILL loads for the model it would push out
    assert place("a", [view(backlog=margin - 0.1, a=0.0), view(a=0.5)]) == 0  # waiting beats a second copy
    assert place("a", [view(backlog=margin + 0.1, a=0.0), view(a=0.5)]) == 1  # the queue is too long
    # Without hysteresis the queue need only outlast the load: loading for 0.5 s beats waiting 0.8 s.
    assert place("a", [view(backlog=0.8, a=0.0), view(a=0.5)], spill=0.0) == 1
    # Nobody holds it: no margin, the sooner start wins.
    assert place("a", [view(backlog=0.8), view(backlog=0.4)]) == 1


def test_the_host_tier_makes_an_engine_the_faster_place_to_reload() -> None:
    host = Readiness(backlog=0.0, models={"a": 0.05}, tiers={"a": "host"}, new_model=0.5)
    disk = Readiness(backlog=0.0, models={"a": 0.5}, tiers={"a": "disk"}, new_model=0.5)
    assert place("a", [disk, host]) == 1


def test_ties_go_to_the_closest_weights_then_the_least_busy_then_in_turn() -> None:
    a_in_host = Readiness(backlog=0.1, models={"a": 0.5}, tiers={"a": "host"}, new_model=0.5)
    idle = Readiness(backlog=0.0, new_model=0.5)
    assert place("a", [idle, a_in_host]) == 1  # same start (0.5 s): the host copy wins
    assert place("b", [view(backlog=0.1), view(backlog=0.0)]) == 1
    assert [place("c", [idle, idle, idle], first) for first in range(3)] == [0, 1, 2]
    # A load where another model is resident pushes it out: an empty engine wins the tie, even
    # against a host copy (two models taking turns on one engine, each evicting the other).
    b_there_a_in_host = Readiness(backlog=0.0, models={"a": 0.5}, tiers={"a": "host", "b": "resident"}, new_model=0.5)
    assert place("a", [b_there_a_in_host, idle]) == 1
    with pytest.raises(ValueError, match="no engine"):
        place("a", [])


def test_load_estimates_within_noise_of_each_other_are_equal() -> None:
    # `a` is resident on engine 0; `b` would load on either, estimated 0.19 s there and 0.21 s on
    # the idle engine 1: the same load, give or take the estimators' noise. On 0 it would push `a`
    # out (and `a`'s next request would push `b` out in turn): it goes to 1.
    busy = Readiness(backlog=0.02, models={"a": 0.0, "b": 0.19}, tiers={"a": "resident", "b": "disk"})
    idle = Readiness(backlog=0.0, models={"b": 0.21}, tiers={"b": "disk"}, new_model=0.2)
    assert place("b", [busy, idle]) == 1
    # Beyond the noise the sooner load wins, crowded or not; and where the model is, the exact margin holds.
    assert place("b", [busy, Readiness(backlog=0.0, models={"b": 0.4}, tiers={"b": "disk"})]) == 0
    assert place("a", [busy, idle]) == 0


def test_the_router_sends_a_burst_for_a_new_model_to_one_engine_until_its_queue_outgrows_the_margin() -> None:
    router = Router(2)
    for i in range(2):
        router.update(i, Readiness(backlog=0.0, new_model=0.1, per_request=0.02, workers=1))
    stay = int(0.1 * (1 + SPILL) / 0.02)  # requests (0.02 s each) queued before a load elsewhere is sooner
    placed = [router.place("a") for _ in range(stay + 3)]
    # The first ones queue behind the load on one engine (0.1 s); past the margin the other loads it too.
    assert placed[:stay] == [placed[0]] * stay
    assert set(placed) == {0, 1}
    assert router.placed == [placed.count(0), placed.count(1)]


def test_the_router_ages_each_view_by_the_time_since_it_came() -> None:
    def router() -> Router:
        r = Router(2)
        r.update(0, view(backlog=3.0, a=0.0), now=10.0)  # 3 s of work queued where `a` is
        r.update(1, view(a=0.5), now=10.0)
        return r

    assert router().place("a", now=10.0) == 1  # 3 s of queue: past the margin, a second copy
    assert router().place("a", now=12.0) == 0  # 2 s later 1 s is left: wait for it
    assert router().place("a") == 1  # no time given: the views as they came


def test_a_view_asked_for_before_a_placement_is_given_it_back() -> None:
    # The engine answered before the request reached it: the view must not forget that `a` is on
    # its way there (a late view on a loaded machine would send the next `a` to the other engine).
    r = Router(2)
    r.update(0, view(), now=0.0, asked=0.0)
    r.update(1, view(), now=0.0, asked=0.0)
    assert r.place("a", now=1.0) == 0
    r.update(0, view(), now=2.0, asked=0.5)  # asked before the placement at 1.0: `a` counted again
    assert r.views[0].tiers["a"] == "resident" and r.place("a", now=2.0) == 0
    r.update(0, view(), now=3.0, asked=2.5)  # asked after both: the engine's word alone
    assert "a" not in r.views[0].tiers
    r.update(0, view(), now=4.0)  # no asked: nothing is counted again, nothing kept
    assert "a" not in r.views[0].tiers


async def test_a_model_queued_for_but_not_yet_loading_is_reported_on_its_way() -> None:
    loader = FakeLoader.with_models("a")
    async with fake_engine("lru", loader=loader) as engine:
        future = await engine.submit(ForecastRequest(model="a", target=SERIES, horizon=4))
        ready = engine.readiness()  # before the scheduler has run: queued, no load decided yet
        assert ready.tiers["a"] == "resident" and ready.backlog >= 0.0
        await future


def test_a_view_survives_a_round_trip_as_a_dict() -> None:
    v = Readiness(backlog=0.3, models={"a": 0.0, "b": 0.2}, tiers={"a": "resident", "b": "host"}, new_model=0.4)
    assert Readiness.from_dict(v.to_dict()) == v


async def test_an_engine_reports_its_backlog_and_each_models_readiness_by_tier() -> None:
    loader = FakeLoader.with_models("a", "b")
    engine = fake_engine("lru", loader=loader, policy_options={"max_resident": 1}, host_budget=10**9)
    async with engine:
        await engine.forecast(ForecastRequest(model="a", target=SERIES, horizon=4))
        await engine.forecast(ForecastRequest(model="b", target=SERIES, horizon=4))
        ready = engine.readiness()
    assert ready.tiers == {"a": "host", "b": "resident"}
    assert ready.models["b"] == 0.0 and ready.models["a"] >= 0.0
    assert ready.backlog == 0.0 and ready.workers == 1


async def test_a_group_follows_each_model_to_the_engine_that_loaded_it() -> None:
    loaders = [FakeLoader.with_models("a", "b", "c") for _ in range(2)]
    engines = [fake_engine("lru", loader=loader, policy_options={"max_resident": 2}) for loader in loaders]
    async with EngineGroup(engines) as group:
        for model in ["a", "b", "a", "b", "c", "a", "c", "b"] * 3:
            result = await group.forecast(ForecastRequest(model=model, target=SERIES, horizon=4))
            assert result.model == model
    loads = [sum(loader.loads.values()) for loader in loaders]
    assert sum(loads) == 3  # each model loaded once, on one engine
    assert sorted(loads) == [1, 2]  # and the models spread over both


async def test_a_group_places_concurrent_requests_without_losing_any() -> None:
    loaders = [FakeLoader.with_models(*"abcdef") for _ in range(3)]
    engines = [fake_engine("batched", loader=loader, policy_options={"max_resident": 2}) for loader in loaders]
    async with EngineGroup(engines) as group:
        requests = [ForecastRequest(model="abcdef"[i % 6], target=SERIES, horizon=4) for i in range(60)]
        results = await asyncio.gather(*(group.forecast(r) for r in requests))
    assert [r.model for r in results] == [r.model for r in requests]
    assert sum(group.router.placed) == 60


def test_other_placements_are_there_to_compare_against() -> None:
    engines = [fake_engine("lru") for _ in range(3)]
    turns = EngineGroup(engines, "round-robin")
    assert [turns.choose("a") for _ in range(4)] == [0, 1, 2, 0]
    group = EngineGroup(engines, "random", seed=1)
    assert {group.choose("a") for _ in range(50)} == {0, 1, 2}
    with pytest.raises(ValueError, match="placement must be one of"):
        EngineGroup(engines, "nearest")
    with pytest.raises(ValueError, match="at least one engine"):
        EngineGroup([])
