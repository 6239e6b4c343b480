"""``chronoserve profile``: query classes, the MSRR search, one profile process on fake models, the
files, resuming, what a server loads, and one real ``--quick`` run on a tiny model."""

from __future__ import annotations

import asyncio
import json
import math

import httpx
import numpy as np
import pytest
from asgi_lifespan import LifespanManager

from chronoserve.cli import main
from chronoserve.costs import BatchFeatures, CostModel
from chronoserve.data import SeriesStore
from chronoserve.executor import InlineExecutor
from chronoserve.profile import QueryClass, load_profile, parse_classes
from chronoserve.profile.msrr import Probe, nearest_rank, poisson_probe, search
from chronoserve.profile.report import COLUMNS, Profile, format_table, read_journal
from chronoserve.profile.runner import RunSettings, Work, build_pool, run_work
from chronoserve.testing import FakeLoader, fake_engine, fake_spec, server_settings

# -- query classes --------------------------------------------------------------------------------


def test_classes_parse_and_say_what_is_wrong():
    assert parse_classes("short:64:16, cov:512:64:2") == (QueryClass("short", 64, 16), QueryClass("cov", 512, 64, 2))
    for text, message in [
        ("short:64", "expected name:context:horizon"),
        ("short:64:x", "whole numbers"),
        ("a:64:16,a:32:8", "distinct"),
        ("short:0:16", "context must be"),
        ("sh/rt:64:16", "letters, digits"),
        ("", "no class"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_classes(text)


def test_a_class_knows_which_models_can_run_it_and_their_decoding_steps():
    bolt = fake_spec("b", family="chronos-bolt", supports_covariates=False, max_horizon=64)
    t5 = fake_spec("t", family="chronos-t5", supports_covariates=False, max_horizon=64)
    c2 = fake_spec("c", supports_covariates=True, batch_patch=16, max_horizon=1024)
    cov = QueryClass("cov", 512, 64, 2)
    assert cov.fits(bolt) == "chronos-bolt takes no covariates" and cov.fits(c2) is None
    assert QueryClass("far", 64, 128).fits(bolt) == "horizon 128 exceeds b's 64"
    assert cov.output_steps(c2) == 4 and QueryClass("x", 64, 64).output_steps(t5) == 64


def test_the_request_pool_has_the_class_shape_with_covariates_past_and_future():
    pool = build_pool(SeriesStore.embedded(), "dongsi", QueryClass("cov", 512, 24, 2), "m", size=70)
    assert len(pool) == 70
    for r in pool:
        assert len(r.target) == 512 and r.horizon == 24
        assert len(r.past_covariates) == 2 and all(len(v) == 512 for v in r.past_covariates.values())
        assert all(len(v) == 24 for v in r.future_covariates.values())


# -- the MSRR search ------------------------------------------------------------------------------


async def test_the_search_finds_the_knee_of_a_latency_curve_within_its_resolution():
    async def probe(rate):  # p95 meets a 100 ms SLO up to 70 requests per second
        return Probe(rate, 0.05 if rate <= 70 else 0.5, 100, 0, rate <= 70)

    seen = []
    found = await search(probe, capacity=100.0, steps=6, on_probe=lambda i, p: seen.append(p.rate))
    assert 70 - 100 / 2**6 <= found.msrr <= 70 and found.p95_s == 0.05
    assert seen[0] == 50.0 and len(seen) == 6  # starts at half the capacity, one probe per step


async def test_the_search_says_zero_when_no_rate_meets_the_slo():
    async def probe(rate):
        return Probe(rate, math.inf, 10, 10, False)

    found = await search(probe, capacity=40.0, steps=3)
    assert found.msrr == 0.0 and found.p95_s is None and len(found.probes) == 3


def test_nearest_rank_keeps_unanswered_requests_infinitely_late():
    assert nearest_rank([1.0, 2.0, 3.0, 4.0], 0.5) == 2.0
    assert nearest_rank([0.1] * 95 + [math.inf] * 5, 0.95) == 0.1
    assert nearest_rank([0.1] * 94 + [math.inf] * 6, 0.95) == math.inf
    assert nearest_rank([], 0.95) == math.inf


async def test_a_probe_counts_every_request_and_fails_on_errors():
    pool = build_pool(SeriesStore.embedded(), "dongsi", QueryClass("s", 64, 8), "fake", size=8)
    async with fake_engine(clock=None, policy_options={"max_batch": 8, "max_wait": 0}) as engine:
        probe = await poisson_probe(
            engine, pool, 4000.0, slo_s=30.0, seconds=0.005, min_requests=25, seed=1, grace_s=30.0, clock=_now
        )
    assert probe.requests == 25 and probe.missed == 0 and probe.ok and probe.p95_s < 30.0
    loader = FakeLoader(fail_predict={"fake"})
    async with fake_engine(loader=loader, policy_options={"max_batch": 8, "max_wait": 0}) as engine:
        probe = await poisson_probe(
            engine, pool, 4000.0, slo_s=30.0, seconds=0.005, min_requests=25, seed=1, grace_s=30.0, clock=_now
        )
    assert probe.missed == 25 and not probe.ok and probe.p95_s == math.inf


def _now():
    import time

    return time.monotonic()


# -- one profile process, on fake models ----------------------------------------------------------

TINY = RunSettings.quick(
    slo_p95_ms=30_000.0, min_batches=3, min_seconds=0.0, max_seconds=30.0, msrr_steps=2, probe_seconds=0.01,
    probe_min_requests=10, warmup_batches=1,
)  # fmt: skip


def _run_fake(tmp_path, items, workers=1):
    loader = FakeLoader(specs={"fake": fake_spec("fake", supports_covariates=True, batch_patch=16)})
    work = Work("fake", workers, 1, tuple(items), str(tmp_path / "rows.jsonl"), TINY)
    parts = {"executor": InlineExecutor(), "load_executor": InlineExecutor(), "resolve_executor": InlineExecutor()}
    lines = []
    assert run_work(work, loader=loader, say=lines.append, engine_parts=parts) == len(items)
    return read_journal(tmp_path / "rows.jsonl"), lines, loader


def test_a_profile_process_writes_one_full_row_per_class_and_batch(tmp_path):
    items = [(QueryClass("short", 64, 16), 1), (QueryClass("short", 64, 16), 4), (QueryClass("cov", 64, 16, 2), 4)]
    rows, lines, loader = _run_fake(tmp_path, items)
    assert [(r["class"], r["batch"]) for r in rows] == [("short", 1), ("short", 4), ("cov", 4)]
    for r in rows:
        assert set(COLUMNS) <= set(r), set(COLUMNS) - set(r)
        assert r["model"] == "fake" and r["workers"] == 1 and r["torch_threads"] == 1 and r["backend"] == "torch"
        assert r["batches_measured"] >= 3 and r["series_per_s"] > 0 and r["cpu_s_per_1k"] >= 0
        assert r["latency_p50_ms"] <= r["latency_p95_ms"] <= r["latency_p99_ms"]
        assert r["msrr_per_s"] > 0 and r["msrr_resolution_per_s"] == pytest.approx(r["series_per_s"] / 4)
        assert r["energy_j_per_forecast"] is None  # no readable energy counter on this machine
    # Work is what the engine estimated: a batch of 4 is 4 rows; with 2 covariates, 12.
    assert rows[1]["rows_per_batch"] == 4 and rows[2]["rows_per_batch"] == 12
    assert rows[2]["gflop_per_batch"] == pytest.approx(3 * rows[1]["gflop_per_batch"])
    assert 4 in loader.batch_sizes() and any("MSRR probe" in x for x in lines)


def test_the_table_files_and_what_a_server_loads(tmp_path):
    from chronoserve.profile.report import write_csv, write_json

    rows, _, _ = _run_fake(tmp_path, [(QueryClass("short", 64, 16), b) for b in (1, 2, 4)])
    write_csv(tmp_path / "profile.csv", rows)
    write_json(tmp_path / "profile.json", rows, {"settings": {"slo_p95_ms": 30_000.0}})
    header = (tmp_path / "profile.csv").read_text().splitlines()[0].split(",")
    assert tuple(header) == COLUMNS
    profile = load_profile(tmp_path / "profile.json")
    assert profile.models == ["fake"] and len(profile.figures("fake")) == 3
    assert "fake" in format_table(rows) and "MSRR/S" in format_table(rows)


def test_a_seeded_cost_model_predicts_the_profiled_latencies():
    rows = [
        {"model": "m", "latency_p50_ms": 2.0 + 0.5 * g, "gflop_per_batch": g, "rows_per_batch": b, "workers": 1}
        for b, g in [(1, 1.0), (4, 4.0), (16, 16.0), (64, 64.0), (8, 8.0), (32, 32.0)]
    ] * 3
    costs = CostModel()
    assert Profile(tuple(rows), {}, "p.json").seed(costs) == 18
    predicted = costs.predict_batch(BatchFeatures("m", 24.0, 24, 0.0))
    assert predicted == pytest.approx((2.0 + 0.5 * 24) / 1000, rel=0.05)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        ("{not json", "not a profile"),
        ('{"format": "other"}', "not a chronoserve profile"),
        ('{"format": "chronoserve-profile/1", "rows": [1]}', "must be a list of rows"),
    ],
)
def test_a_bad_profile_is_refused_saying_why(tmp_path, content, message):
    path = tmp_path / "profile.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ValueError, match=message):
        load_profile(path)


async def test_models_shows_the_loaded_profile(tmp_path):
    from chronoserve.server import create_app
    from chronoserve.server.schemas import ModelsOut

    rows, _, _ = await asyncio.to_thread(_run_fake, tmp_path, [(QueryClass("short", 64, 16), 2)])
    profile = Profile(tuple(rows), {"slo_p95_ms": 250.0, "max_wait_ms": 10.0}, "profile.json")
    loader = FakeLoader(specs={"fake": fake_spec("fake")})
    settings = server_settings(default_model="fake", profile=profile, policy_options={"max_wait": 0.001})
    app = create_app(settings, loader=loader)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            await client.post("/forecast", json={"target": [1.0, 2.0, 3.0]})
            body = (await client.get("/models")).json()
            engine = app.state.runtime.engine
    ModelsOut.model_validate(body)
    assert body["profile"]["slo_p95_ms"] == 250.0 and body["profile"]["path"] == "profile.json"
    (figure,) = body["profile"]["models"]["fake"]
    assert figure["class"] == "short" and figure["batch"] == 2 and figure["msrr_per_s"] == rows[0]["msrr_per_s"]
    (resident,) = body["resident"]
    assert resident["profile"] == [figure]
    assert engine.costs.models["fake"].count >= 1  # the profile's row taught the cost model


# -- the command line -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--classes", "x:1"], "--classes: 'x:1': expected name:context:horizon"),
        (["--batch", "0"], "--batch: each value must lie in 1..4096"),
        (["--workers", "a"], "--workers: expected whole numbers"),
        (["--slo-p95-ms", "0"], "--slo-p95-ms: must be a number of milliseconds"),
        (["--models", "nosuch"], "--models: unknown model 'nosuch'"),
        (["--series", "atlantis"], "--series: unknown series 'atlantis'"),
    ],
)
def test_bad_flags_exit_2_naming_the_flag(tmp_path, capsys, argv, message):
    assert main(["profile", "--quick", "--out", str(tmp_path), *argv]) == 2
    assert message in capsys.readouterr().err


def test_serve_refuses_a_bad_profile_before_it_binds(tmp_path, capsys):
    assert main(["serve", "--profile", str(tmp_path / "none.json"), "--port", "0"]) == 2
    assert "--profile:" in capsys.readouterr().err


def test_a_resumed_profile_skips_what_was_measured_and_refuses_other_settings(tmp_path, capsys):
    from chronoserve.profile._cli import JOURNAL, RUN_FILE

    out = tmp_path / "p"
    argv = ["profile", "--quick", "--models", "tiny-chronos-bolt", "--out", str(out), "--no-plots"]
    argv += ["--classes", "s:64:16", "--batch", "1,2"]
    out.mkdir()
    settings = RunSettings.quick(slo_p95_ms=500.0, max_wait_ms=10.0)
    import dataclasses

    (out / RUN_FILE).write_text(json.dumps({"settings": dataclasses.asdict(settings)}))
    done = {"model": "random/tiny-chronos-bolt", "class": "s", "workers": 2, "torch_threads": 1, "random_weights": True}
    (out / JOURNAL).write_text("\n".join(json.dumps({**done, "batch": b}) for b in (1, 2)) + "\n{cut sho")
    assert main(argv) == 0  # nothing left to measure: no process started
    captured = capsys.readouterr()
    assert "resuming: 2 rows measured before" in captured.err and "0 to go" in captured.err
    assert "[1/" not in captured.err and "wrote 2 files" in captured.out
    assert main([*argv[:-4], "--slo-p95-ms", "100", *argv[-4:]]) == 2
    assert "holds rows measured under other settings" in capsys.readouterr().err


@pytest.mark.torch
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_profile_quick_on_a_tiny_model_writes_the_table_json_and_plots(tmp_path, capsys):
    pytest.importorskip("torch")
    out = tmp_path / "profile"
    assert main(["profile", "--quick", "--models", "tiny-chronos-bolt", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "random weights" in captured.out and "MSRR/S" in captured.out
    profile = load_profile(out / "profile.json")
    assert {(r["class"], r["batch"]) for r in profile.rows} == {
        (c, b) for c in ("short-few", "long-many") for b in (1, 8, 32)
    }
    for r in profile.rows:
        assert r["model"] == "random/tiny-chronos-bolt" and r["random_weights"] is True
        assert r["workers"] == 2 and r["torch_threads"] == 1
        assert r["latency_p50_ms"] > 0 and r["series_per_s"] > 0 and r["peak_rss_mb"] > 0
        assert r["msrr_per_s"] is not None and 0 <= r["msrr_per_s"] < r["series_per_s"]
    lines = (out / "profile.csv").read_text().splitlines()
    assert len(lines) == 7 and lines[0].startswith("model,family,random_weights,class")
    for name in ("latency_vs_batch.png", "throughput_vs_batch.png", "msrr.png"):
        assert (out / name).stat().st_size > 10_000, name
    costs = CostModel()
    assert profile.seed(costs) == 6 and np.isfinite(
        costs.predict_batch(BatchFeatures("random/tiny-chronos-bolt", 1.0, 8))
    )


def test_a_second_profile_writing_to_the_same_out_is_refused(tmp_path, capsys):
    import fcntl

    out = tmp_path / "p"
    out.mkdir()
    with (out / ".lock").open("a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("pid 4242")
        held.flush()
        assert main(["profile", "--quick", "--models", "tiny-chronos-bolt", "--out", str(out)]) == 2
    assert "another chronoserve profile (pid 4242) is writing to" in capsys.readouterr().err
