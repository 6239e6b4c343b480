"""``chronoserve eval`` from the command line: a real sweep on two sites with tiny models, the
errors that exit 2 naming the flag, and Ctrl-C leaving finished configurations for a resume."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from chronoserve.cli import main

TINY_C2 = "random/tiny-chronos-2"
TINY_BOLT = "random/tiny-chronos-bolt"
PLOTS = ("error_vs_context.png", "error_vs_horizon.png", "rmse_cdf.png", "covariate_improvement.png")
SMALL = ["--series", "dongsi,huairou", "--context-days", "1,2", "--horizons", "4,24", "--stride", "24"]


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.torch
def test_sweep_on_two_sites_with_tiny_models(tmp_path: Path, capsys):
    pytest.importorskip("chronos")
    out = tmp_path / "eval"
    args = ["eval", "--models", f"{TINY_C2},{TINY_BOLT}", *SMALL, "--max-windows", "3", "--covariates", "all"]
    args += ["--known-future", "--plot-days", "2016-10-01", "--out", str(out), "--workers", "1"]
    assert main(args) == 0
    captured = capsys.readouterr()
    expected = {"windows.csv", "summary.csv", "relative.csv", "summary.md", "settings.json", *PLOTS}
    expected.add("forecast_vs_truth.png")
    assert expected <= {p.name for p in out.iterdir()}
    for name in (*PLOTS, "forecast_vs_truth.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = read_csv(out / "windows.csv")
    # Chronos-2: none and all covariates; Bolt once; 3 baselines; 2 contexts x 2 horizons, 2 sites, 3 windows
    assert len(rows) == (2 + 1 + 3) * 4 * 2 * 3
    c2 = [r for r in rows if r["model"] == TINY_C2]
    assert {r["covariate_use"] for r in c2} == {"none", "known-future"}
    assert {r["covariates"] for r in c2} == {"none", "relative_humidity+temperature+wind_speed"}
    assert all(r["random_weights"] == "True" for r in c2)
    assert {r["model"] for r in rows} == {TINY_C2, TINY_BOLT, "naive", "seasonal_naive", "auto_theta"}
    assert all(r["rmse"] and float(r["rmse"]) >= 0 for r in rows)
    md = (out / "summary.md").read_text()
    assert "KNOWN-FUTURE" in md and "[random weights]" in md
    assert json.loads((out / "settings.json").read_text())["known_future"] is True
    assert "MASE and WQL relative to seasonal naive" in captured.out
    assert "random weights" in captured.out
    assert "[1/" in captured.err  # progress, one line per configuration


def test_bad_context_days_exits_2_naming_the_flag(capsys):
    with pytest.raises(SystemExit) as info:
        main(["eval", "--context-days", "2,x"])
    assert info.value.code == 2
    assert "--context-days" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--series", "dongsi,atlantis"], "--series: unknown series 'atlantis'"),
        (["--models", "no-such-model"], "--models: unknown model 'no-such-model'"),
        (["--models", TINY_BOLT, "--horizons", "24,96"], "--horizons: [96] exceed what random/tiny-chronos-bolt"),
        (["--models", TINY_BOLT, "--known-future"], "--known-future: needs covariates"),
        (["--data", "/no/such/dir"], "--data: "),
        (["--models", "none", "--perf"], "--models: --perf measures Chronos models"),
        (["--models", TINY_BOLT, "--start", "2016-12-30"], "--start/--end: the span of 'aotizhongxin' has 48 hours"),
        (["--models", "none", "--series", "dongsi", "--plot-days", "2016-07-02"], "--plot-days: 2016-07-02: 'dongsi'"),
        (["--models", "none", "--series", "dongsi", "--plot-series", "huairou"], "--plot-series: 'huairou' is not"),
    ],
)
def test_bad_input_exits_2_naming_the_flag(args, message, capsys, tmp_path: Path):
    assert main(["eval", *args, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("chronoserve: error: ")
    assert message in err
    assert "Traceback" not in err
    assert not (tmp_path / "settings.json").exists()  # refused before anything ran


def test_missing_statsforecast_exits_2_with_the_install_hint(monkeypatch, capsys, tmp_path: Path):
    monkeypatch.setitem(sys.modules, "statsforecast", None)  # `import statsforecast` raises ImportError
    assert main(["eval", "--models", "none", "--series", "dongsi", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "statsforecast" in err and "pip install 'chronoserve[eval]'" in err
    assert not (tmp_path / "settings.json").exists()


def test_other_settings_in_the_same_out_exit_2(tmp_path: Path, capsys):
    base = ["eval", "--models", "none", "--series", "dongsi", "--context-days", "2", "--horizons", "24"]
    base += ["--max-windows", "2", "--no-plots", "--quiet", "--out", str(tmp_path)]
    assert main(base) == 0
    capsys.readouterr()
    assert main([*base, "--stride", "24"]) == 2
    err = capsys.readouterr().err
    assert "--out:" in err and "stride 4 there, 24 now" in err and "--overwrite" in err
    assert main([*base, "--stride", "24", "--overwrite"]) == 0


def _interrupt_after(cmd: list[str], prefix: str) -> tuple[int, str]:
    """Run ``cmd``, send SIGINT once a stderr line starts with ``prefix``; (exit code, stderr)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # A test run started in the background (`cmd &` in a script) ignores SIGINT, as shells do for
    # background jobs, and a child inherits that: Python then never raises KeyboardInterrupt, the
    # sweep runs to its end and exits 0. Ctrl-C reaches a foreground program: give the child that.
    proc = subprocess.Popen(
        cmd,
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if line.startswith(prefix):
            break
    proc.send_signal(signal.SIGINT)
    _, rest = proc.communicate(timeout=60)
    return proc.returncode, "".join(seen) + rest


def test_ctrl_c_exits_130_and_the_rerun_resumes(tmp_path: Path):
    """SIGINT in the middle of a sweep: exit 130, the finished configurations are kept and resumed."""
    out = tmp_path / "eval"
    cmd = [sys.executable, "-m", "chronoserve", "eval", "--models", "none", "--series", "dongsi"]
    cmd += ["--context-days", "2,4,8", "--horizons", "4,8,12,24,48", "--max-windows", "40", "--no-plots"]
    cmd += ["--out", str(out)]
    # naive's 15 configurations run first, then seasonal naive's, then AutoTheta's (slow)
    code, err = _interrupt_after(cmd, "[16/")
    assert code == 130, err
    assert "Traceback" not in err
    saved = list((out / "configs").glob("*.json"))
    assert 16 <= len(saved) < 45, err
    assert not list((out / "configs").glob(".*"))
    code, err = _interrupt_after(cmd, "resuming:")
    assert f"resuming: {len(saved)} of 45 configurations already done in {out}; skipping them" in err
    assert code == 130


@pytest.mark.torch
def test_perf_with_a_tiny_budget_writes_both_csvs_and_the_plots(tmp_path: Path, capsys):
    pytest.importorskip("chronos")
    pytest.importorskip("psutil")
    out = tmp_path / "perf"
    args = ["eval", "--perf", "--budget", "0.3s", "--interval", "0.1s", "--models", TINY_C2, "--series", "dongsi"]
    args += ["--context-days", "1", "--horizons", "4,24", "--max-windows", "4", "--workers", "1", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "random weights" in printed and "fc/s" in printed
    batches = read_csv(out / "batches.csv")
    assert list(batches[0])[:8] == ["time_s", "series", "model", "context_hours", "horizon_hours", "latency_s",
                                    "batch_size", "stride"]  # fmt: skip
    measured = [b for b in batches if b["phase"] == "measure"]
    assert {b["horizon_hours"] for b in measured} == {"4", "24"}
    assert all(b["model"] == TINY_C2 and b["series"] == "dongsi" and b["stride"] == "4" for b in measured)
    assert all(float(b["latency_s"]) > 0 and int(b["batch_size"]) >= 1 for b in measured)
    assert [b["phase"] for b in batches][0] == "warmup"
    stats = read_csv(out / "system_stats.csv")
    assert stats and all(s["proc_rss_bytes"] and int(s["proc_rss_bytes"]) > 0 for s in stats)
    summary = read_csv(out / "perf_summary.csv")
    assert [(r["context_hours"], r["horizon_hours"]) for r in summary] == [("24", "4"), ("24", "24")]
    assert all(int(r["forecasts"]) > 0 for r in summary)
    for name in ("perf_over_time.png", "perf_per_model.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
