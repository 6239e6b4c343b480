"""The ``bentoml`` policy (a port of BentoML's CorkDispatcher) on hand-built states: the batch-time fit,
warm-up, cancelling at max_latency, the wait rule, max_batch, one batch in flight, batch keys and
draining; then end to end in the engine on a fake clock."""

from __future__ import annotations

import asyncio
import dataclasses

import numpy as np
import pytest

from chronoserve import ForecastRequest
from chronoserve.errors import Rejected
from chronoserve.policies import AdaptiveDispatcherPolicy
from chronoserve.policies.adaptive import WARMUP, Optimizer, fit_line
from chronoserve.policy import Dispatch, Fail, RunningBatch, WakeAt
from chronoserve.server.errors import error_for
from chronoserve.testing import FakeClock, FakeLoader, FakeModel, fake_engine, queued, settle, state


def dispatches(decisions):
    return [d for d in decisions if isinstance(d, Dispatch)]


def fails(decisions):
    return [d for d in decisions if isinstance(d, Fail)]


def wakes(decisions):
    return [d.time for d in decisions if isinstance(d, WakeAt)]


def trained(policy, model="m", *, a=0.01, b=0.005, wait=0.0):
    """Skip the warm-up and set the fit (the rules after warm-up are what is tested)."""
    d = policy.dispatcher(model, 0.0)
    d.step = len(WARMUP)
    d.optimizer.o_a, d.optimizer.o_b, d.optimizer.wait = a, b, wait
    return d


def run_batch(policy, n, now, duration, model="m", key=()):
    """n requests arrive at ``now`` and are dispatched at once; the batch ends ``duration`` later."""
    requests = [queued(model, now, key=key) for _ in range(n)]
    decisions = policy.decide(state(requests, ready=[model]), now)
    assert dispatches(decisions) == [Dispatch(model, tuple(r.seq for r in requests))]
    policy.decide(state([], ready=[model]), now + duration)  # it left state.running: finished


# -- the fit ---------------------------------------------------------------------------------


@pytest.mark.parametrize("sizes", [[1, 2, 3, 5, 8], [4, 4, 4], [7], [1, 1, 30, 2]])
def test_the_fit_is_numpys_lstsq_rank_deficient_cases_included(sizes):
    rng = np.random.default_rng(len(sizes))
    samples = [(n, float(rng.uniform(0.001, 0.1))) for n in sizes]
    expected = np.linalg.lstsq([(n, 1) for n, _ in samples], [y for _, y in samples], rcond=None)[0]
    assert fit_line(samples) == pytest.approx(tuple(expected), rel=1e-9, abs=1e-12)


def test_priors_skip_and_refit_interval_are_bentomls():
    opt = Optimizer(max_latency=60.0, now=0.0)
    assert (opt.o_a, opt.o_b) == (2.0, 1.0)  # min(2, L*2/30), min(1, L/30)
    assert (Optimizer(0.3, 0.0).o_a, Optimizer(0.3, 0.0).o_b) == pytest.approx((0.02, 0.01))
    opt.log_outbound(1, 0.0, 99.0, now=0.0)  # the first two are skipped
    opt.log_outbound(1, 0.0, 99.0, now=0.0)
    assert not opt.o_stat and opt.refits == 0
    opt.log_outbound(1, 0.0, 0.02, now=0.0)  # the first kept sample refits at once (rank 1: y/2 each)
    assert (opt.o_a, opt.o_b, opt.refits) == (pytest.approx(0.01), pytest.approx(0.01), 1)
    opt.log_outbound(3, 0.3, 0.04, now=4.9)  # kept, but the token bucket allows one refit per 5 s
    assert opt.refits == 1 and len(opt.o_stat) == 2
    opt.log_outbound(3, 0.3, 0.04, now=5.0)
    assert opt.refits == 2
    assert (opt.o_a, opt.o_b) == pytest.approx((0.01, 0.01))  # 0.02 at n=1, 0.04 at n=3
    assert opt.wait == pytest.approx(0.2)  # mean of the logged waits (0, 0.3, 0.3)
    for _ in range(60):
        opt.log_outbound(2, 0.0, 1.0, now=100.0)
    assert len(opt.o_stat) == Optimizer.N_KEPT_SAMPLE == 50


def test_batch_durations_are_learned_from_the_state_and_a_and_b_recovered():
    policy = AdaptiveDispatcherPolicy(max_batch=16, max_latency=60.0)
    now = 0.0
    # Two cold batches first (skipped, as BentoML skips them), then duration = 0.01 n + 0.005.
    run_batch(policy, 1, now, 3.0)
    now += 10
    run_batch(policy, 1, now, 3.0)
    for n in [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 16, 3, 5]:
        now += 10  # past the 5 s refit interval each time
        run_batch(policy, n, now, 0.01 * n + 0.005)
    d = policy.dispatchers["m"]
    assert d.trained
    assert (d.optimizer.o_a, d.optimizer.o_b) == (pytest.approx(0.01), pytest.approx(0.005))


def test_a_batch_still_running_is_not_logged_and_its_duration_is_from_its_start():
    policy = AdaptiveDispatcherPolicy(max_latency=60.0)
    for _ in range(2):  # skipped samples
        run_batch(policy, 1, 0.0, 0.0)
    requests = [queued("m", 1.0) for _ in range(3)]
    assert dispatches(policy.decide(state(requests, ready=["m"]), 1.0))
    still = dataclasses.replace(state([], ready=["m"], running={"m": 1}), running=(RunningBatch("m", 3, 1.0),))
    policy.decide(still, 1.5)
    assert not policy.dispatchers["m"].optimizer.o_stat
    policy.decide(state([], ready=["m"]), 1.25 + 1.0)
    assert list(policy.dispatchers["m"].optimizer.o_stat) == [(3, pytest.approx(1.25), 0.0)]


# -- warm-up ---------------------------------------------------------------------------------


def test_warm_up_dispatches_at_once_then_waits_for_a_pair_and_a_triple():
    policy = AdaptiveDispatcherPolicy(max_batch=8, max_latency=3.0)  # priors a = 0.2, b = 0.1
    now = 0.0
    for _ in range(9):  # steps (2, 8, 1) and (6, 1, 1): a lone request goes at once
        run_batch(policy, 1, now, 0.01)
        now += 10
    d = policy.dispatchers["m"]
    assert d.step == 2 and d.step_wait == pytest.approx(min(0.95 * 3.0, 5 * d.optimizer.o_a + d.optimizer.o_b))
    a, b = d.optimizer.o_a, d.optimizer.o_b  # fitted on size-1 batches of 10 ms: 5 ms each (minimum norm)
    assert (a, b) == pytest.approx((0.005, 0.005))
    lone = [queued("m", now, seq=1)]
    early = policy.decide(state(lone, ready=["m"]), now)
    assert not dispatches(early)  # step (5, 1, 2): waits for a second request ...
    assert wakes(early) == [pytest.approx(now + d.step_wait - 2 * a - b)]
    assert dispatches(policy.decide(state(lone, ready=["m"]), now + d.step_wait - 2 * a - b + 1e-6))
    assert d.step == 3  # ... or until waiting more would cost too much


# -- cancelling (HTTP 503) --------------------------------------------------------------------


def test_the_oldest_is_failed_when_its_age_plus_a_n_plus_b_reaches_max_latency():
    policy = AdaptiveDispatcherPolicy(max_batch=8, max_latency=2.0)
    trained(policy, a=0.1, b=0.5)
    requests = [queued("m", 0.0, seq=i) for i in range(5)]
    # 0.999 + 5 * 0.1 + 0.5 < 2: all five go.
    assert policy.decide(state(requests, ready=["m"]), 0.999) == [Dispatch("m", (0, 1, 2, 3, 4))]
    decisions = policy.decide(state(requests, ready=["m"]), 1.0)  # 1.0 + 0.5 + 0.5 = 2.0: the oldest goes
    (fail,) = fails(decisions)
    assert fail.requests == (0,) and "overloaded" in fail.reason and "max_latency (2 s)" in fail.reason
    assert dispatches(decisions) == [Dispatch("m", (1, 2, 3, 4))]  # 1.0 + 0.4 + 0.5 < 2
    # The HTTP layer answers a Fail (Rejected) with 503, as BentoML's ServiceUnavailable.
    assert error_for(Rejected(fail.reason), []).status == 503


def test_while_a_batch_runs_it_wakes_when_the_next_cancel_falls_due():
    policy = AdaptiveDispatcherPolicy(max_batch=8, max_latency=2.0)
    trained(policy, a=0.1, b=0.5)
    requests = [queued("m", 0.0, seq=i) for i in range(5)]
    busy = state(requests, ready=["m"], running={"m": 1})
    assert policy.decide(busy, 0.5) == [WakeAt(pytest.approx(1.0))]  # 0 + 2 - 5 * 0.1 - 0.5
    decisions = policy.decide(busy, 1.0)
    assert fails(decisions) == [Fail((0,), fails(decisions)[0].reason)]
    assert wakes(decisions) == [pytest.approx(1.1)]  # 4 left: 2 - 0.4 - 0.5
    assert not dispatches(decisions)


def test_a_lone_request_is_failed_at_max_latency_only_while_a_batch_runs():
    policy = AdaptiveDispatcherPolicy(max_batch=8, max_latency=2.0)
    trained(policy, a=0.1, b=0.5)
    lone = [queued("m", 0.0, seq=7)]
    busy = state(lone, ready=["m"], running={"m": 1})
    assert policy.decide(busy, 1.9) == [WakeAt(pytest.approx(2.0))]
    assert [f.requests for f in fails(policy.decide(busy, 2.0))] == [(7,)]
    # With the dispatcher free it is dispatched, however old (BentoML cancels only when n > 1).
    assert policy.decide(state(lone, ready=["m"]), 5.0) == [Dispatch("m", (7,))]


# -- waiting ---------------------------------------------------------------------------------


def test_it_waits_while_the_wait_rule_predicts_a_gain_then_dispatches():
    policy = AdaptiveDispatcherPolicy(max_batch=8, max_latency=10.0)
    trained(policy, a=0.001, b=0.001, wait=0.1)
    requests = [queued("m", 0.0, seq=1), queued("m", 0.0, seq=2)]
    # 2 * (0 + 0.001 + 0.001) <= 0.95 * 0.1: wait; the rule turns when wn = 0.095 / 2 - 0.002.
    decisions = policy.decide(state(requests, ready=["m"]), 0.0)
    assert decisions == [WakeAt(pytest.approx(0.0455))]
    assert not dispatches(policy.decide(state(requests, ready=["m"]), 0.0455 - 1e-6))
    assert policy.decide(state(requests, ready=["m"]), 0.0455 + 1e-6) == [Dispatch("m", (1, 2))]
    # Without a history of waiting (wait = 0) it never waits.
    trained(policy, a=0.001, b=0.001, wait=0.0)
    assert policy.decide(state(requests, ready=["m"]), 0.0) == [Dispatch("m", (1, 2))]


def test_a_full_batch_goes_at_once_and_max_batch_is_respected():
    policy = AdaptiveDispatcherPolicy(max_batch=4, max_latency=10.0)
    trained(policy, a=0.001, b=0.001, wait=5.0)  # it would wait for a fuller batch
    requests = [queued("m", 0.0, seq=i) for i in range(10)]
    assert dispatches(policy.decide(state(requests, ready=["m"], free_slots=4), 0.0)) == [Dispatch("m", (0, 1, 2, 3))]
    wide = AdaptiveDispatcherPolicy(max_batch=4, max_latency=10.0, max_in_flight=3)
    trained(wide, a=0.001, b=0.001, wait=0.0)
    got = dispatches(wide.decide(state(requests, ready=["m"], free_slots=4), 0.0))
    assert got == [Dispatch("m", (0, 1, 2, 3)), Dispatch("m", (4, 5, 6, 7)), Dispatch("m", (8, 9))]


def test_one_batch_in_flight_per_model_and_models_are_independent():
    policy = AdaptiveDispatcherPolicy(max_batch=8, max_latency=10.0)
    trained(policy, "a")
    trained(policy, "b")
    requests = [queued("a", 0.0, seq=1), queued("b", 0.0, seq=2)]
    decisions = policy.decide(state(requests, ready=["a", "b"], running={"a": 1}, free_slots=3), 0.0)
    assert dispatches(decisions) == [Dispatch("b", (2,))]  # a has a batch in flight: it waits
    assert dispatches(policy.decide(state(requests, ready=["a", "b"], free_slots=3), 0.0)) == [
        Dispatch("a", (1,)),
        Dispatch("b", (2,)),
    ]
    # No free engine slot locks it too.
    assert not dispatches(policy.decide(state(requests, ready=["a", "b"], free_slots=0), 0.0))


def test_batches_never_mix_keys():
    policy = AdaptiveDispatcherPolicy(max_batch=8, max_latency=10.0, max_in_flight=2)
    trained(policy)
    requests = [
        queued("m", 0.0, seq=1, key="x"),
        queued("m", 0.1, seq=2, key="y"),
        queued("m", 0.2, seq=3, key="x"),
        queued("m", 0.3, seq=4, key="x"),
    ]
    got = dispatches(policy.decide(state(requests, ready=["m"], free_slots=2), 1.0))
    assert got == [Dispatch("m", (1, 3, 4)), Dispatch("m", (2,))]


def test_draining_dispatches_what_is_queued_without_waiting():
    policy = AdaptiveDispatcherPolicy(max_batch=8, max_latency=10.0)
    trained(policy, a=0.001, b=0.001, wait=5.0)
    requests = [queued("m", 0.0, seq=i) for i in range(5)]
    assert not dispatches(policy.decide(state(requests, ready=["m"]), 0.0))
    assert policy.decide(state(requests, ready=["m"], draining=True), 0.0) == [Dispatch("m", (0, 1, 2, 3, 4))]


def test_a_model_not_resident_is_loaded_and_options_parse_from_strings():
    policy = AdaptiveDispatcherPolicy(max_batch="8", max_latency="500ms", max_in_flight="2", memory_budget="1GB")
    assert (policy.max_batch, policy.max_latency, policy.max_in_flight) == (8, 0.5, 2)
    assert policy.describe()["name"] == "bentoml"
    decisions = policy.decide(state([queued("cold", 0.0, seq=1)]), 0.0)
    assert [type(d).__name__ for d in decisions] == ["Load"]
    with pytest.raises(ValueError, match="max_batch"):
        AdaptiveDispatcherPolicy(max_batch=0)


# -- in the engine ---------------------------------------------------------------------------


async def test_in_the_engine_it_learns_the_batch_time_and_sheds_an_overload_with_503():
    clock = FakeClock(autojump=True)

    class Timed(FakeModel):
        def predict(self, batch):
            clock.advance(0.01 * len(batch) + 0.005)  # a batch of n takes 10 ms each + 5 ms
            return super().predict(batch)

    class Loader(FakeLoader):
        def load(self, spec):
            model = Timed(spec)
            self.instances.append(model)
            return model

    def request():
        return ForecastRequest(model="fake", target=[1.0, 2.0], horizon=2)

    loader = Loader()
    policy = AdaptiveDispatcherPolicy(max_batch=8, max_latency=0.5)
    async with fake_engine(policy, clock=clock, loader=loader, workers=2) as engine:
        # Warm-up and fit: rounds of 1..8 requests at a time, each answered.
        for n in [1, 1, 1, 2, 3, 4, 5, 6, 7, 8, 2, 4, 8]:
            futures = [await engine.submit(request()) for _ in range(n)]
            results = await asyncio.gather(*futures)
            assert all(r.policy == "bentoml" for r in results)
            clock.advance(6.0)  # past the refit interval
            await settle()
        d = policy.dispatchers["fake"]
        assert d.trained
        assert (d.optimizer.o_a, d.optimizer.o_b) == (pytest.approx(0.01, rel=1e-6), pytest.approx(0.005, abs=1e-6))
        # An overload: 200 at once. With L = 0.5 s the queue is bounded near (0.5 - 0.005) / 0.01.
        futures = [await engine.submit(request()) for _ in range(200)]
        outcomes = await asyncio.gather(*futures, return_exceptions=True)
    failed = [i for i, outcome in enumerate(outcomes) if isinstance(outcome, Exception)]
    assert failed and len(failed) < 200
    for i in failed:
        assert isinstance(outcomes[i], Rejected) and "overloaded" in str(outcomes[i])
        assert error_for(outcomes[i], []).status == 503
    # The oldest waiting are cancelled (the first went alone at once), the newest served.
    assert failed[:100] == list(range(1, 101)) and not isinstance(outcomes[-1], Exception)
    assert all(o.median is not None for o in outcomes if not isinstance(o, Exception))
    assert max(loader.batch_sizes()) <= 8
