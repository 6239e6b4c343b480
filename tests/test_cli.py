"""The command line, in-process: exit codes and messages for good and bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from chronoserve.cli import main

TINY = "random/tiny-chronos-bolt"


def test_help_is_fast_and_does_not_import_torch():
    code = (
        "import sys; from chronoserve.cli import build_parser; build_parser(); "
        "heavy = [m for m in ('torch', 'transformers', 'matplotlib', 'hdrh', 'pandas') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0


def test_no_command_prints_usage_and_fails(capsys):
    assert main([]) == 2
    assert "usage" in capsys.readouterr().err


def test_policies_lists_the_builtins_with_their_options(capsys):
    assert main(["policies"]) == 0
    out = capsys.readouterr().out
    assert "batched" in out and "max_batch=32" in out and "naive" in out and "max_resident=3" in out


@pytest.mark.torch
def test_forecast_from_values_as_json(capsys):
    code = main(
        [
            "forecast",
            "--values",
            ",".join(str(i % 7) for i in range(64)),
            "--model",
            TINY,
            "--horizon",
            "5",
            "--quantiles",
            "0.1,0.5,0.9",
            "--json",
            "--policy",
            "lru",
        ]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result["median"]) == 5
    assert result["random_weights"] is True
    assert result["policy"] == "lru"
    assert set(result["quantiles"]) == {"0.1", "0.5", "0.9"}


@pytest.mark.torch
def test_forecast_from_csv_with_gaps_prints_the_times_it_forecasts(tmp_path, capsys):
    path = tmp_path / "s.csv"
    rows = "".join(f"2024-01-{1 + i // 24:02d}T{i % 24:02d}:00Z,{'' if i % 10 == 3 else i}\n" for i in range(60))
    path.write_text("timestamp,pm25\n" + rows)
    assert main(["forecast", "--csv", str(path), "--model", TINY, "--horizon", "3"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0].startswith("time\tmedian") and len(lines) == 4
    # the last row is 2024-01-03 11:00 UTC: the forecast's hours follow it
    assert [line.split("\t")[0] for line in lines[1:]] == [f"2024-01-03T{h}:00:00" for h in (12, 13, 14)]
    assert "RANDOM weights" in captured.err


def test_forecast_from_a_column_without_timestamps_prints_steps(tmp_path, capsys):
    path = tmp_path / "s.csv"
    path.write_text("level;other\n" + "".join(f"{i};x\n" for i in range(40)))  # a semicolon CSV
    assert main(["forecast", "--csv", str(path), "--column", "level", "--model", TINY, "--horizon", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("step\tmedian") and [line.split("\t")[0] for line in lines[1:]] == ["1", "2"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["forecast", "--values", "1,2,3", "--model", TINY, "--horizon", "65"], "horizon"),
        (["forecast", "--values", "1,x,3", "--model", TINY], "--values"),
        (["forecast", "--values", "1,2,3", "--model", "no/such-model"], "unknown model"),
        (
            ["forecast", "--values", "1,2,3", "--model", "amazon/chronos-bolt-small"],
            "--model: model 'chronos-bolt-small' is",
        ),
        (["forecast", "--csv", "/nonexistent.csv"], "no such file"),
        (["forecast", "--values", "1,2,3", "--policy", "nope"], "unknown policy 'nope'"),
        (["forecast", "--values", "1,2,3", "--policy", "lru", "--max-batch", "4"], "max_batch"),
        (["serve", "--policy", "nope"], "unknown policy 'nope'"),
        (["serve", "--data", "/nonexistent-dir"], "--data: no such file or directory"),
        (["serve", "--ray", "--engines", "2"], "--ray: replicas take the place of --http-workers and --engines"),
        (["serve", "--ray-proxy"], "--ray-proxy needs --ray"),
        (["serve", "--ray-address", "auto"], "--ray-address needs --ray"),
    ],
)
def test_bad_input_is_a_message_and_a_nonzero_exit_not_a_traceback(argv, message, capsys):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["serve", "--ray", "--autoscale", "4:1"], "argument --autoscale: expected MIN:MAX replicas"),
        (["serve", "--ray", "--replicas", "2", "--autoscale", "1:2"], "not allowed with argument --replicas"),
    ],
)
def test_bad_ray_options_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_serve_refuses_a_data_dir_with_bad_csvs(tmp_path, capsys):
    (tmp_path / "x.csv").write_text("when,pm25\n1,2\n")
    assert main(["serve", "--data", str(tmp_path)]) == 2
    assert "x.csv" in capsys.readouterr().err


def test_bad_flag_value_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["forecast", "--values", "1,2", "--horizon", "0"])
    assert info.value.code == 2
    assert "--horizon" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--default-model", "nosuch-model"], "--default-model: unknown model 'nosuch-model'"),
        (["--models", "random/chronos-bolt-tiny,random/nosuch"], "--models: unknown model 'random/nosuch'"),
        (["--default-model", "x" * 300], "--default-model: is 300 characters long"),
    ],
)
def test_serve_refuses_model_names_it_cannot_serve_before_binding_a_port(argv, message, capsys):
    assert main(["serve", "--port", "1", *argv]) == 2  # port 1 would fail to bind: it is never reached
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--max-covariates", "-1"),
        ("--max-request-gflop", "0"),
        ("--max-inference-seconds", "nan"),
        ("--header-timeout", "0"),
        ("--body-timeout", "-5"),
        ("--max-connections", "0"),
        ("--drain-timeout", "inf"),
    ],
)
def test_serve_limit_options_refuse_nonsense(flag, value, capsys):
    with pytest.raises(SystemExit) as info:
        main(["serve", flag, value])
    assert info.value.code == 2
    assert flag in capsys.readouterr().err
