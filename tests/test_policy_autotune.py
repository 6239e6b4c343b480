"""``batched`` with ``max_batch``/``max_wait`` ``auto``: B, Δt and workers chosen from the arrival rate
and a known cost model, on hand-built states (pure, no clock), and end to end on the fake clock."""

from __future__ import annotations

import pytest

from chronoserve.policies import BatchedPolicy, DeadlinePolicy
from chronoserve.policies.autotune import BatchTuner, RateMeter
from chronoserve.policy import Dispatch, WakeAt
from chronoserve.testing import FakeCosts, queued, state

#: A batch of n requests of 1 GFLOP takes 20 ms + 1 ms per request: batching amortises the 20 ms.
COSTS = FakeCosts(base=0.020, per_gflop=0.001, load=0.1)


def auto(**options):
    return BatchedPolicy(max_batch="auto", max_wait="auto", slo_p95=0.2, **options)


def feed(policy, rate, seconds, *, free_slots=3, start=0.0):
    """Requests arriving at ``rate`` for ``seconds``, each shown to the policy alone (it keeps up)."""
    n = int(rate * seconds)
    decisions = []
    for k in range(n):
        t = start + k / rate
        decisions = policy.decide(
            state([queued("m", t, gflop=1.0)], ready=["m"], free_slots=free_slots, costs=COSTS), t
        )
    return decisions


def test_the_rate_meter_counts_each_arrival_once_over_its_window():
    meter = RateMeter(window=2.0)
    a, b, c = queued("m", 0.5), queued("m", 1.0), queued("m", 1.5)
    meter.observe(state([a, b], costs=COSTS))
    meter.observe(state([a, b, c], costs=COSTS))  # a and b again: not counted twice
    assert meter.rate("m", 1.6) == pytest.approx(3 / 2.0)
    assert meter.rate("m", 2.6) == pytest.approx(2 / 2.0)  # a left the window
    assert meter.rate("other", 1.0) == 0.0


def test_at_low_load_one_worker_and_no_batching_keep_the_slo():
    policy = auto()
    feed(policy, rate=10.0, seconds=3.0)
    tuned = policy.describe()["tuned"]["m"]
    # c(1) = 21 ms; rho = 10 x 0.021 = 0.21 on one worker; p95 = 21 ms x (1 + 0.21/0.79).
    assert (tuned["max_batch"], tuned["max_wait"], tuned["concurrency"]) == (1, 0.0, 1)
    assert tuned["rate"] == pytest.approx(10.0, abs=0.5)  # 20 or 21 arrivals in the last 2 s (float edges)
    rho = tuned["rate"] * 0.021
    assert tuned["predicted_p95"] == pytest.approx(0.021 * (1 + rho / (1 - rho)), rel=1e-3)


def test_more_load_batches_more_and_waits_as_long_as_the_batch_takes_to_arrive():
    policy = auto()
    feed(policy, rate=100.0, seconds=3.0)
    tuned = policy.describe()["tuned"]["m"]
    # n = 1..3 cannot keep up on one worker at rho <= 0.7; n = 4: rho = 100 x 0.024 / 4 = 0.6.
    assert (tuned["max_batch"], tuned["concurrency"]) == (4, 1)
    assert tuned["max_wait"] == pytest.approx(3 / 100.0)


def test_a_rate_one_worker_cannot_serve_uses_more_workers():
    policy = auto()
    feed(policy, rate=1000.0, seconds=2.5)
    tuned = policy.describe()["tuned"]["m"]
    # One worker: 20/n + 1 > 0.7 for every n. Two: n = 64 keeps up but its p95 (0.31 s) breaks the SLO.
    # Three: n = 24, rho = 1000 x 0.044 / 72 = 0.61, p95 = 23 ms + 44 ms x 2.57 = 0.136 s.
    assert (tuned["max_batch"], tuned["concurrency"]) == (24, 3)


def test_the_choice_follows_the_load_down_again():
    policy = auto()
    feed(policy, rate=100.0, seconds=3.0)
    assert policy.describe()["tuned"]["m"]["max_batch"] == 4
    feed(policy, rate=5.0, seconds=3.0, start=10.0)
    assert policy.describe()["tuned"]["m"]["max_batch"] == 1


def test_the_tuned_worker_count_caps_the_batches_in_flight():
    policy = auto()
    feed(policy, rate=10.0, seconds=3.0)  # tuned: one worker
    requests = [queued("m", 3.0, seq=1, gflop=1.0), queued("m", 3.0, seq=2, gflop=1.0)]
    busy = state(requests, ready=["m"], running={"m": 1}, free_slots=2, costs=COSTS)
    assert [d for d in policy.decide(busy, 3.0) if isinstance(d, Dispatch)] == []  # its one worker is busy
    idle = state(requests, ready=["m"], free_slots=3, costs=COSTS)
    assert [d for d in policy.decide(idle, 3.0) if isinstance(d, Dispatch)] == [Dispatch("m", (1,))]


def test_a_backlog_drains_on_every_worker_with_the_largest_batches():
    policy = auto(batch_limit=128)
    feed(policy, rate=10.0, seconds=3.0)  # tuned for 10/s: one worker, B = 1
    burst = [queued("m", 3.0, seq=100 + i, gflop=1.0) for i in range(200)]
    decisions = policy.decide(state(burst, ready=["m"], free_slots=3, costs=COSTS), 3.0)
    dispatched = [d for d in decisions if isinstance(d, Dispatch)]
    # The SLO cannot hold while the backlog lasts: the most forecasts a second (batch_limit, 128),
    # though c(128) = 148 ms is over half the SLO; the rest at once (no waiting while draining).
    assert [len(d.requests) for d in dispatched] == [128, 72]
    assert policy.describe()["tuned"]["m"]["predicted_p95"] is None


def test_a_fixed_b_with_auto_wait_keeps_b():
    policy = BatchedPolicy(max_batch=8, max_wait="auto", slo_p95=0.2)
    feed(policy, rate=100.0, seconds=3.0)
    tuned = policy.describe()["tuned"]["m"]
    assert tuned["max_batch"] == 8
    assert tuned["max_wait"] == pytest.approx(7 / 100.0)  # the time 8 requests take to arrive
    assert policy.describe()["max_batch"] == 8 and policy.describe()["max_wait"] == "auto"


def test_a_batch_waits_for_the_tuned_wait_then_goes():
    policy = auto()
    feed(policy, rate=100.0, seconds=3.0)  # B = 4, wait 30 ms
    one = state([queued("m", 3.0, seq=1, gflop=1.0)], ready=["m"], free_slots=3, costs=COSTS)
    assert policy.decide(one, 3.0) == [WakeAt(pytest.approx(3.03))]
    assert policy.decide(one, 3.03) == [Dispatch("m", (1,))]


def test_without_a_cost_model_auto_falls_back_to_batched_defaults():
    policy = auto()
    decisions = policy.decide(state([queued("m", 0.0, seq=1)], ready=["m"], free_slots=2), 0.0)
    assert decisions == [WakeAt(pytest.approx(0.01))]
    assert policy.describe()["tuned"]["m"]["max_batch"] == 32


def test_options_are_checked():
    with pytest.raises(ValueError, match="slo_p95"):
        BatchedPolicy(max_batch="auto")
    with pytest.raises(ValueError, match="only used with"):
        BatchedPolicy(max_batch=8, slo_p95=0.2)
    with pytest.raises(ValueError, match="max_batch must be"):
        BatchedPolicy(max_batch="big")
    with pytest.raises(ValueError, match="slo_p95 must be"):
        BatchTuner(0.0)
    with pytest.raises(ValueError, match="not 'auto'"):
        DeadlinePolicy(max_batch="auto")
    assert BatchedPolicy(max_batch="auto", slo_p95="150ms").tuner.slo == pytest.approx(0.15)


async def test_in_the_engine_auto_batches_a_burst_and_answers_as_alone():
    """Through the engine on fake models: a burst is batched (the backlog rule), the answers are
    those of each request run alone, and the tuning is shown in the engine's stats."""
    import asyncio

    import numpy as np

    from chronoserve import ForecastRequest
    from chronoserve.costs import BatchFeatures, CostModel
    from chronoserve.testing import FakeLoader, fake_engine

    costs = CostModel()
    for gflop in np.linspace(0.0, 1.0, 50):  # a batch of "fake" takes 20 ms
        costs.observe_batch(BatchFeatures("fake", float(gflop), 1), 0.02)
    requests = [ForecastRequest(model="fake", target=np.arange(8.0) + i, horizon=2) for i in range(40)]
    options = {"max_batch": "auto", "max_wait": "auto", "slo_p95": 0.2}
    loader = FakeLoader()
    async with fake_engine("batched", loader=loader, costs=costs, workers=2, policy_options=options) as engine:
        await engine.forecast(requests[0])  # resident, and one arrival seen
        together = await asyncio.gather(*(engine.forecast(r) for r in requests))
        tuned = engine.stats().policy["tuned"]["fake"]
    async with fake_engine("batched", costs=costs, policy_options={"max_batch": 1}) as engine:
        alone = [await engine.forecast(r) for r in requests]
    assert max(loader.batch_sizes()) > 1  # the burst was batched
    assert sum(loader.batch_sizes()) == 41
    for a, b in zip(together, alone, strict=True):
        np.testing.assert_array_equal(a.median, b.median)
    assert tuned["max_batch"] >= 1 and tuned["concurrency"] in (1, 2, 3)


def test_a_choice_runs_no_more_batches_at_once_than_the_engine_has_workers():
    import dataclasses

    policy = auto()
    for k in range(2500):  # 1000/s: needs three batches at once to keep the SLO (see above)
        t = k / 1000.0
        snapshot = state([queued("m", t, gflop=1.0)], ready=["m"], free_slots=3, costs=COSTS)
        policy.decide(dataclasses.replace(snapshot, workers=2), t)
    tuned = policy.describe()["tuned"]["m"]
    # Two workers cannot: it drains instead (every slot, the largest batches, no p95 promised).
    assert tuned["predicted_p95"] is None and tuned["max_batch"] == 64 and tuned["concurrency"] == 3


def test_the_cpu_objective_takes_the_largest_batch_the_slo_allows():
    policy = auto(objective="cpu")
    feed(policy, rate=100.0, seconds=3.0)
    tuned = policy.describe()["tuned"]["m"]
    # c(n)/n = 20/n + 1 ms falls with n; n = 16 waits 150 ms for its batch and predicts a p95 of
    # 150 ms + 36 ms x (1 + 0.225/0.775) = 196 ms; n = 24 would wait 230 ms, over the 200 ms SLO.
    assert (tuned["max_batch"], tuned["concurrency"]) == (16, 1)
    assert tuned["max_wait"] == pytest.approx(0.15)
    assert tuned["predicted_p95"] == pytest.approx(0.15 + 0.036 * (1 + 0.225 / 0.775), rel=1e-3)
    with pytest.raises(ValueError, match="objective"):
        auto(objective="energy")
    with pytest.raises(ValueError, match="only used with"):
        BatchedPolicy(max_batch=8, objective="cpu")
