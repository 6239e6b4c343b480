"""bench/costs.py: the collection on fake models, and the evaluation on batches with a known cost."""

from __future__ import annotations

import json
from types import ModuleType

import benches
import numpy as np
import pytest


def load_bench() -> ModuleType:
    return benches.load_bench("costs")


def synthetic_rows(seed: int = 0) -> list[dict]:
    """Batches whose latency is known: per model ``1 ms + k x GFLOP``, 1.8x slower beside a neighbour,
    and from half-way through the drift phase 1.5x slower still (a busy process)."""
    rng = np.random.default_rng(seed)
    speed = {"a": 0.004, "b": 0.006, "c": 0.005, "u": 0.0055}
    plan = [
        ("train", "abc", 300),
        ("loads", "abc", 100),
        ("unseen", "u", 100),
        ("mix", "abcu", 100),
        ("drift", "abc", 200),
    ]
    rows = []
    clock = 0.0
    for phase, models, n in plan:
        for i in range(n):
            model = str(rng.choice(list(models)))
            gflop = float(rng.uniform(1, 60))
            colocated = float(rng.choice([0.0, 1.0])) if phase != "loads" else 1.0
            hog = phase == "drift" and i >= n // 2
            seconds = (0.001 + speed[model] * gflop) * (1 + 0.8 * colocated) * (1.5 if hog else 1.0)
            seconds *= float(rng.normal(1.0, 0.02))
            clock += seconds  # one after the other: the co-located load is made up
            rows.append(
                {
                    "phase": phase,
                    "model": model,
                    "gflop": gflop,
                    "rows": 8,
                    "steps": 1,
                    "colocated": colocated,
                    "expected_colocated": colocated,
                    "seconds": seconds,
                    "time_s": clock,
                    "hog": int(hog),
                }  # fmt: skip
            )
    return rows


def test_the_evaluation_ranks_learners_on_a_known_cost(tmp_path):
    bench = load_bench()
    rows = synthetic_rows()
    results = bench.evaluate(rows)
    tables = results["tables"]
    # Co-location explains the 1.8x: the aware learners are far closer than the static ones.
    for test in ("loads", "mix"):
        assert tables["RLS, co-located"][test]["median_rel"] < 0.05
        assert tables["RLS, static"][test]["median_rel"] > 2 * tables["RLS, co-located"][test]["median_rel"]
    # After the change, the frozen offline fit stays wrong; RLS recovers.
    p, a = results["predictions"][("RLS, co-located", "drift")]
    assert bench.recovery(p, a, 100) is not None and bench.recovery(p, a, 100) <= 50
    p, a = results["predictions"][("offline, co-located", "drift")]
    assert bench.recovery(p, a, 100) is None
    summary = bench.report(tmp_path, rows)
    assert json.loads((tmp_path / "summary.json").read_text())["phases"]["train"] == 300
    assert summary["recovery_batches"]["RLS, co-located"] <= 50
    for name in ("prediction_error_cdf.png", "recovery.png", "predicted_vs_measured.png"):
        assert (tmp_path / name).stat().st_size > 10_000, name


async def test_the_collection_records_every_batch_with_its_features(tmp_path):
    from chronoserve import Engine
    from chronoserve.executor import InlineExecutor, ThreadExecutor
    from chronoserve.testing import FakeLoader, fake_spec

    bench = load_bench()
    specs = {n: fake_spec(n, family="chronos-bolt", supports_covariates=False, max_horizon=64) for n in "abu"}
    loader = FakeLoader(specs=specs, predict_seconds=0.001)

    def engine(observers):
        return Engine(
            "batched", policy_options={"max_batch": 64, "max_wait": 0.001}, loader=loader, workers=2, prefetch=1,
            executor=ThreadExecutor(2, None, "test"), load_executor=InlineExecutor(),
            resolve_executor=InlineExecutor(), observers=observers,
        )  # fmt: skip

    hogs = []

    class Hog:
        def kill(self):
            hogs.append("killed")

        def wait(self):
            pass

    plan = [
        bench.Phase("train", ("a", "b"), (1, 2), 12, switch=4),
        bench.Phase("unseen", ("u",), (2,), 6),
        bench.Phase("drift", ("a",), (2,), 10, hog_after=5),
    ]
    rows = await bench.collect(tmp_path, quick=True, engine_factory=engine, plan=plan, hog=lambda: Hog())
    phases = [r["phase"] for r in rows]
    assert phases.count("train") >= 12 and phases.count("unseen") >= 6 and phases.count("drift") >= 10
    assert {r["model"] for r in rows if r["phase"] == "unseen"} == {"u"}
    assert all(r["gflop"] > 0 and r["rows"] >= 1 and r["seconds"] > 0 for r in rows)
    drift = [r for r in rows if r["phase"] == "drift"]
    assert drift[0]["hog"] == 0 and drift[-1]["hog"] == 1 and hogs == ["killed"] * bench.HOGS
    written = bench.read_rows(tmp_path / "batches.csv")
    assert len(written) == len(rows) and set(bench.FIELDS) == set(written[0])


def test_the_hot_path_costs_are_measured():
    timings = load_bench().hot_path(repeat=50)
    assert len(timings) == 3 and all(t > 0 for t in timings.values())


def test_slowdowns_are_read_from_the_runs_that_overlapped():
    bench = load_bench()

    def row(model, end, seconds):
        return {"model": model, "gflop": 1.0, "rows": 1, "steps": 1, "time_s": end, "seconds": seconds, "hog": 0}

    rows = [row("a", 1.0, 0.1), row("a", 2.0, 0.1), row("a", 3.0, 0.1)]  # alone: 100 ms
    rows += [row("b", 4.2, 0.3), row("a", 4.15, 0.15)]  # a beside b (4.0-4.15 inside 3.9-4.2): 1.5x
    rows += [row("b", 5.2, 0.3), row("a", 5.15, 0.15), row("b", 6.2, 0.3), row("a", 6.15, 0.15)]
    rows += [row("b", 7.2, 0.3), row("a", 7.15, 0.15)]
    found = bench.neighbour_slowdowns(rows)
    assert found["slowdown"]["a beside b"] == (pytest.approx(1.5), 4)
    assert found["spread_p90_alone"] == pytest.approx(0.0)
