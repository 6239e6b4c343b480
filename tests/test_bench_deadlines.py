"""bench/deadlines.py's bookkeeping on made-up replays: the best of each family per load, the goals,
the table and the figures (the replays themselves are real only when the bench runs)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from benches import load_bench

from chronoserve.replay import Record, summarize

bench = load_bench("deadlines")


def summary(met: int, missed: int, label: str, interactive_met: int = 0):
    """``met`` + ``missed`` requests scheduled over 10 s; the first ``interactive_met`` of the met
    ones, and every missed one, are in the 150 ms priority-1 class."""
    base = Record(0, "r", "m", None, None, 4, False, 0.0, 0.0, 0.05, 200, None, None, 0, 0, 0, 0, 1, False)
    records = []
    for i in range(met + missed):
        interactive = i < interactive_met or i >= met
        records.append(
            replace(
                base,
                index=i,
                scheduled=10.0 * i / (met + missed),
                received=10.0 * i / (met + missed) + (0.05 if i < met else 0.5),
                deadline_ms=150.0 if interactive else 5000.0 if i >= met else 1000.0,
                priority=1 if interactive else 2,
                deadline_class="interactive" if interactive else "dashboard",
            )
        )
    return summarize(records, label, {"trace": "t"}, cpu_seconds=1.0)


def runs():
    out = []
    for factor, offered in ((0.5, 50.0), (1.5, 150.0)):
        scale = 1 if factor == 0.5 else 3
        out += [
            bench.Run("deadline", "deadline", factor, offered, summary(99 * scale, 1 * scale, "deadline", 20)),
            bench.Run("fixed", "batched B=4", factor, offered, summary(60 * scale, 40 * scale, "b4")),
            bench.Run("fixed", "batched B=64", factor, offered, summary(70 * scale, 30 * scale, "b64")),
            bench.Run("bentoml", "bentoml 1000ms", factor, offered, summary(80 * scale, 20 * scale, "bento")),
            bench.Run("auto", "batched auto", factor, offered, summary(66 * scale, 34 * scale, "auto")),
        ]
    return out


def test_the_goals_compare_the_best_of_each_family_at_each_load():
    goals = bench.goals(runs())
    at = goals["x1.5"]
    assert at["best_fixed"] == "batched B=64" and at["best_bentoml"] == "bentoml 1000ms"
    assert at["deadline_attainment"] == pytest.approx(0.99)
    assert at["vs_fixed"] == pytest.approx(99 / 70) and at["vs_bentoml"] == pytest.approx(99 / 80)
    assert at["auto_vs_fixed"] == pytest.approx(66 / 70)
    # 20 interactive met, 3 missed (answered late): 20 / 23.
    assert at["high_priority_attainment"] == pytest.approx(20 / 23)
    assert at["deadline_late"] == 3


def test_the_table_and_figures_are_written(tmp_path: Path, capsys):
    all_runs = runs()
    results = {
        "trace": "deadlines (made up)",
        "requests": 100,
        "capacity_per_s": 100.0,
        "factors": [0.5, 1.5],
        "seconds": 1.0,
        "runs": [r.row() for r in all_runs],
        "goals": bench.goals(all_runs),
    }
    bench.write(tmp_path, results)
    table = (tmp_path / "table.txt").read_text()
    assert "x1.5: deadline attainment 99.0 %" in table and "1.41x best fixed (batched B=64" in table
    assert json.loads((tmp_path / "results.json").read_text())["runs"][0]["family"] == "deadline"
    for name in ("deadlines-load.png", "deadlines-classes.png"):
        assert (tmp_path / name).stat().st_size > 10_000
    assert "wrote" in capsys.readouterr().out


def test_every_load_point_runs_the_same_policies():
    full, quick = bench.policies(quick=False), bench.policies(quick=True)
    assert {f for f, *_ in full} == {"deadline", "fixed", "bentoml", "auto"} == {f for f, *_ in quick}
    assert len([c for c in full if c[0] == "fixed"]) == len(bench.GRID_B) * len(bench.GRID_WAIT)
    assert len({label for _, label, _, _ in full}) == len(full)  # labels tell the runs apart


def test_feasible_attainment_leaves_out_only_what_no_scheduler_could_meet_here():
    row = {
        "outcomes": {"met": 90, "late": 2, "shed": 8, "expired": 0, "refused": 0, "failed": 0},
        "priority1_by_model": {"slow": [1, 10], "fast": [19, 20]},
    }
    idle = {
        "slow": {"requests": 40, "over_deadline": 11, "median_ms": 120.0, "p90_ms": 200.0},  # 27 % over
        "fast": {"requests": 40, "over_deadline": 2, "median_ms": 10.0, "p90_ms": 12.0},  # 5 %: kept
    }
    value, models = bench.feasible_attainment(row, idle)
    assert models == ["slow"] and value == pytest.approx((90 - 1) / (100 - 10))
    assert bench.feasible_attainment({"outcomes": None}, idle) is None
