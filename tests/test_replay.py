"""The replayer: open-loop timing on a fake clock, HDR percentiles against numpy, URL mode."""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import httpx
import numpy as np
import pytest
from asgi_lifespan import LifespanManager

from chronoserve.replay import HTTPTarget, InProcessTarget, Outcome, Record, Target, replay, run_trace, summarize
from chronoserve.replay.report import PERCENTILES, format_table
from chronoserve.server import create_app
from chronoserve.testing import FakeClock, FakeLoader, fake_spec, server_settings, settle

MODEL = "random/chronos-bolt-tiny"


@dataclass(frozen=True)
class Req:
    t: float
    body: dict[str, Any] = field(default_factory=dict)

    def to_http_body(self) -> dict[str, Any]:
        return {"model_name": MODEL, "city": "dongsi", "horizon_hours": 4, **self.body}


class StallingTarget(Target):
    """Answers at once, except while stalled: then every request waits until it is released."""

    def __init__(self) -> None:
        self.released = asyncio.Event()
        self.released.set()

    async def send(self, request: Any) -> Outcome:
        await self.released.wait()
        return Outcome(200, {"timings": {"queue": 0, "load": 0, "inference": 0, "total": 0}, "batch_size": 1})


async def test_open_loop_counts_from_the_scheduled_time_so_a_stall_shows_in_later_requests():
    clock = FakeClock()
    target = StallingTarget()
    requests = [Req(float(i)) for i in range(10)]
    task = asyncio.create_task(run_trace(requests, target, clock=clock))
    await settle()
    target.released.clear()  # the server stalls from t=0.5 ...
    clock.advance(0.5)
    await settle()
    for _ in range(9):  # ... to t=5: requests 1 to 4 are still sent on time, and wait
        clock.advance(0.5)
        await settle()
    target.released.set()  # at t=5
    await settle()
    for _ in range(10):
        clock.advance(0.5)
        await settle()
    records = await task
    assert [r.sent for r in records] == [float(i) for i in range(10)]  # sent on schedule, not after the stall
    assert [r.latency for r in records] == [0.0, 4.0, 3.0, 2.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]


def _records(latencies: list[float]) -> list[Record]:
    return [
        Record(i, str(i), "m", None, None, 1, False, 0.0, 0.0, v, 200, None, None, v / 2, 0.0, v / 4, v, 1, False)
        for i, v in enumerate(latencies)
    ]


def test_hdr_percentiles_agree_with_numpy_on_the_recorded_values():
    rng = np.random.default_rng(0)
    latencies = list(rng.lognormal(mean=-3.0, sigma=1.0, size=5000))  # ~50 ms median, long tail
    summary = summarize(_records(latencies), "x")
    values = np.array(latencies)
    ordered = np.sort(values)
    for p in PERCENTILES:
        # Nearest rank, in exact arithmetic: numpy's "inverted_cdf" computes p * n in floats, so
        # at 99.9 % of 5,000 it lands on rank 4,996 instead of 4,995; it must agree to that one rank.
        rank = max(1, math.ceil(Fraction(str(p)) * len(values) / 100))
        expected = float(ordered[rank - 1])
        numpy_value = float(np.percentile(values, p, method="inverted_cdf"))
        assert ordered[rank - 1] <= numpy_value <= ordered[min(rank, len(values) - 1)]
        # HDR keeps 3 significant digits: within 0.1 % (plus a microsecond of rounding).
        assert summary.percentiles["end_to_end"][p] == pytest.approx(expected, rel=1e-3, abs=1e-6)
    queue = values / 2
    assert summary.percentiles["queue"][99.0] == pytest.approx(
        float(np.percentile(queue, 99, method="inverted_cdf")), rel=1e-3, abs=1e-6
    )
    assert summary.means["end_to_end"] == pytest.approx(values.mean())
    table = format_table([summary])
    assert "p99.9" in table and "end-to-end" in table


def fake_loader() -> FakeLoader:
    spec = fake_spec(MODEL, family="chronos-bolt", context_length=2048, max_horizon=64, supports_covariates=False)
    return FakeLoader(specs={MODEL: spec})


async def test_url_mode_against_an_in_process_server(tmp_path):
    app = create_app(server_settings(default_model=MODEL, policy_options={"max_wait": 0.001}), loader=fake_loader())
    requests = [Req(i * 0.01, {"request_id": f"r{i}"}) for i in range(20)]
    requests.append(Req(0.2, {"request_id": "bad", "city": "atlantis"}))
    async with LifespanManager(app) as manager:
        target = HTTPTarget("http://server", transport=httpx.ASGITransport(app=manager.app))
        result = await replay(requests, target, out=tmp_path, progress=False, meta={"trace": "test"})
    s = result.summary
    assert s.requests == 21 and s.ok == 20
    assert s.errors == {"invalid_request": 1}
    bad = next(r for r in result.records if r.request_id == "bad")
    assert bad.status == 422 and "city" in bad.error
    names = {p.name for p in result.files}
    assert {"requests.csv", "requests.jsonl", "summary.json", "end_to_end.hgrm", "latency_over_time.png",
            "requests_per_second.png", "breakdown.png", "latency_histograms.png"} <= names  # fmt: skip
    assert (tmp_path / "end_to_end.hgrm").read_text().splitlines()[0].split() == [
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)",
    ]  # fmt: skip


async def test_in_process_target_builds_requests_like_the_server():
    target = InProcessTarget("batched", loader=fake_loader(), policy_options={"max_wait": 0.001})
    requests = [Req(0.0, {"request_id": "a", "context_hours": 48}), Req(0.0, {"request_id": "b", "horizon_hours": 65})]
    result = await replay(requests, target, progress=False)
    ok, bad = result.records
    assert ok.status == 200 and ok.batch_size == 1
    assert bad.status == 422 and bad.error.startswith("horizon_hours")


@pytest.mark.torch
@pytest.mark.slow
def test_cli_replay_compare_on_a_tiny_real_model(tmp_path, capsys):
    from chronoserve.cli import main
    from chronoserve.traces import generate, write_trace

    trace = generate(12, "poisson", rate=50, seed=3, models=["random/tiny-chronos-bolt"], horizons=(4, 24))
    path = tmp_path / "t.jsonl"
    write_trace(trace, path)
    out = tmp_path / "out"
    code = main(["replay", str(path), "--compare", "lru,batched", "--out", str(out), "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "end-to-end latency (ms)" in printed and "p99.9" in printed
    assert "random weights" in printed
    for policy in ("lru", "batched"):
        files = {p.name for p in (out / policy).iterdir()}
        assert {"requests.csv", "end_to_end.hgrm", "breakdown.png", "summary.json"} <= files
    assert (out / "compare.png").stat().st_size > 10_000


def test_cli_replay_refuses_bad_input(tmp_path, capsys):
    from chronoserve.cli import main

    assert main(["replay", str(tmp_path / "missing.jsonl")]) == 2
    assert "TRACE" in capsys.readouterr().err
    line = '{"t": 0, "request_id": "a", "model_name": "m", "city": "dongsi", "context_hours": 48, "horizon_hours": 4'
    bad = tmp_path / "bad.jsonl"
    bad.write_text(line + ', "use_covariates": false, "colour": 1}\n')
    assert main(["replay", str(bad)]) == 2
    assert "colour" in capsys.readouterr().err
    good = tmp_path / "good.jsonl"
    good.write_text(line + ', "use_covariates": false}\n')
    assert main(["replay", str(good), "--arrivals", "poisson"]) == 2
    assert "--rate" in capsys.readouterr().err
