"""The ``deadline`` policy on hand-built states: EDF, priority classes, batch sizing against a known
cost model, shedding at admission, waiting only while deadlines allow, and batched without deadlines."""

from __future__ import annotations

import numpy as np
import pytest

from chronoserve import ForecastRequest
from chronoserve.errors import DeadlineUnmeetable
from chronoserve.policies import BatchedPolicy, DeadlinePolicy
from chronoserve.policy import Dispatch, Load, Shed, WakeAt
from chronoserve.testing import FakeCosts, FakeLoader, fake_engine, queued, state

#: 2 ms a batch plus 1 ms per GFLOP; a load takes 100 ms.
COSTS = FakeCosts(base=0.002, per_gflop=0.001, load=0.1)


def policy(**options):
    return DeadlinePolicy(max_batch=8, max_wait=0.01, **options)


def test_the_earliest_deadline_goes_first_across_models():
    requests = [queued("a", 0.0, seq=1, deadline=1.0), queued("b", 0.5, seq=2, deadline=0.8)]
    decisions = policy().decide(state(requests, ready=["a", "b"], free_slots=1, costs=COSTS), 0.6)
    assert decisions == [Dispatch("b", (2,))]  # b arrived later but is due sooner


def test_a_higher_priority_class_goes_before_an_earlier_deadline():
    requests = [
        queued("a", 0.0, seq=1, deadline=0.7, priority=2),
        queued("b", 0.0, seq=2, deadline=0.9, priority=1),
        queued("c", 0.0, seq=3, deadline=0.65),  # no class: after every numbered one
    ]
    decisions = policy().decide(state(requests, ready=["a", "b", "c"], free_slots=2, costs=COSTS), 0.6)
    assert decisions == [Dispatch("b", (2,)), Dispatch("a", (1,))]


def test_within_a_queue_the_batch_takes_the_most_urgent_requests():
    requests = [queued("m", 0.0, seq=i, deadline=2.0 - i * 0.1) for i in range(10)]
    (dispatch,) = policy().decide(state(requests, ready=["m"], costs=COSTS), 0.5)
    assert dispatch == Dispatch("m", (9, 8, 7, 6, 5, 4, 3, 2))  # the 8 due soonest, soonest first


def test_the_batch_is_the_largest_that_still_meets_its_earliest_deadline():
    # 10 GFLOP each: a batch of n takes 2 + 10 n ms; the earliest deadline is 45 ms away: n = 4.
    requests = [queued("m", 0.0, seq=i, gflop=10.0, deadline=1.045 + i) for i in range(8)]
    decisions = policy().decide(state(requests, ready=["m"], free_slots=2, costs=COSTS), 1.0)
    assert decisions[0] == Dispatch("m", (0, 1, 2, 3))
    assert decisions[1] == Dispatch("m", (4, 5, 6, 7))  # the rest, with its own (far) deadlines, fits 8


def test_a_request_that_cannot_make_its_deadline_is_shed_at_once_with_the_predicted_time():
    requests = [queued("m", 1.0, seq=1, gflop=10.0, deadline=1.005), queued("m", 1.0, seq=2, deadline=2.0)]
    decisions = policy().decide(state(requests, ready=["m"], costs=COSTS), 1.0)
    assert decisions[0] == Shed((1,), predicted=pytest.approx(1.012))  # 12 ms alone > 5 ms
    assert 1 not in [seq for d in decisions if isinstance(d, Dispatch) for seq in d.requests]


def test_a_model_that_must_load_first_counts_the_load():
    requests = [queued("cold", 1.0, seq=1, deadline=1.05), queued("cold", 1.0, seq=2, deadline=1.5)]
    decisions = policy().decide(state(requests, costs=COSTS), 1.0)
    assert Shed((1,), predicted=pytest.approx(1.102)) in decisions  # load 100 ms + 2 ms
    assert Load("cold") in decisions  # for the one that can still make it


def test_it_waits_for_a_fuller_batch_only_while_every_deadline_holds():
    requests = [queued("m", 1.0, seq=1, gflop=10.0, deadline=1.03), queued("m", 1.0, seq=2, gflop=10.0, deadline=2.0)]
    decisions = policy(margin=0.002).decide(state(requests, ready=["m"], costs=COSTS), 1.0)
    # The pair takes 22 ms; it must start by 1.03 - 0.022 - 0.002 = 1.006, before Δt (1.01) runs out.
    assert decisions == [WakeAt(pytest.approx(1.006))]
    assert policy(margin=0.002).decide(state(requests, ready=["m"], costs=COSTS), 1.006) == [Dispatch("m", (1, 2))]


def test_without_deadlines_it_decides_as_batched():
    requests = [queued("a", 0.0, seq=i) for i in range(3)] + [queued("b", 0.001 * i, seq=10 + i) for i in range(9)]
    for now in (0.0, 0.005, 0.02):
        hand = state(requests, ready=["a", "b"], free_slots=2, costs=COSTS)
        assert policy().decide(hand, now) == BatchedPolicy(max_batch=8, max_wait=0.01).decide(hand, now)


def test_without_a_cost_model_it_sheds_nothing():
    requests = [queued("m", 1.0, seq=1, gflop=1e6, deadline=1.001)]
    assert policy().decide(state(requests, ready=["m"]), 1.0) == [WakeAt(pytest.approx(1.01))]


async def test_in_the_engine_a_hopeless_request_is_refused_at_admission_and_a_feasible_one_served():
    from chronoserve.costs import BatchFeatures, CostModel
    from chronoserve.events import EngineObserver

    costs = CostModel()
    for gflop in np.linspace(0.0, 1.0, 50):  # every single-series batch of "fake" takes 50 ms
        costs.observe_batch(BatchFeatures("fake", float(gflop), 1), 0.05)
    outcomes = []

    class Outcomes(EngineObserver):
        def deadline_outcome(self, model, priority, outcome):
            outcomes.append(outcome)

    loader = FakeLoader()
    options = {"max_wait": 0.01}
    async with fake_engine("deadline", loader=loader, costs=costs, policy_options=options, observers=[Outcomes()]) as e:
        await e.forecast(ForecastRequest(model="fake", target=np.ones(8), horizon=2))  # resident now
        with pytest.raises(DeadlineUnmeetable) as caught:
            await e.forecast(ForecastRequest(model="fake", target=np.ones(8), horizon=2, deadline=0.02))
        result = await e.forecast(ForecastRequest(model="fake", target=np.ones(8), horizon=2, deadline=1.0))
    # Predicted: about 50 ms (the load's first batch, 0 s on the fake clock, taught it a little less).
    assert 0.02 < caught.value.predicted <= 0.05 and caught.value.budget == pytest.approx(0.02)
    assert result.batch_size == 1 and outcomes == ["deadline_unmeetable", "met"]
    assert loader.batch_sizes() == [1, 1]  # the refused one never ran


async def test_requests_behind_shed_ones_are_still_served():
    """Four hopeless requests ahead of one without a deadline, in the same queue, on a model not
    loaded yet: the four are refused, the fifth is loaded for and served (no new arrival needed)."""
    import asyncio

    from chronoserve.costs import BatchFeatures, CostModel

    costs = CostModel()
    for gflop in np.linspace(0.0, 1.0, 50):
        costs.observe_batch(BatchFeatures("fake", float(gflop), 1), 0.05)
    options = {"max_batch": 1, "max_wait": 0.0}
    async with fake_engine("deadline", costs=costs, policy_options=options) as engine:
        doomed = [ForecastRequest(model="fake", target=np.ones(8), horizon=2, deadline=0.001) for _ in range(4)]
        answers = await asyncio.wait_for(
            engine.forecast_many(
                [*doomed, ForecastRequest(model="fake", target=np.ones(8), horizon=2)], return_exceptions=True
            ),
            timeout=10,
        )
    assert [type(a).__name__ for a in answers] == ["DeadlineUnmeetable"] * 4 + ["ForecastResult"]


def _with(snapshot, **fields):
    import dataclasses

    return dataclasses.replace(snapshot, **fields)


def test_with_deadlines_a_batch_waits_for_a_free_worker_and_is_shed_once_hopeless():
    from chronoserve.policy import RunningBatch

    # One worker, busy until 1.1 s (predicted); the engine has a free prefetch slot.
    busy = (RunningBatch("m", 4, 1.0, predicted=0.1, running_since=1.0),)
    request = queued("m", 1.0, seq=1, deadline=1.05)  # 2 ms alone: met if a worker frees in time

    def snapshot():
        return _with(state([request], ready=["m"], free_slots=1, costs=COSTS), workers=1, running=busy)

    # Not bound to the prefetch slot: woken when it becomes hopeless (1.05 - 2 ms).
    assert policy().decide(snapshot(), 1.01) == [WakeAt(pytest.approx(1.048))]
    assert policy().decide(snapshot(), 1.049) == [Shed((1,), predicted=pytest.approx(1.051))]
    # Freed in time (the running batch ended early): it runs.
    free = state([request], ready=["m"], free_slots=2, costs=COSTS)
    assert policy().decide(_with(free, workers=1), 1.02) == [Dispatch("m", (1,))]


def test_without_deadlines_a_batch_fills_the_prefetch_slot_as_under_batched():
    from chronoserve.policy import RunningBatch

    busy = (RunningBatch("m", 4, 1.0, predicted=0.1, running_since=1.0),)
    loose = queued("m", 1.0, seq=1)
    snapshot = _with(state([loose], ready=["m"], free_slots=1, costs=COSTS), workers=1, running=busy)
    assert policy().decide(snapshot, 1.01) == [Dispatch("m", (1,))]


def test_after_a_tight_budget_is_seen_looser_batches_stay_short_enough_not_to_block_it():
    # A tight request (20 ms budget) seen at 1.01; loose ones (39 s budgets, 10 ms each) after it.
    tight = queued("m", 1.0, seq=0, gflop=1.0, deadline=1.02)
    p = policy(block=0.5)
    assert p.decide(state([tight], ready=["m"], costs=COSTS), 1.01) == [Dispatch("m", (0,))]
    loose = [queued("m", 1.1, seq=i, gflop=10.0, deadline=40.0) for i in range(1, 9)]
    (first, *_) = p.decide(state(loose, ready=["m"], free_slots=1, costs=COSTS), 1.1)
    # A batch may take at most 0.5 x 20 ms = 10 ms: 2 ms + 10 ms x n <= 10 ms -> n = 1 (the least).
    assert first == Dispatch("m", (1,))
    # Without the tight one in memory (a fresh policy), the loose batch takes all eight.
    assert policy().decide(state(loose, ready=["m"], free_slots=1, costs=COSTS), 1.1)[0] == Dispatch(
        "m", tuple(range(1, 9))
    )
    # Once the memory has passed, batches grow again.
    assert p.decide(state(loose, ready=["m"], free_slots=1, costs=COSTS), 20.0)[0] == Dispatch("m", tuple(range(1, 9)))


def test_a_long_loose_request_leaves_one_of_two_workers_free_for_tight_work():
    from chronoserve.policy import RunningBatch

    p = policy(block=0.5)
    tight = queued("m", 1.0, seq=0, gflop=1.0, deadline=1.02)  # a 20 ms budget, seen first
    p.decide(state([tight], ready=["m"], free_slots=2, costs=COSTS), 1.01)
    long = queued("m", 1.1, seq=1, gflop=50.0, deadline=40.0)  # 52 ms alone: longer than 10 ms
    both_free = _with(state([long], ready=["m"], free_slots=3, costs=COSTS), workers=2)
    assert p.decide(both_free, 1.2) == [Dispatch("m", (1,))]  # the other worker stays free
    one_busy = (RunningBatch("m", 1, 1.1, predicted=1.0, running_since=1.1),)
    last_free = _with(state([long], ready=["m"], free_slots=2, costs=COSTS), workers=2, running=one_busy)
    assert [d for d in p.decide(last_free, 1.2) if isinstance(d, Dispatch)] == []  # it waits
