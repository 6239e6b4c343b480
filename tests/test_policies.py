"""The three built-in policies as pure functions of a hand-built state and the time."""

from __future__ import annotations

import pytest

from chronoserve.policies import BatchedPolicy, LRUPolicy, NaivePolicy
from chronoserve.policy import Dispatch, Evict, Fail, Load, WakeAt
from chronoserve.testing import queued, state


def dispatches(decisions):
    return [d for d in decisions if isinstance(d, Dispatch)]


def wakes(decisions):
    return [d.time for d in decisions if isinstance(d, WakeAt)]


# -- batched: B and Δt ----------------------------------------------------------------------


def test_batched_waits_until_exactly_max_wait_after_the_oldest():
    policy = BatchedPolicy(max_batch=4, max_wait=0.05)
    reqs = [queued("m", 0.0, seq=1), queued("m", 0.01, seq=2), queued("m", 0.02, seq=3)]
    s = state(reqs, ready=["m"])
    early = policy.decide(s, now=0.05 - 1e-9)
    assert dispatches(early) == []
    assert wakes(early) == [pytest.approx(0.05)]
    on_time = policy.decide(s, now=0.05)
    assert dispatches(on_time) == [Dispatch("m", (1, 2, 3))]


def test_batched_dispatches_as_soon_as_max_batch_are_waiting():
    policy = BatchedPolicy(max_batch=3, max_wait=10.0)
    reqs = [queued("m", 0.0, seq=i) for i in range(3)]
    assert dispatches(policy.decide(state(reqs[:2], ready=["m"]), now=0.0)) == []
    assert dispatches(policy.decide(state(reqs, ready=["m"]), now=0.0)) == [Dispatch("m", (0, 1, 2))]


def test_batched_splits_a_long_queue_into_full_batches_one_per_free_worker():
    policy = BatchedPolicy(max_batch=2, max_wait=1.0)
    reqs = [queued("m", 0.0, seq=i) for i in range(7)]
    got = dispatches(policy.decide(state(reqs, ready=["m"], free_slots=2), now=0.0))
    assert got == [Dispatch("m", (0, 1)), Dispatch("m", (2, 3))]
    # With every worker busy nothing is dispatched; requests keep gathering.
    assert dispatches(policy.decide(state(reqs, ready=["m"], free_slots=0), now=5.0)) == []


def test_batched_never_mixes_batch_keys_and_times_each_group_from_its_own_oldest():
    policy = BatchedPolicy(max_batch=8, max_wait=0.1)
    reqs = [
        queued("m", 0.00, seq=1, key=(2,)),
        queued("m", 0.05, seq=2, key=(3,)),
        queued("m", 0.06, seq=3, key=(2,)),
    ]
    s = state(reqs, ready=["m"], free_slots=4)
    at_first = policy.decide(s, now=0.1)
    assert dispatches(at_first) == [Dispatch("m", (1, 3))]
    assert wakes(at_first) == [pytest.approx(0.15)]
    later = wakes(at_first)[0]  # the time the engine wakes it again
    assert dispatches(policy.decide(s, now=later)) == [Dispatch("m", (1, 3)), Dispatch("m", (2,))]


def test_batched_flushes_everything_when_draining():
    policy = BatchedPolicy(max_batch=8, max_wait=60.0)
    s = state([queued("m", 0.0, seq=1)], ready=["m"], draining=True)
    assert dispatches(policy.decide(s, now=0.0)) == [Dispatch("m", (1,))]


def test_batched_loads_a_missing_model_instead_of_dispatching():
    policy = BatchedPolicy(max_batch=1)
    decisions = policy.decide(state([queued("m", 0.0, seq=1)]), now=0.0)
    assert decisions == [Load("m")]
    # While it loads, nothing more is decided for it.
    assert policy.decide(state([queued("m", 0.0, seq=1)], loading=["m"]), now=0.1) == []


@pytest.mark.parametrize(("option", "value"), [("max_batch", 0), ("max_wait", -1), ("max_resident", 0)])
def test_batched_rejects_bad_options(option, value):
    with pytest.raises(ValueError, match=option if option != "max_wait" else "negative"):
        BatchedPolicy(**{option: value})


# -- lru: K, the byte budget, never a busy model -------------------------------------------


def test_lru_runs_each_request_alone():
    policy = LRUPolicy()
    reqs = [queued("m", 0.0, seq=i) for i in range(3)]
    got = dispatches(policy.decide(state(reqs, ready=["m"], free_slots=2), now=0.0))
    assert got == [Dispatch("m", (0,)), Dispatch("m", (1,))]


def test_lru_evicts_the_least_recently_used_idle_model_to_respect_max_resident():
    policy = LRUPolicy(max_resident=2)
    s = state([queued("c", 1.0, seq=1)], ready={"a": 5.0, "b": 3.0})
    assert policy.decide(s, now=6.0) == [Evict("b"), Load("c")]


def test_lru_never_evicts_a_running_or_loading_model():
    policy = LRUPolicy(max_resident=2)
    s = state([queued("c", 1.0, seq=1)], ready={"a": 5.0, "b": 3.0}, running={"b": 1})
    assert policy.decide(s, now=6.0) == [Evict("a"), Load("c")]
    s = state([queued("c", 1.0, seq=1)], ready={"b": 3.0}, loading=["a"], running={"b": 1})
    assert policy.decide(s, now=6.0) == []  # wait: nothing can go


def test_lru_does_not_evict_a_model_it_just_dispatched_to():
    policy = LRUPolicy(max_resident=1)
    reqs = [queued("a", 0.0, seq=1), queued("b", 0.5, seq=2)]
    decisions = policy.decide(state(reqs, ready={"a": 0.0}, free_slots=1), now=1.0)
    assert decisions == [Dispatch("a", (1,))]


def test_lru_lets_an_older_waiter_take_the_place_of_a_younger_one():
    policy = LRUPolicy(max_resident=1)
    # b waits since t=0, a (resident, idle, no free worker to run it) only since t=2.
    reqs = [queued("b", 0.0, seq=1), queued("a", 2.0, seq=2)]
    assert policy.decide(state(reqs, ready={"a": 1.0}, free_slots=0), now=3.0) == [Evict("a"), Load("b")]


def test_lru_respects_the_byte_budget():
    policy = LRUPolicy(max_resident=10, memory_budget=250)
    s = state([queued("c", 0.0, seq=1)], ready={"a": 1.0, "b": 2.0}, sizes={"a": 100, "b": 100, "c": 100})
    assert policy.decide(s, now=3.0) == [Evict("a"), Load("c")]
    s = state([queued("c", 0.0, seq=1)], ready={"a": 1.0}, sizes={"a": 100, "c": 100})
    assert policy.decide(s, now=3.0) == [Load("c")]


def test_lru_fails_requests_for_a_model_larger_than_the_budget():
    policy = LRUPolicy(memory_budget="1KB")
    decisions = policy.decide(state([queued("big", 0.0, seq=7)], sizes={"big": 5000}), now=0.0)
    assert len(decisions) == 1
    assert isinstance(decisions[0], Fail)
    assert decisions[0].requests == (7,)
    assert "memory budget" in decisions[0].reason


def test_lru_serves_models_in_order_of_their_oldest_request():
    policy = LRUPolicy(max_resident=3)
    reqs = [queued("late", 2.0, seq=1), queued("early", 1.0, seq=2)]
    decisions = policy.decide(state(reqs, ready=["late", "early"], free_slots=1), now=3.0)
    assert decisions == [Dispatch("early", (2,))]


# -- naive ----------------------------------------------------------------------------------


def test_naive_runs_oldest_requests_first_each_on_a_private_copy():
    policy = NaivePolicy()
    reqs = [queued("a", 2.0, seq=1), queued("b", 1.0, seq=2), queued("a", 3.0, seq=3)]
    decisions = policy.decide(state(reqs, free_slots=2), now=4.0)
    assert decisions == [Dispatch("b", (2,), ephemeral=True), Dispatch("a", (1,), ephemeral=True)]
    assert policy.decide(state(reqs, free_slots=0), now=4.0) == []
