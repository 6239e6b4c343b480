"""edge-bench: run rules and verdicts on hand-made readings, runs on fake models, and one real
pinned run of a tiny model in a child process (affinity, threads, every output file, VALID)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import pytest

from chronoserve.cli import main
from chronoserve.edge import rules as R
from chronoserve.edge.pinning import allowed_cores, choose_cores, parse_core_counts, parse_parallel_info
from chronoserve.edge.report import combine_csv, format_table, overall_verdict
from chronoserve.edge.runner import BenchConfig, build_requests, run_benchmark
from chronoserve.perf import read_rows
from chronoserve.testing import FakeLoader, fake_spec

# -- the rules, on hand-made samples --------------------------------------------------------------


def sample(t: float, cores: list[float], proc: float, **extra: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"time_s": t, "proc_cpu_percent": proc}
    row.update({f"cpu{i}_percent": v for i, v in enumerate(cores)})
    row.update(extra)
    return row


def test_a_quiet_machine_is_not_contaminated():
    samples = [sample(t, [2.0, 98.0, 1.0, 100.0], proc=196.0) for t in (1, 2, 3)]
    info = R.contamination(samples, pinned=[1, 3], cores=4)
    assert info["contaminated"] is False and info["reasons"] == []
    assert info["outside_mean_percent"] == {"0": 2.0, "2": 1.0}
    assert info["foreign_on_pinned_percent"] == 2.0  # 98 + 100 busy on the pinned cores, 196 of it ours


def test_load_outside_the_pinned_cores_contaminates():
    samples = [sample(t, [35.0, 100.0], proc=99.0) for t in (1, 2, 3)]
    info = R.contamination(samples, pinned=[1], cores=2, threshold=10.0)
    assert info["contaminated"] is True
    assert info["reasons"] == [
        "contaminated: core 0, outside the pinned cores, was 35% busy on average (threshold 10%)"
    ]


def test_other_processes_on_the_pinned_cores_contaminate_even_with_every_core_pinned():
    # Both cores pinned, both 100% busy, but the benchmark itself used only 120% of a core.
    samples = [sample(t, [100.0, 100.0], proc=120.0) for t in (1, 2)]
    info = R.contamination(samples, pinned=[0, 1], cores=2, threshold=10.0)
    assert info["outside_mean_percent"] == {}
    assert info["foreign_on_pinned_percent"] == 80.0
    assert info["contaminated"] is True and "other processes used 80%" in info["reasons"][0]


def test_no_per_core_samples_means_contamination_is_unknown_and_the_run_invalid():
    info = R.contamination([], pinned=[0], cores=2)
    assert info["contaminated"] is None
    verdict, reasons = R.verdict(
        R.RunRules(duration_s=1, min_queries=1),
        measured_s=1.0,
        queries=100,
        failed=0,
        early_stopping={"estimate": 0.01, "queries": 100, "min_queries": 64},
        contamination_info=info,
        throttling_info=None,
        pinning_ok=True,
    )
    assert verdict == "INVALID" and "contamination cannot be ruled out" in reasons[0]


def test_throttling_bits_and_sticky_changes_invalidate():
    steady = [sample(t, [0.0], proc=0.0, throttled=0x50000) for t in (1, 2)]
    assert R.throttling(steady) == {
        "start": 0x50000,
        "end": 0x50000,
        "bits_seen": 0,
        "sticky_changed": False,
        "reasons": [],
    }  # fmt: skip — throttling happened before the run (sticky bits), not during it
    during = [sample(1, [0.0], proc=0.0, throttled=0x0), sample(2, [0.0], proc=0.0, throttled=0x20002)]
    info = R.throttling(during)
    assert info is not None and info["bits_seen"] == 0x2 and info["sticky_changed"] is True
    assert info["reasons"][0] == "throttled: get_throttled reported ARM frequency capped during the run"
    assert "0x0 -> 0x20002" in info["reasons"][1]
    assert R.throttling([sample(1, [0.0], proc=0.0, throttled=None)]) is None  # unavailable, not "fine"


def test_verdict_lists_every_reason():
    rules = R.RunRules(duration_s=10, min_queries=1024)
    verdict, reasons = R.verdict(
        rules,
        measured_s=20.0,
        queries=50,
        failed=2,
        early_stopping={"estimate": None, "queries": 50, "min_queries": 64},
        contamination_info={"contaminated": False, "reasons": []},
        throttling_info=None,
        pinning_ok=False,
    )
    assert verdict == "INVALID"
    assert reasons[0].startswith("too few queries: 50 measured, the minimum is 1024")
    assert any("early-stopping p90" in r and "it needs 64" in r for r in reasons)
    assert "2 queries failed" in reasons and any(r.startswith("pinning not applied") for r in reasons)


def test_run_rules_stop_when_both_minimums_are_met_or_at_the_maximum():
    rules = R.RunRules(duration_s=60, min_queries=1024)
    assert rules.stop_after_s == 120
    assert not rules.done(61, 1000) and not rules.done(30, 5000)
    assert rules.done(60, 1024) and rules.done(120, 3)
    with pytest.raises(ValueError, match="max_duration"):
        R.RunRules(duration_s=60, max_duration_s=30)


def test_percentiles_are_loadgens_nearest_rank():
    values = [float(i) for i in range(1, 101)]
    stats = R.latency_stats(values)
    assert (stats["p50"], stats["p90"], stats["p99"], stats["p99.9"], stats["max"]) == (51.0, 91.0, 100.0, 100.0, 100.0)
    assert stats["mean"] == 50.5 and stats["count"] == 100


def test_window_keeps_samples_whose_interval_is_mostly_inside():
    samples = [{"time_s": t} for t in (1.0, 2.0, 3.0, 4.0, 5.0)]
    assert [s["time_s"] for s in R.in_window(samples, 2.2, 4.1)] == [3.0, 4.0]


# -- pinning helpers -----------------------------------------------------------------------------


def test_choose_cores_takes_the_highest_and_refuses_too_many():
    assert choose_cores(1, [0, 1, 2, 3]) == [3]
    assert choose_cores(3, {0, 1, 2, 3}) == [1, 2, 3]
    with pytest.raises(ValueError, match="3 cores asked for, but this process may use only 2"):
        choose_cores(3, [0, 1])
    assert parse_core_counts("1, 2,3") == [1, 2, 3]
    with pytest.raises(ValueError, match="twice"):
        parse_core_counts("1,1")


def test_parallel_info_is_parsed_into_fields():
    text = (
        "ATen/Parallel:\n\tat::get_num_threads() : 1\n\tat::get_num_interop_threads() : 1\n"
        "OpenMP 201511 (a.k.a. OpenMP 4.5)\n\tomp_get_max_threads() : 1\nEnvironment variables:\n"
        "\tOMP_NUM_THREADS : 1\nATen parallel backend: OpenMP\n"
    )
    info = parse_parallel_info(text)
    assert info["at::get_num_threads()"] == "1" and info["OMP_NUM_THREADS"] == "1"
    assert info["ATen parallel backend"] == "OpenMP" and info["libraries"] == ["OpenMP 201511 (a.k.a. OpenMP 4.5)"]


# -- runs on a fake model (no torch) -------------------------------------------------------------


#: Seconds each reading of the bench's clock adds in these runs (:class:`StepClock`).
STEP = 0.001


class StepClock:
    """The bench's clock in the runs on a fake model: each reading is ``STEP`` seconds after the
    one before. A run's durations count its clock readings (two per SingleStream query), not the
    machine's speed, so a loaded machine runs the same queries, only slower."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += STEP
        return self.now


class FakeSampler:
    """Stands in for SystemSampler: on exit, samples every 0.05 s of the run with fixed readings."""

    def __init__(self, cores: list[float], proc: float, clock: StepClock) -> None:
        self.cores = len(cores)
        self.readings = (cores, proc)
        self.clock = clock
        self.t0: float | None = None
        self.samples: list[dict[str, Any]] = []
        self.sensors = None

    def __enter__(self) -> FakeSampler:
        return self

    def __exit__(self, *exc: Any) -> None:
        assert self.t0 is not None
        end = self.clock.now - self.t0
        t = 0.05
        while t <= end + 0.05:
            cores, proc = self.readings
            self.samples.append(sample(t, cores, proc, proc_rss_bytes=1000))
            t += 0.05


def fake_config(tmp_path: Path, **kw: Any) -> BenchConfig:
    rules = kw.pop("rules", R.RunRules(duration_s=0.2, min_queries=20, warmup_s=0.1))
    return BenchConfig(model="fake", cores=(1,), out=str(tmp_path), context=48, horizon=4, rules=rules, **kw)


def run_fake(config: BenchConfig, cores: list[float], proc: float, predict_seconds: float = 0.001) -> dict[str, Any]:
    loader = FakeLoader(specs={"fake": fake_spec("fake")}, predict_seconds=predict_seconds)
    clock = StepClock()
    return run_benchmark(
        config,
        loader=loader,
        sampler_factory=lambda path, cfg: FakeSampler(cores, proc, clock),
        inspect=lambda cores: {"ok": True, "requested_cores": list(cores)},
        progress=False,
        clock=clock,
    )


def test_single_stream_on_a_fake_model_is_valid_and_excludes_the_warmup(tmp_path):
    # On the step clock: 0.3 s are 150 queries (2 readings each), past the 70 required.
    rules = R.RunRules(duration_s=0.3, min_queries=70, warmup_s=0.1, max_duration_s=60)
    config = fake_config(tmp_path, rules=rules)
    result = run_fake(config, cores=[1.0, 100.0], proc=99.0)
    assert result["verdict"] == "VALID", result["reasons"]
    measured = result["measured"]
    assert measured["queries"] >= 70 and measured["duration_s"] >= 0.3 and measured["failed"] == 0
    rows = read_rows(tmp_path / "batches.csv")
    warm = [r for r in rows if r["phase"] == "warmup"]
    kept = [r for r in rows if r["phase"] == "measured"]
    assert warm and len(kept) == measured["queries"] == result["latency_s"]["count"]
    assert all(float(r["time_s"]) >= 0.1 for r in kept)  # warm-up rows are never among the measured
    assert all(r["series"] == "dongsi" and r["context_hours"] == "48" and r["cores"] == "1" for r in rows)
    assert result["early_stopping_p90"]["estimate"] is not None
    assert result["throughput"]["series_per_s"] > 0 and result["model"]["random_weights"] is True


def test_a_run_too_short_for_its_minimum_query_count_is_invalid_with_that_reason(tmp_path):
    rules = R.RunRules(duration_s=0.2, min_queries=100_000, warmup_s=0.0, max_duration_s=0.3)
    result = run_fake(fake_config(tmp_path, rules=rules), cores=[1.0, 100.0], proc=99.0)
    assert result["verdict"] == "INVALID"
    assert result["reasons"][0].startswith("too few queries: ")
    assert "the minimum is 100000" in result["reasons"][0]
    # stopped at the maximum duration: by the query that reached it (two clock readings)
    assert 0.3 <= result["measured"]["duration_s"] <= 0.3 + 2 * STEP + 1e-9


def test_a_contaminated_run_is_invalid(tmp_path):
    result = run_fake(fake_config(tmp_path), cores=[60.0, 100.0], proc=99.0)
    assert result["verdict"] == "INVALID"
    assert any(r.startswith("contaminated: core 0") for r in result["reasons"])


def test_offline_keeps_the_queue_full_and_counts_series(tmp_path):
    rules = R.RunRules(duration_s=0.2, min_queries=64, warmup_s=0.05, max_duration_s=60)
    config = fake_config(tmp_path, scenario="offline", batch=4, rules=rules)
    result = run_fake(config, cores=[1.0, 100.0], proc=99.0)
    assert result["verdict"] == "VALID", result["reasons"]
    rows = [r for r in read_rows(tmp_path / "batches.csv") if r["phase"] == "measured"]
    assert sum(int(r["batch_size"]) for r in rows) == result["measured"]["series"] >= 64
    assert max(int(r["batch_size"]) for r in rows) == 4  # the queue was full: batches of B ran
    assert result["early_stopping_p90"] is None and result["measured"]["unit"] == "series"


def test_requests_are_fully_observed_windows_stride_apart(tmp_path):
    from chronoserve.data import SeriesStore

    requests = build_requests(SeriesStore.embedded(), fake_config(tmp_path, stride=3), size=5)
    assert len(requests) == 5 and all(len(r.target) == 48 for r in requests)
    assert all(not any(v != v for v in r.target) for r in requests)  # no NaN


# -- report --------------------------------------------------------------------------------------


def test_table_and_combined_csv(tmp_path):
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        (tmp_path / label / "batches.csv").write_text("time_s,latency_s\n1.0,0.5\n")
    combine_csv(tmp_path, "batches.csv", [("a", tmp_path / "a"), ("b", tmp_path / "b")])
    assert (tmp_path / "batches.csv").read_text().splitlines() == ["run,time_s,latency_s", "a,1.0,0.5", "b,1.0,0.5"]
    result = {
        "label": "cores1-batch1",
        "verdict": "INVALID",
        "reasons": ["too few queries: 3 measured, the minimum is 10"],
        "measured": {"queries": 3},
        "latency_s": {"p50": 0.0123},
        "system": {"peak_rss_bytes": 2**20},
    }
    table = format_table([result])
    assert "cores1-batch1" in table and "12.3" in table and "1.0 MiB" in table
    assert table.splitlines()[-1] == "cores1-batch1: too few queries: 3 measured, the minimum is 10"
    assert overall_verdict([result]) == "INVALID" and overall_verdict([]) == "INVALID"


def test_batch_sweep_plot(tmp_path):
    from chronoserve.edge.plots import plot_batch_sweep

    results = [
        {
            "config": {"cores": list(range(k)), "batch": b},
            "latency_s": {"p50": 0.01 * b / k, "p90": 0.012 * b / k},
            "throughput": {"series_per_s": 100.0 * k},
            "model": {"name": "random/chronos-bolt-tiny", "random_weights": True},
        }
        for k in (1, 2)
        for b in (1, 2, 4)
    ]
    path = plot_batch_sweep(tmp_path / "latency_vs_batch.png", results)
    assert path.stat().st_size > 10_000


# -- the command line ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--cores", str(len(allowed_cores()) + 1)], "--cores: "),
        (["--cores", "0"], "--cores: a core count must be at least 1"),
        (["--batch", "x"], "--batch: "),
        (["--duration", "soon"], "--duration: not a duration"),
        (["--model", "no-such-model"], "--model: "),
        (["--model", "tiny-chronos-bolt", "--horizon", "999"], "--horizon: tiny-chronos-bolt forecasts at most"),
        (["--series", "atlantis"], "--series: unknown series 'atlantis'"),
        (["--duration", "10s", "--max-duration", "5s"], "--max-duration: "),
    ],
)
def test_bad_flags_are_usage_errors_naming_the_flag(argv, message, capsys, tmp_path):
    assert main(["edge-bench", *argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"chronoserve: error: {message}"), err
    assert "Traceback" not in err


@pytest.mark.torch
@pytest.mark.slow
def test_a_failed_quiet_run_says_the_last_line_its_process_wrote(tmp_path):
    pytest.importorskip("torch")
    from chronoserve.edge._cli import CHILD_STDERR, run_child
    from chronoserve.errors import ChronoserveError

    config = BenchConfig(model="random/no-such-model", cores=tuple(choose_cores(1, allowed_cores())), out=str(tmp_path))
    with pytest.raises(ChronoserveError) as failed:
        run_child(config.to_dict(), quiet=True)
    assert str(failed.value).startswith(f"the run {tmp_path.name} failed (exit 1): chronoserve edge-bench: error: ")
    assert "no-such-model" in str(failed.value) and "no-such-model" in (tmp_path / CHILD_STDERR).read_text()


@pytest.mark.torch
@pytest.mark.slow
def test_a_short_pinned_run_of_a_tiny_model_in_a_child_process(tmp_path, capsys):
    """One real run: the child is pinned to one core (of the two here) with one torch thread,
    records both after the model is loaded, and writes every file; VALID.

    The contamination threshold is set out of reach: the other tests of the suite (and anything
    else on a 2-core CI machine) load the other core, and this test is about pinning, files and
    the other rules; contamination has its own tests above on hand-made readings. ``--max-duration``
    is generous so a slow machine still reaches the 64 queries (the run ends as soon as it does).
    """
    pytest.importorskip("torch")
    core = choose_cores(1, allowed_cores())
    argv = ["edge-bench", "--cores", "1", "--model", "tiny-chronos-bolt", "--context", "64", "--horizon", "8",
            "--duration", "1s", "--warmup", "0.5s", "--min-queries", "64", "--max-duration", "120s",
            "--interval", "0.2s", "--contamination-threshold", "100000", "--out", str(tmp_path), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "cores1-batch1" in out and "VALID" in out and "random weights" in out
    for name in ("summary.json", "batches.csv", "samples.csv", "latency_over_time.png", "cpu_over_time.png",
                 "rss_over_time.png"):  # fmt: skip
        assert (tmp_path / name).stat().st_size > 0, name
    # the temperature plot only where a sensor was read (none is here, most likely)
    with (tmp_path / "samples.csv").open() as samples:
        sensed = any(row.get("temp_c") for row in csv.DictReader(samples))
    assert (tmp_path / "temperature_over_time.png").exists() == sensed
    run_dir = tmp_path / "runs" / "cores1-batch1"
    # --quiet: the child's standard error is kept beside its outputs (its last line names a failure).
    assert {p.name for p in run_dir.iterdir()} == {
        "config.json", "result.json", "batches.csv", "samples.csv", "stderr.log"
    }  # fmt: skip
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["verdict"] == "VALID" and summary["random_weights"] is True
    (run,) = summary["runs"]
    assert run["verdict"] == "VALID", run["reasons"]
    pinning = run["pinning"]["after_load"]
    assert pinning["process_affinity"] == core and pinning["ok"] is True
    assert pinning["thread_affinities"] == [core] and pinning["threads"] >= 2  # every thread, not only main
    assert pinning["torch_num_threads"] == 1 and pinning["worker_torch_threads"]["num_threads"] == 1
    assert pinning["parallel_info"]["at::get_num_threads()"] == "1"
    assert run["pinning"]["at_end"]["ok"] is True
    assert run["pinning"]["threads_at_pin"] == 1  # pinned before any other thread existed
    # Forked from the preloaded fork server: torch was imported there, before the pinning, and
    # its pools were still sized here (torch_num_threads above); the record says so.
    start = run["pinning"]["process_start"]
    assert start["method"] == "fork-server" and start["preloaded"] is True and start["seconds"] >= 0
    assert "OMP_NUM_THREADS" in start["import_environment"]  # as torch's import saw it, in the fork server
    assert summary["machine"]["allowed_cores"] == allowed_cores() and summary["machine"]["kernel"] == os.uname().release
    assert summary["software"]["torch"] and summary["model"]["dtype"] == "float32"
    assert run["measured"]["queries"] >= 64 and run["early_stopping_p90"]["estimate"] is not None
    samples = read_rows(tmp_path / "samples.csv")
    assert samples and samples[0]["run"] == "cores1-batch1" and "temp_c" in samples[0]
    # This machine exposes no temperature: recorded as unavailable (empty), never as 0.
    if run["system"]["sensor_sources"]["temp_c"] is None:
        assert all(s["temp_c"] == "" for s in samples)
