"""The online cost model, pure: it recovers a known cost, adapts to a change, sees co-location."""

from __future__ import annotations

import numpy as np
import pytest

from chronoserve.costs import BatchFeatures, Colocation, CostModel, RecursiveLeastSquares


def synthetic(model_gflops: dict[str, float], n: int, seed: int, slow: float = 1.0, colocated: bool = True):
    """Batches with a known cost: 2 ms + 1 ms/GFLOP (+60 % per unit of co-located load) + 0.05 ms/row, 2 % noise."""
    rng = np.random.default_rng(seed)
    names = list(model_gflops)
    for _ in range(n):
        model = names[rng.integers(len(names))]
        rows = int(rng.integers(1, 65))
        gflop = model_gflops[model] * rows
        load = float(rng.uniform(0, 1.5)) if colocated else 0.0
        f = BatchFeatures(model, gflop, rows, load)
        seconds = slow * (0.002 + 0.001 * gflop * (1 + 0.6 * load) + 0.00005 * rows)
        yield f, seconds * float(rng.normal(1.0, 0.02))


def relative_errors(model: CostModel, batches) -> np.ndarray:
    return np.array([abs(model.predict_batch(f) - s) / s for f, s in batches])


def test_rls_recovers_a_linear_function_without_noise():
    rls = RecursiveLeastSquares(3, forgetting=1.0)
    rng = np.random.default_rng(0)
    theta = np.array([0.5, -2.0, 3.0])
    for _ in range(50):
        x = np.array([1.0, *rng.normal(size=2)])
        rls.update(x, float(theta @ x))
    # up to the pull of its prior (P0 = 1e3 I: a ridge of 1e-3, so about 1e-5 here)
    np.testing.assert_allclose(rls.theta, theta, rtol=1e-4, atol=1e-4)


def test_the_cost_model_recovers_a_known_cost():
    model = CostModel()
    gflops = {"small": 0.05, "large": 0.8}
    for f, s in synthetic(gflops, 300, seed=1):
        model.observe_batch(f, s)
    errors = relative_errors(model, list(synthetic(gflops, 200, seed=2)))
    assert np.median(errors) < 0.03 and np.percentile(errors, 90) < 0.08


def test_after_a_step_change_it_adapts_within_fifty_batches():
    model = CostModel(forgetting=0.95)
    gflops = {"m": 0.3}
    for f, s in synthetic(gflops, 200, seed=3):
        model.observe_batch(f, s)
    for f, s in synthetic(gflops, 50, seed=4, slow=2.0):  # the machine got twice as slow
        model.observe_batch(f, s)
    errors = relative_errors(model, list(synthetic(gflops, 100, seed=5, slow=2.0)))
    assert np.median(errors) < 0.05


def test_neighbours_make_a_batch_predicted_slower():
    model = CostModel()
    for f, s in synthetic({"m": 0.3}, 300, seed=6):
        model.observe_batch(f, s)
    alone = model.predict_batch(BatchFeatures("m", 9.6, 32, 0.0))
    beside_one = model.predict_batch(BatchFeatures("m", 9.6, 32, 1.0))
    assert beside_one > 1.4 * alone  # the truth: 1.6x on the GFLOP term


def test_a_model_never_seen_is_predicted_from_its_size():
    model = CostModel()
    for f, s in synthetic({"a": 0.05, "b": 0.2, "c": 0.8}, 400, seed=7):
        model.observe_batch(f, s)
    unseen = list(synthetic({"new": 0.4}, 100, seed=8))
    assert "new" not in model.models
    assert np.median(relative_errors(model, unseen)) < 0.05
    # and its own batches refine it from there
    for f, s in unseen[:30]:
        model.observe_batch(f, s)
    assert "new" in model.models and np.median(relative_errors(model, unseen[30:])) < 0.05


def test_colocation_averages_the_neighbours_load_over_a_batch_run():
    c = Colocation(alpha=0.5)
    # a runs 0..4 with a load of 0.5 (50 passes/s); b runs 1..3 with a load of 2.0.
    # b finishes first, beside a (still running) all its run: it met a's 0.5.
    assert c.finished("b", 1.0, 3.0, 2.0, running={"a": (0.0, 0.5)}) == pytest.approx(0.5)
    assert c.predict(0.5) == pytest.approx(0.5 * 0.5 + 0.5 * 0.25)  # starting beside a; the EWMA saw 0.5
    # a met b's 2.0 for 2 of its 4 seconds.
    assert c.finished("a", 0.0, 4.0, 0.5, running={}) == pytest.approx(2.0 * 2.0 / 4.0)
    assert c.predict(0.0) == pytest.approx(0.5 * (0.5 * 1.0 + 0.5 * 0.25))  # nothing runs: the EWMA only


def test_colocation_counts_neighbours_that_came_and_went_during_a_run():
    c = Colocation()
    # x runs 0..10 (load 1); y ran 2..4 (load 3) and z 5..6 (load 2), both finished before x;
    # w started at 9 (load 4) and runs on.
    assert c.finished("y", 2.0, 4.0, 3.0, running={"x": (0.0, 1.0)}) == pytest.approx(1.0)
    assert c.finished("z", 5.0, 6.0, 2.0, running={"x": (0.0, 1.0)}) == pytest.approx(1.0)
    assert c.finished("x", 0.0, 10.0, 1.0, running={"w": (9.0, 4.0)}) == pytest.approx((2 * 3 + 1 * 2 + 1 * 4) / 10)
    # What x put on w (1 s of load 1) waits on w's account; nothing else is kept.
    assert c._met == {"w": pytest.approx(1.0)}
    assert c.finished("w", 9.0, 12.0, 4.0, running={}) == pytest.approx(1.0 / 3.0)
    assert c._met == {}


def test_colocation_keeps_nothing_of_a_batch_that_never_finished():
    c = Colocation()
    c.finished("y", 0.0, 1.0, 1.0, running={"stopped": (0.0, 1.0)})
    c.finished("z", 1.0, 2.0, 1.0, running={})  # "stopped" failed: it is running no more
    assert c._met == {}


def test_a_batchs_load_on_its_neighbours_is_its_passes_per_second():
    assert BatchFeatures("t5", 9.0, 4, steps=16).passes_per_second(0.2) == pytest.approx(0.8)  # 80 passes/s
    assert BatchFeatures("bolt", 9.0, 4).passes_per_second(0.05) == pytest.approx(0.2)
    assert BatchFeatures("bolt", 9.0, 4).passes_per_second(0.0) == pytest.approx(10.0)  # bounded: 1 ms at least


def test_loads_are_learned_per_model_and_shared_for_new_ones():
    model = CostModel()
    for nbytes, seconds in [(3_000_000, 0.06), (35_000_000, 0.1), (480_000_000, 0.9)] * 20:
        model.observe_load(f"m{nbytes}", nbytes, seconds)
    assert model.predict_load("m35000000", 35_000_000) == pytest.approx(0.1, rel=0.05)
    assert 0.06 < model.predict_load("never", 200_000_000) < 0.9


def test_forgetting_outside_its_range_is_refused():
    with pytest.raises(ValueError, match="forgetting"):
        RecursiveLeastSquares(2, forgetting=0.0)


# -- fed by the engine ----------------------------------------------------------------------------


async def test_the_engine_feeds_the_cost_model_every_batch_with_its_features():
    from chronoserve import ForecastRequest
    from chronoserve.events import EngineObserver
    from chronoserve.testing import FakeLoader, fake_engine, fake_spec

    seen = []

    class Costs(EngineObserver):
        def batch_cost(self, cost):
            seen.append((cost.features, cost.predicted_seconds, cost.seconds))

    loader = FakeLoader(specs={"c2": fake_spec("c2", batch_patch=16)})
    async with fake_engine(loader=loader, observers=[Costs()], policy_options={"max_batch": 4}) as engine:
        requests = [
            ForecastRequest(model="c2", target=np.ones(64), horizon=8, past_covariates={"a": np.ones(64)})
            for _ in range(8)
        ]
        await engine.forecast_many(requests)
    assert [f.rows for f, _, _ in seen] == [8, 8]  # 4 requests x (target + 1 covariate)
    assert all(f.model == "c2" and f.gflop > 0 and f.colocated == 0.0 for f, _, _ in seen)
    assert engine.costs.models["c2"].count == 2
    assert ("c2", "disk") in engine.costs.loads  # the load was learned too, by the tier it came from


class _Costs:
    """An engine observer keeping every batch_cost event."""

    def __init__(self):
        self.seen = []

    def batch_cost(self, cost):
        self.seen.append((cost.features, cost.predicted_seconds, cost.seconds))


def _threaded_engine(loader, workers, observer):
    from chronoserve import Engine
    from chronoserve.executor import InlineExecutor, ThreadExecutor

    return Engine(
        "batched",
        policy_options={"max_batch": 2, "max_wait": 0},
        loader=loader,
        workers=workers,
        prefetch=1,
        executor=ThreadExecutor(workers, None, "test-infer"),
        load_executor=InlineExecutor(),
        resolve_executor=InlineExecutor(),
        observers=[observer],
    )


async def test_a_batch_waiting_in_the_prefetch_slot_is_not_a_neighbour():
    """One worker: batches never run side by side, though one waits in the prefetch slot while another runs."""
    from chronoserve import ForecastRequest
    from chronoserve.testing import FakeLoader

    costs = _Costs()
    async with _threaded_engine(FakeLoader(predict_seconds=0.002), 1, costs) as engine:
        await engine.forecast_many([ForecastRequest(model="fake", target=np.ones(16), horizon=4)] * 12)
    assert len(costs.seen) == 6
    assert all(f.colocated == 0.0 for f, _, _ in costs.seen)  # what each met
    assert engine.costs.models["fake"].count == 6


async def test_two_batches_running_together_each_count_the_other():
    """Two workers whose batches wait for each other (a barrier) inside the model: each met the other."""
    import threading

    from chronoserve import ForecastRequest
    from chronoserve.testing import FakeLoader, FakeModel

    barrier = threading.Barrier(2, timeout=30)

    class Together(FakeModel):
        def predict(self, batch):
            barrier.wait()  # both batches are running now
            return super().predict(batch)

    class Loader(FakeLoader):
        def load(self, spec):
            return Together(spec, predict_seconds=0.005)

    costs = _Costs()
    async with _threaded_engine(Loader(), 2, costs) as engine:
        await engine.forecast_many([ForecastRequest(model="fake", target=np.ones(16), horizon=4)] * 4)
    met = [f.colocated for f, _, _ in costs.seen]
    assert len(met) == 2 and all(m > 0.0 for m in met)


# -- what policies see ----------------------------------------------------------------------------


def test_a_policy_reads_cost_estimates_from_a_hand_built_snapshot():
    from chronoserve.policy import Dispatch, Policy
    from chronoserve.testing import FakeCosts, queued, state

    class UnderBudget(Policy):
        """Dispatches the longest prefix of the queue whose predicted batch fits 50 ms."""

        name = "under-budget"

        def decide(self, state, now):
            out = []
            for model, queue in state.queues.items():
                n = len(queue)
                while n > 1 and state.costs.batch_seconds(model, queue[:n]) > 0.05:
                    n -= 1
                out.append(Dispatch(model, tuple(r.seq for r in queue[:n])))
            return out

    requests = [queued("m", float(i), seq=i, gflop=10.0) for i in range(8)]
    decisions = UnderBudget().decide(state(requests, ready=["m"], costs=FakeCosts()), 10.0)
    assert decisions == [Dispatch("m", (0, 1, 2, 3))]  # 2 ms + 4 x 10 ms = 42 ms; 5 would be 52


async def test_the_engines_snapshot_carries_its_cost_model_and_each_requests_work():
    from chronoserve import ForecastRequest
    from chronoserve.policies.batched import BatchedPolicy
    from chronoserve.testing import FakeLoader, fake_engine, fake_spec

    snapshots = []

    class Watching(BatchedPolicy):
        def decide(self, state, now):
            snapshots.append((state.costs, [(r.gflop, r.rows) for q in state.queues.values() for r in q]))
            return super().decide(state, now)

    loader = FakeLoader(specs={"c2": fake_spec("c2", batch_patch=16)})
    async with fake_engine(Watching(max_batch=2), loader=loader) as engine:
        await engine.forecast_many(
            [ForecastRequest(model="c2", target=np.ones(64), horizon=8, past_covariates={"a": np.ones(64)})] * 2
        )
    costs, work = next((c, w) for c, w in snapshots if w)
    assert costs is not None and costs.batch_seconds("c2", []) >= 0.0
    assert all(gflop > 0 and rows == 2 for gflop, rows in work)


# -- the prediction log ---------------------------------------------------------------------------


async def test_serve_logs_each_batchs_predicted_and_actual_latency(tmp_path):
    import httpx
    from asgi_lifespan import LifespanManager

    from chronoserve.perf import read_rows
    from chronoserve.server import create_app
    from chronoserve.testing import FakeLoader, fake_spec, server_settings

    path = tmp_path / "predictions.csv"
    loader = FakeLoader(specs={"m": fake_spec("m", family="chronos-bolt", supports_covariates=False)})
    app = create_app(
        server_settings(default_model="m", policy_options={"max_wait": 0.0}, log_predictions=str(path)), loader=loader
    )
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            for n in (8, 16):
                r = await client.post("/forecast", json={"target": [1.0] * n, "horizon_hours": 2})
                assert r.status_code == 200
    rows = read_rows(path)
    assert len(rows) == len(loader.batch_sizes("m")) >= 2  # one row per batch (the warm-up's too)
    assert {row["model"] for row in rows} == {"m"}
    assert sum(int(row["rows"]) for row in rows) == 3  # the warm-up's series and the two requests'
    assert all(float(row["gflop"]) > 0 and float(row["predicted_s"]) >= 0 for row in rows)
    assert float(rows[-1]["predicted_s"]) > 0  # learned from the batches before it


@pytest.mark.torch
@pytest.mark.slow
def test_replay_logs_predictions_in_process(tmp_path, capsys):
    pytest.importorskip("torch")
    from chronoserve.cli import main
    from chronoserve.perf import read_rows
    from chronoserve.traces import generate, write_trace

    path = tmp_path / "t.jsonl"
    write_trace(generate(12, "poisson", rate=50, seed=3, models=["random/tiny-chronos-bolt"], horizons=(4,)), path)
    out = tmp_path / "run"
    code = main(["replay", str(path), "--out", str(out), "--log-predictions", "--no-plots", "--quiet"])
    assert code == 0, capsys.readouterr().err
    rows = read_rows(out / "predictions.csv")
    assert rows and all(row["model"] == "random/tiny-chronos-bolt" and float(row["latency_s"]) > 0 for row in rows)


def test_a_known_future_covariate_is_one_row_not_two():
    from chronoserve.models.base import PreparedRequest

    one = np.ones(4, dtype=np.float32)
    both = PreparedRequest(one, 2, (0.5,), past_covariates={"a": one, "b": one}, future_covariates={"a": one[:2]})
    assert both.rows == 3  # target, a (past and future), b
    assert PreparedRequest(one, 2, (0.5,)).rows == 1


def test_when_the_whole_machine_slows_down_every_model_follows_within_fifty_batches():
    """A step of 1.5x on every model at once: each model's own estimator sees a third of the batches."""
    model = CostModel()
    gflops = {"a": 0.1, "b": 0.3, "c": 0.6}
    for f, s in synthetic(gflops, 600, seed=11):
        model.observe_batch(f, s)
    assert model.machine == pytest.approx(1.0, abs=0.05)
    after = list(synthetic(gflops, 300, seed=12, slow=1.5))
    errors = []
    for f, s in after:
        errors.append(abs(model.predict_batch(f) - s) / s)
        model.observe_batch(f, s)
    assert np.median(errors[:5]) > 0.25  # the step, as it happens
    assert np.median(errors[40:50]) < 0.06  # followed within 50 batches
    assert np.median(errors[200:]) < 0.035  # and it stays there (the noise is 2 %)
    assert model.machine == pytest.approx(1.5, rel=0.1)  # the factor holds the step, the estimators the rest


def test_recursive_least_squares_does_not_wind_up_along_a_direction_never_excited():
    """With forgetting, P grows by 1/0.98 an update where the inputs never move (here a feature
    that stays 0): without a bound it overflowed after ~35,000 batches and predictions became NaN."""
    rls = RecursiveLeastSquares(3, forgetting=0.98)
    rng = np.random.default_rng(0)
    for _ in range(40_000):
        x = np.array([1.0, rng.uniform(1.0, 2.0), 0.0])
        rls.update(x, 2.0 * x[1] + 1.0)
    assert np.isfinite(rls.P).all() and np.trace(rls.P) <= 3 * rls.prior * (1 + 1e-9)
    assert rls.predict(np.array([1.0, 1.5, 0.0])) == pytest.approx(4.0, rel=1e-6)
