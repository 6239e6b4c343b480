"""bench/serving.py on a tiny trace: the raw loop, in-process policies, LitServe; ratios and files."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import benches
import pytest

pytest.importorskip("torch")
pytestmark = [pytest.mark.torch, pytest.mark.slow]

MODEL = "random/tiny-chronos-bolt"
N = 12


def load_bench() -> ModuleType:
    return benches.load_bench("serving")


@pytest.fixture(scope="module")
def tiny_trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from chronoserve.traces import generate, write_trace

    path = tmp_path_factory.mktemp("trace") / "tiny.jsonl"
    write_trace(generate(N, "poisson", rate=40.0, seed=3, models=[MODEL]), path)
    return path


def run_bench(trace: Path, out: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    bench = load_bench()
    argv = ["--traces", str(trace), "--batch", "4", "--max-wait-ms", "5", "--out", str(out), "--no-system-plots"]
    status = bench.main([*argv, *extra])
    return status, json.loads((out / "serving.json").read_text())["traces"]["tiny"]


def test_raw_loop_and_in_process_policies(tiny_trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, entry = run_bench(tiny_trace, tmp_path, "--systems", "raw,lru,batched")
    assert status == 0
    runs = {r["label"]: r for r in entry["runs"]}
    assert list(runs) == ["raw", "lru", "batched"]
    assert runs["raw"]["raw"]["requests"] == N and runs["raw"]["raw"]["per_second"] > 0
    for label in ("lru", "batched"):
        assert runs[label]["summary"]["ok"] == N
        assert (tmp_path / "tiny" / label / "summary.json").is_file()
        assert (tmp_path / "tiny" / label / "requests.csv").is_file()
    ratios = entry["ratios_to_batched"]
    assert ratios["batched"] == {"p50": 1.0, "p99": 1.0, "throughput": 1.0}
    assert ratios["lru"]["p50"] > 0 and ratios["lru"]["p99"] > 0 and ratios["lru"]["throughput"] > 0
    assert ratios["raw"]["p50"] is None and ratios["raw"]["throughput"] > 0
    # Chronos-Bolt answers do not depend on the batch: lru (batches of one) agrees with batched.
    assert entry["answers_vs_batched"]["lru"]["compared"] == N
    assert entry["answers_vs_batched"]["lru"]["max_abs_diff"] < 1e-4
    assert (tmp_path / "tiny" / "compare.png").stat().st_size > 10_000
    out = capsys.readouterr().out
    assert "random weights: timings only" in out
    assert "req/s x" in out and "batched" in out


@pytest.mark.timeout(120)
@pytest.mark.skipif(importlib.util.find_spec("litserve") is None, reason="litserve not installed (.[bench])")
def test_litserve_app_serves_the_trace(tiny_trace: Path, tmp_path: Path) -> None:
    status, entry = run_bench(
        tiny_trace, tmp_path, "--systems", "batched,litserve", "--litserve-configs", "1x1", "--startup-timeout", "60"
    )
    runs = {r["label"]: r for r in entry["runs"]}
    lit = runs["litserve 1x1"]
    if lit["error"] and "StartupTimeout" in lit["error"]:
        pytest.skip(f"LitServe did not start within 60 s here: {lit['error'].splitlines()[0]}")
    assert status == 0, lit["error"]
    assert lit["error"] is None and lit["exit_code"] == 0
    assert lit["summary"]["ok"] == N and lit["summary"]["errors"] == {}
    assert lit["server_cpu_s"] > 0
    assert set(entry["ratios_to_batched"]["litserve 1x1"]) == {"p50", "p99", "throughput"}
    # The same backends on the same requests: the same answers as chronoserve's.
    assert entry["answers_vs_batched"]["litserve 1x1"]["compared"] == N
    assert entry["answers_vs_batched"]["litserve 1x1"]["max_abs_diff"] < 1e-4
    log = (tmp_path / "tiny" / "litserve-1x1.log").read_text()
    assert "litserve worker ready" in log
    assert (tmp_path / "tiny" / "litserve-1x1" / "summary.json").is_file()
