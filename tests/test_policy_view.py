"""What a policy sees of a request and a model: deadlines, priorities, load times, batch slots."""

from __future__ import annotations

import numpy as np
import pytest

from chronoserve import ForecastRequest
from chronoserve.errors import InvalidRequest
from chronoserve.policies.batched import BatchedPolicy
from chronoserve.policy import Dispatch, Policy
from chronoserve.testing import FakeClock, FakeLoader, fake_engine, queued, state


class Watching(BatchedPolicy):
    """``batched``, keeping every snapshot's queued requests and model states."""

    def __init__(self, **options):
        super().__init__(**options)
        self.requests = {}
        self.models = []

    def decide(self, state, now):
        for queue in state.queues.values():
            for r in queue:
                self.requests[r.seq] = r
        self.models.append(dict(state.models))
        return super().decide(state, now)


async def test_a_requests_budget_becomes_its_deadline_on_the_engines_clock():
    clock = FakeClock(start=100.0)
    policy = Watching(max_batch=4, max_wait=0)
    async with fake_engine(policy, clock=clock) as engine:
        await engine.forecast_many(
            [
                ForecastRequest(model="fake", target=np.ones(32), horizon=4, deadline=0.25, priority=1),
                ForecastRequest(model="fake", target=np.ones(32), horizon=4, deadline=3),
                ForecastRequest(model="fake", target=np.ones(32), horizon=4),
            ]
        )
    seen = sorted(policy.requests.values(), key=lambda r: r.seq)
    assert [(r.deadline, r.priority) for r in seen] == [(100.25, 1), (103.0, None), (None, None)]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("deadline", 0, "must be a number of seconds in"),
        ("deadline", -1.0, "must be a number of seconds in"),
        ("deadline", float("nan"), "must be a number of seconds in"),
        ("deadline", float("inf"), "must be a number of seconds in"),
        ("deadline", 1e9, "must be a number of seconds in"),
        ("deadline", "1", "must be a number of seconds"),
        ("deadline", True, "must be a number of seconds"),
        ("priority", 0, "at least 1"),
        ("priority", 101, "at most 100"),
        ("priority", 1.0, "must be an integer"),
    ],
)
async def test_a_bad_deadline_or_priority_is_refused_naming_its_field(field, value, message):
    async with fake_engine() as engine:
        with pytest.raises(InvalidRequest, match=message) as caught:
            await engine.forecast(ForecastRequest(model="fake", target=np.ones(8), horizon=2, **{field: value}))
        assert caught.value.field == field
        assert engine.stats().submitted == 0


class SlowLoader(FakeLoader):
    """Loads take ``seconds`` of the fake clock."""

    def __init__(self, clock, seconds, specs):
        super().__init__(specs=specs)
        self.clock, self.seconds = clock, seconds

    def load(self, spec):
        self.clock.advance(self.seconds)
        return super().load(spec)


async def test_a_models_measured_load_time_is_in_the_snapshot_and_kept_across_an_eviction():
    clock = FakeClock()
    policy = Watching(max_batch=1, max_wait=0, max_resident=1)
    loader = SlowLoader(clock, 0.75, FakeLoader.with_models("a", "b").specs)
    async with fake_engine(policy, clock=clock, loader=loader) as engine:
        for model in ("a", "b", "a"):  # one resident at a time: "a" is evicted for "b", then loaded again
            await engine.forecast(ForecastRequest(model=model, target=np.ones(8), horizon=2))
    ready = [s["a"].load_seconds for s in policy.models if "a" in s]
    assert ready and all(seconds == pytest.approx(0.75) for seconds in ready)
    assert loader.loads["a"] == 2


def test_a_model_loading_again_shows_its_last_load_time():
    from chronoserve.pool import ModelPool
    from chronoserve.testing import FakeModel, fake_spec

    pool, spec = ModelPool(), fake_spec("a")
    assert pool.begin_load(spec, 1.0).state().load_seconds is None  # first load: nothing measured
    pool.finish_load("a", FakeModel(spec), 1.5)
    assert pool.get("a").state().load_seconds == pytest.approx(0.5)
    pool.remove("a")
    again = pool.begin_load(spec, 9.0).state()
    assert again.status == "loading" and again.load_seconds == pytest.approx(0.5)


def test_hand_built_states_carry_deadlines_priorities_and_load_times():
    r = queued("m", 1.0, seq=7, deadline=1.5, priority=2)
    s = state([r], ready=["m"], free_slots=3, load_seconds={"m": 0.2})
    assert s.queues["m"][0].deadline == 1.5 and s.queues["m"][0].priority == 2
    assert s.models["m"].load_seconds == 0.2
    assert s.free_slots == 3 and s.free_workers == 3  # the old name still reads


def test_a_policy_can_order_by_deadline_from_a_hand_built_state():
    class EarliestFirst(Policy):
        name = "edf"

        def decide(self, state, now):
            queue = state.queues["m"]
            first = min(queue, key=lambda r: (r.deadline is None, r.deadline or 0.0, r.seq))
            return [Dispatch("m", (first.seq,))]

    requests = [queued("m", 0.0, seq=1, deadline=9.0), queued("m", 0.1, seq=2, deadline=2.0), queued("m", 0.2, seq=3)]
    assert EarliestFirst().decide(state(requests, ready=["m"]), 1.0) == [Dispatch("m", (2,))]


async def test_a_policy_may_ask_the_cost_of_a_model_no_request_named():
    seen = []

    class Asking(BatchedPolicy):
        def decide(self, state, now):
            seen.append(state.costs.batch_seconds("never-named", []))
            return super().decide(state, now)

    async with fake_engine(Asking(max_batch=1, max_wait=0)) as engine:
        await engine.forecast(ForecastRequest(model="fake", target=np.ones(8), horizon=2))
    assert seen and all(seconds >= 0.0 for seconds in seen)
