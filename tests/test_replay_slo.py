"""What a replay reports about deadlines: outcomes by reason, attainment per class, goodput, CPU per
forecast; and ``replay --load-sweep`` (points, files, plot, bad input)."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field, replace
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from chronoserve.replay import HTTPTarget, InProcessTarget, Record, replay, summarize
from chronoserve.replay.report import format_table
from chronoserve.replay.slo import class_of, outcome, summarize_slo
from chronoserve.replay.sweep import SweepPoint, format_sweep, parse_factors, write_sweep
from chronoserve.server import create_app
from chronoserve.testing import FakeLoader, fake_spec, server_settings

MODEL = "random/chronos-bolt-tiny"


@dataclass(frozen=True)
class Req:
    t: float
    body: dict[str, Any] = field(default_factory=dict)
    deadline_class: str | None = None

    def to_http_body(self) -> dict[str, Any]:
        return {"model_name": MODEL, "city": "dongsi", "horizon_hours": 4, **self.body}


def record(latency: float, status: int = 200, kind: str | None = None, **fields: Any) -> Record:
    base = Record(0, "r", "m", None, None, 4, False, 0.0, 0.0, latency, status, kind, None, 0, 0, 0, 0, 1, False)
    return replace(base, **fields)


def test_each_request_with_a_deadline_has_one_outcome_and_attainment_counts_every_miss():
    records = [
        record(0.10, deadline_ms=150, priority=1, deadline_class="interactive"),  # met
        record(0.20, deadline_ms=150, priority=1, deadline_class="interactive"),  # late
        record(0.01, 503, "deadline_unmeetable", deadline_ms=150, priority=1, deadline_class="interactive"),
        record(0.90, 504, "deadline_expired", deadline_ms=1000, priority=2, deadline_class="dashboard"),
        record(0.50, deadline_ms=1000, priority=2, deadline_class="dashboard"),  # met
        record(0.00, 429, "queue_full", deadline_ms=5000, priority=3),  # refused; no class name
        record(0.00, 500, "internal", deadline_ms=5000, priority=3),  # failed
        record(9.00),  # no deadline: not in the attainment
    ]
    assert [outcome(r) for r in records] == ["met", "late", "shed", "expired", "met", "refused", "failed", None]
    assert class_of(records[5]) == "5000 ms p3"
    slo = summarize_slo(records, duration=2.0)
    assert slo is not None
    assert slo.overall.requests == 7 and slo.overall.attainment == pytest.approx(2 / 7)
    assert slo.goodput == pytest.approx(1.0)  # 2 met in 2 s
    by_name = {c.name: c for c in slo.classes}
    assert [c.name for c in slo.classes] == ["interactive", "dashboard", "5000 ms p3"]  # by priority
    assert by_name["interactive"].counts == {"met": 1, "late": 1, "shed": 1, "expired": 0, "refused": 0, "failed": 0}
    assert by_name["dashboard"].attainment == pytest.approx(0.5) and by_name["dashboard"].deadline_ms == 1000
    assert summarize_slo([record(1.0)], 1.0) is None


def test_the_summary_and_table_carry_goodput_attainment_and_cpu_per_forecast():
    records = [record(0.1 * i, deadline_ms=250, deadline_class="c") for i in range(1, 5)]  # 0.1 .. 0.4 s
    summary = summarize(records, "deadline", cpu_seconds=2.0)
    assert summary.cpu_per_forecast == pytest.approx(0.5)
    assert summary.slo is not None and summary.slo.overall.counts["met"] == 2
    as_dict = summary.to_dict()
    assert as_dict["deadlines"]["overall"]["attainment"] == pytest.approx(0.5)
    assert as_dict["cpu_s_per_forecast"] == pytest.approx(0.5)
    table = format_table([summary])
    assert "goodput/s" in table and "CPU-s/forecast" in table and "50.0%" in table


def fake_loader() -> FakeLoader:
    spec = fake_spec(MODEL, family="chronos-bolt", context_length=2048, max_horizon=64, supports_covariates=False)
    return FakeLoader(specs={MODEL: spec})


async def test_in_process_deadlines_reach_the_engine_and_come_back_as_outcomes():
    target = InProcessTarget("deadline", loader=fake_loader(), policy_options={"max_wait": 0.001})
    requests = [
        Req(0.0, {"request_id": "warm"}),
        Req(0.05, {"request_id": "roomy", "deadline_ms": 60_000, "priority": 2}, "batch"),
        Req(0.05, {"request_id": "hopeless", "deadline_ms": 0.001, "priority": 1}, "instant"),
    ]
    result = await replay(requests, target, progress=False)
    warm, roomy, hopeless = result.records
    assert (roomy.deadline_ms, roomy.priority, roomy.deadline_class) == (60_000, 2, "batch")
    assert outcome(warm) is None and outcome(roomy) == "met"
    # A microsecond budget is gone before a worker could start it: shed, expired or (at best) late.
    assert outcome(hopeless) in {"shed", "expired", "late"} and not hopeless.met
    summary = result.summary
    assert summary.slo is not None and summary.slo.overall.requests == 2
    assert summary.cpu_seconds is not None and summary.cpu_seconds >= 0


async def test_a_server_reports_its_cpu_time_in_metrics_and_the_replayer_reads_it():
    app = create_app(server_settings(default_model=MODEL, policy_options={"max_wait": 0.001}), loader=fake_loader())
    async with LifespanManager(app) as manager:
        target = HTTPTarget("http://server", transport=httpx.ASGITransport(app=manager.app))
        await target.start()
        first = await target.cpu_seconds()
        await target.close()
    assert first is not None and first > 0  # this process's CPU time so far, from process_cpu_seconds_total


def test_load_sweep_factors_are_checked():
    assert parse_factors("1.5, 0.5,1") == (0.5, 1.0, 1.5)
    for bad, message in (("", "comma-separated"), ("0,1", r"\(0, 1000\]"), ("a", "not a number"), ("1,1", "distinct")):
        with pytest.raises(ValueError, match=message):
            parse_factors(bad)


def test_sweep_files_hold_every_point_and_the_plot(tmp_path):
    points = []
    for policy, met in (("batched", (10, 6)), ("deadline", (10, 9))):
        for factor, n_met in zip((1.0, 2.0), met, strict=True):
            records = [record(0.1, deadline_ms=1000 if i < n_met else 10) for i in range(10)]
            points.append(SweepPoint(policy, factor, 10.0 * factor, summarize(records, policy, {"trace": "t"})))
    files = write_sweep(tmp_path, points)
    assert [f.name for f in files] == ["sweep.csv", "sweep.json", "sweep.png"]
    rows = list(csv.DictReader((tmp_path / "sweep.csv").read_text().splitlines()))
    assert [(r["policy"], r["factor"], r["attainment"]) for r in rows] == [
        ("batched", "1.0", "1.0"),
        ("batched", "2.0", "0.6"),
        ("deadline", "1.0", "1.0"),
        ("deadline", "2.0", "0.9"),
    ]
    assert json.loads((tmp_path / "sweep.json").read_text())[1]["deadlines"]["overall"]["late"] == 4
    assert (tmp_path / "sweep.png").stat().st_size > 10_000
    assert "60.0%" in format_sweep(points)


def test_cli_load_sweep_refuses_bad_input(tmp_path, capsys):
    from chronoserve.cli import main

    line = '{{"t": {t}, "request_id": "{i}", "model_name": "m", "city": "dongsi", "context_hours": 48, ' \
        '"horizon_hours": 4, "use_covariates": false}}\n'  # fmt: skip
    spread = tmp_path / "spread.jsonl"
    spread.write_text(line.format(t=0, i="a") + line.format(t=1, i="b"))
    assert main(["replay", str(spread), "--load-sweep", "0,2"]) == 2
    assert "--load-sweep" in capsys.readouterr().err
    burst = tmp_path / "burst.jsonl"
    burst.write_text(line.format(t=0, i="a") + line.format(t=0, i="b"))
    assert main(["replay", str(burst), "--load-sweep", "1,2"]) == 2
    assert "burst" in capsys.readouterr().err


@pytest.mark.torch
@pytest.mark.slow
def test_cli_load_sweep_on_a_tiny_real_model(tmp_path, capsys):
    from chronoserve.cli import main
    from chronoserve.traces import generate, write_trace

    trace = generate(
        10, "poisson", rate=20, seed=1, models=["random/tiny-chronos-bolt"], horizons=(4,), deadline_ms=30_000
    )
    path = tmp_path / "t.jsonl"
    write_trace(trace, path)
    out = tmp_path / "out"
    argv = ["replay", str(path), "--load-sweep", "1,2", "--compare", "batched,deadline", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "load sweep" in printed and "goodput/s" in printed
    rows = list(csv.DictReader((out / "sweep.csv").read_text().splitlines()))
    assert [(r["policy"], r["factor"]) for r in rows] == [
        ("batched", "1.0"),
        ("deadline", "1.0"),
        ("batched", "2.0"),
        ("deadline", "2.0"),
    ]
    doubled = pytest.approx(2 * float(rows[0]["offered_per_s"]), rel=1e-3)  # t is rounded to µs
    assert float(rows[2]["offered_per_s"]) == doubled
    assert all(int(r["requests"]) == 10 for r in rows)
    assert (out / "x2" / "deadline" / "summary.json").exists() and (out / "sweep.png").exists()


async def test_the_replayer_prefers_the_whole_servers_cpu_to_one_processs():
    text = "process_cpu_seconds_total 2.5\nchronoserve_server_cpu_seconds_total 7.25\n"
    only_process = "process_cpu_seconds_total 2.5\n"

    def answer(body: str) -> httpx.MockTransport:
        return httpx.MockTransport(lambda request: httpx.Response(200, text=body))

    for body, expected in ((text, 7.25), (only_process, 2.5), ("nothing here\n", None)):
        target = HTTPTarget("http://server", transport=answer(body))
        await target.start()
        assert await target.cpu_seconds() == expected
        await target.close()
