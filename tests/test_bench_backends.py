"""bench/backends.py runs: the four backend variants of a model measured side by side, and the eval table."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import benches
import pytest

pytestmark = pytest.mark.torch
pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
if importlib.util.find_spec("chronos") is None:
    pytest.skip("chronos-forecasting is not installed", allow_module_level=True)

bench = benches.load_bench("backends")


def test_the_four_variants_are_measured_side_by_side(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["--models", "random/tiny-chronos-bolt", "--batches", "1,2", "--repeats", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in lines if line.startswith("| random/")]
    assert [(r[1], r[2]) for r in rows] == list(bench.VARIANTS)  # what ran is what was asked: no fallback
    for row in rows:
        assert all(float(v) > 0 for v in row[4:8])  # seconds at B=1, B=2 and their ratios to eager
    eager, onnx = rows[0], rows[1]
    assert eager[6:8] == ["1.00", "1.00"] and eager[8:] == ["0", "0"]
    assert float(onnx[9]) <= 1e-5  # the same answers, relative to their scale


def test_the_eval_table_reads_the_sweeps_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def sweep(name: str, mase: float, wql: float) -> Path:
        out = tmp_path / name
        out.mkdir()
        (out / "relative.csv").write_text(
            "model,random_weights,context_days,horizon_hours,covariates,covariate_use,relative_mase,relative_wql\n"
            f"chronos-2-pm25,False,2,4,none,none,0.1,0.1\n"
            f"chronos-2-pm25,False,all,all,none,none,{mase / 2},{wql / 2}\n"
            "naive,False,all,all,none,none,0.4,0.3\n"
        )
        (out / "summary.csv").write_text(
            "series,model,covariates,scored,mase,wql\n"
            f"a,chronos-2-pm25,none,10,{mase - 0.1},{wql}\n"
            f"b,chronos-2-pm25,none,6,{mase + 0.1},{wql}\n"
            "a,naive,none,10,9,9\n"
        )
        return out

    torch_fp32 = bench.read_eval(sweep("t", 0.8, 0.6))
    expected = {"relative_mase": 0.4, "relative_wql": 0.3, "mase": 0.8, "wql": 0.6, "windows": 16}
    assert torch_fp32 == pytest.approx(expected)
    onnx_int8 = bench.read_eval(sweep("o", 0.9, 0.6))
    bench.print_eval({("torch", "float32"): torch_fp32, ("onnx", "int8"): onnx_int8})
    out = capsys.readouterr().out
    assert "| onnx | int8 | 0.4500 | 0.3000 | 0.9000 | 0.6000 | +0.1000 | +0.0000 | 16 |" in out
