"""Eviction orders: ``lru`` and ``gdsf`` (requests x reload time by tier / size), in every
residency policy, on hand-built states and through the engine."""

from __future__ import annotations

import pytest

from chronoserve import ForecastRequest
from chronoserve.policies.batched import BatchedPolicy
from chronoserve.policies.eviction import GDSF, eviction_order
from chronoserve.policies.lru import LRUPolicy
from chronoserve.policy import Evict, Load
from chronoserve.testing import FakeCosts, FakeLoader, fake_engine, queued, state


def asked(model: str, times: int, start_seq: int) -> list:
    return [queued(model, float(i), seq=start_seq + i) for i in range(times)]


def test_gdsf_keeps_the_model_asked_for_most_where_lru_keeps_the_one_used_last() -> None:
    gdsf, lru = LRUPolicy(max_resident=2, eviction="gdsf"), LRUPolicy(max_resident=2)
    # a is asked for 5 times, b once; both are then resident and idle, a used longer ago.
    history = state(asked("a", 5, 0) + asked("b", 1, 10), ready={"a": 1.0, "b": 2.0}, free_slots=0)
    gdsf.decide(history, now=3.0)
    lru.decide(history, now=3.0)
    s = state([queued("c", 4.0, seq=20)], ready={"a": 1.0, "b": 2.0})
    assert gdsf.decide(s, now=5.0) == [Evict("b"), Load("c")]
    assert lru.decide(s, now=5.0) == [Evict("a"), Load("c")]


def test_gdsf_evicts_the_larger_of_two_models_asked_for_equally() -> None:
    policy = LRUPolicy(max_resident=2, eviction="gdsf")
    sizes = {"small": 1_000_000, "large": 50_000_000, "c": 1_000_000}
    policy.decide(state(asked("small", 2, 0) + asked("large", 2, 10), sizes=sizes, free_slots=0), now=1.0)
    s = state([queued("c", 2.0, seq=20)], ready={"small": 0.0, "large": 5.0}, sizes=sizes)
    assert policy.decide(s, now=3.0) == [Evict("large"), Load("c")]


def test_gdsf_evicts_first_the_model_that_would_reload_cheaply_from_the_host_tier() -> None:
    # Same size, same requests; only "cheap" fits the host tier, whose reloads are 10x faster.
    costs = FakeCosts(tier_loads={"host": 0.05, "disk": 0.5})
    sizes = {"cheap": 10_000_000, "dear": 30_000_000, "c": 1_000_000}
    policy = LRUPolicy(max_resident=2, eviction="gdsf")
    first = state(asked("cheap", 3, 0) + asked("dear", 3, 10), sizes=sizes, costs=costs, host_budget=20_000_000)
    policy.decide(first, now=1.0)
    assert policy.eviction.value("cheap", first) == pytest.approx(0.05 / 10)
    assert policy.eviction.value("dear", first) == pytest.approx(0.5 / 30)
    s = state(
        [queued("c", 2.0, seq=20)],
        ready={"cheap": 5.0, "dear": 0.0},
        sizes=sizes,
        costs=costs,
        host_budget=20_000_000,
    )
    assert policy.decide(s, now=3.0) == [Evict("cheap"), Load("c")]


def test_gdsf_ages_a_once_popular_model_out_through_the_inflation() -> None:
    policy = LRUPolicy(max_resident=1, eviction="gdsf")
    assert isinstance(policy.eviction, GDSF)
    policy.decide(state(asked("old", 3, 0), free_slots=0), now=0.0)
    seq, evicted = 100, []
    resident = "old"
    for i, model in enumerate(["m1", "m2", "m3", "m4", "m5"] * 2):
        if model == resident:
            continue
        decisions = policy.decide(state([queued(model, float(i), seq=seq)], ready={resident: 0.0}), now=float(i))
        seq += 1
        assert decisions == [Evict(resident), Load(model)]
        evicted.append(resident)
        resident = model
    assert evicted[0] == "old"
    assert policy.eviction.inflation > 0
    # Each eviction raised L: a newcomer's priority (L + 1 x value) now beats old's three requests.
    assert policy.eviction.priority["m5"] > policy.eviction.priority["old"]


def test_gdsf_still_evicts_a_model_nobody_waits_for_before_one_that_has_waiting_requests() -> None:
    policy = LRUPolicy(max_resident=2, eviction="gdsf")
    policy.decide(state(asked("popular", 9, 0), free_slots=0), now=0.0)
    reqs = [queued("waited", 0.5, seq=50), queued("c", 1.0, seq=51)]
    s = state(reqs, ready={"popular": 0.0, "waited": 0.0}, free_slots=0)
    assert policy.decide(s, now=2.0) == [Evict("popular"), Load("c")]


def test_counting_reads_only_what_arrived_since_the_last_decision() -> None:
    order = GDSF()
    reqs = asked("a", 3, 0)
    order.observe(state(reqs))
    order.observe(state(reqs))  # the same queue again: nothing new
    assert order.frequency == {"a": 3}
    order.observe(state(reqs[2:] + [queued("a", 3.0, seq=3), queued("a", 4.0, seq=4)]))
    assert order.frequency == {"a": 5}


def test_eviction_is_an_option_of_every_residency_policy_and_is_described() -> None:
    assert BatchedPolicy(eviction="gdsf").describe()["eviction"] == "gdsf"
    assert LRUPolicy().describe()["eviction"] == "lru"
    for name in ("deadline", "bentoml"):
        from chronoserve.plugins import load_policy

        assert load_policy(name, {"eviction": "gdsf"}).describe()["eviction"] == "gdsf"
    with pytest.raises(ValueError, match="eviction must be one of lru, gdsf"):
        eviction_order("fifo")


async def test_the_engine_answers_every_request_of_a_multi_model_sequence_under_gdsf() -> None:
    names = [f"m{i}" for i in range(6)]
    loader = FakeLoader.with_models(*names)
    engine = fake_engine(
        "batched", loader=loader, policy_options={"max_resident": 2, "eviction": "gdsf"}, host_budget=10**9
    )
    sequence = ["m0", "m1", "m0", "m2", "m0", "m3", "m1", "m0", "m4", "m5", "m0", "m1"]
    async with engine:
        for model in sequence:
            result = await engine.forecast(ForecastRequest(model=model, target=[1.0, 2.0, 3.0] * 8, horizon=2))
            assert result.median.tolist() == [3.0, 3.0]
        assert len(engine.stats().resident) <= 2
    assert loader.loads["m0"] == 1  # the popular model was never evicted
    assert sum(loader.promotions.values()) >= 1
