"""bench/coldstart.py on tiny models and a short trace: every replay section, its tables and plot."""

from __future__ import annotations

import json
from pathlib import Path

import benches
import pytest

pytest.importorskip("torch")
pytestmark = [pytest.mark.torch, pytest.mark.slow, pytest.mark.timeout(240)]


def test_the_eviction_and_placement_sections_run_and_report(tmp_path: Path) -> None:
    bench = benches.load_bench("coldstart")
    out = tmp_path / "out"
    status = bench.main(["--quick", "--only", "zipf,placement", "--backends", "torch", "--out", str(out)])
    assert status == 0
    results = json.loads((out / "coldstart.json").read_text())
    (zipf,) = results["zipf"]
    assert [r["config"] for r in zipf["rows"]] == list(bench.ZIPF_CONFIGS)
    assert all(r["ok"] == zipf["requests"] == 60 and r["errors"] == {} for r in zipf["rows"])
    with_host = [r for r in zipf["rows"] if r["host_tier"]]
    assert all(r["loads"].get("host", 0) > 0 for r in with_host)  # promotions happened
    assert all("host" not in r["loads"] for r in zipf["rows"] if not r["host_tier"])
    (placement,) = results["placement"]
    assert [r["placement"] for r in placement["rows"]] == list(bench.PLACEMENTS)
    assert all(r["ok"] == 60 for r in placement["rows"])
    table = (out / "coldstart.md").read_text()
    assert "gdsf+host vs lru:" in table and "## Placement (torch)" in table
    assert (out / "coldstart.png").stat().st_size > 10_000
    assert results["random_weights"] is True
