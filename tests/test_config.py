"""``serve``'s configuration: a TOML file, ``CHRONOSERVE_*`` variables and the command line, in that
order of precedence, checked as the command line checks, and ``--print-config`` saying where each
setting came from (a file that reads back the same)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from chronoserve import cli
from chronoserve._cli_common import UsageError
from chronoserve._serve_options import serve_parser, serve_settings
from chronoserve.config import resolve

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib


def effective(argv: list[str], environ: dict[str, str] | None = None) -> Any:
    """The configuration ``serve`` would run with, given ``argv`` (after ``serve``) and ``environ``."""
    parser = serve_parser()
    return resolve(parser, parser.parse_args(argv), argv, environ or {})


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "serve.toml"
    path.write_text(text)
    return str(path)


def test_the_command_line_wins_then_the_environment_then_the_file_then_the_default(tmp_path: Path) -> None:
    config = write(tmp_path, "max-queue = 10\ndrain_timeout = 7.5\nport = 9001\n")
    env = {"CHRONOSERVE_MAX_QUEUE": "20", "CHRONOSERVE_DRAIN_TIMEOUT": "9"}
    got = effective(["--config", config, "--max-queue", "30"], env)
    assert got.values["max_queue"] == 30 and got.sources["max_queue"] == "command line"
    assert got.values["drain_timeout"] == 9.0 and got.sources["drain_timeout"] == "CHRONOSERVE_DRAIN_TIMEOUT"
    assert got.values["port"] == 9001 and got.sources["port"] == config
    assert got.values["max_body_bytes"] == 1 << 20 and got.sources["max_body_bytes"] == "default"
    # the same value on the command line as the default is still the command line's
    assert effective(["--port", "8000"], {"CHRONOSERVE_PORT": "9"}).values["port"] == 8000
    # the file may also be named by CHRONOSERVE_CONFIG
    assert effective([], {"CHRONOSERVE_CONFIG": config}).values["max_queue"] == 10


def test_switches_lists_and_tables(tmp_path: Path) -> None:
    config = write(tmp_path, '[serve]\nno-warmup = true\nmodels = ["chronos-2-pm25", "random/chronos-2"]\n')
    got = effective(["--config", config])
    assert got.values["no_warmup"] is True and got.values["models"] == "chronos-2-pm25,random/chronos-2"
    assert effective(["--config", config], {"CHRONOSERVE_NO_WARMUP": "off"}).values["no_warmup"] is False
    hub = effective([], {"CHRONOSERVE_ALLOW_HUB": "amazon/chronos-2"})
    settings = serve_settings(hub.namespace())
    assert settings.engine.allow_hub == ("amazon/chronos-2",)


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        ("max-queu = 3\n", {}, "max-queu is not a serve option (did you mean max-queue?)"),
        ("max-queue = 0\n", {}, "serve.toml: max-queue: "),
        ("max-queue = true\n", {}, "max-queue: expected a value, not true"),
        ("no-warmup = 1\n", {}, "no-warmup: expected true or false"),
        ("policy = [1, {a = 1}]\n", {}, "expected a list of names or numbers"),
        ("[serve\n", {}, "is not valid TOML"),
        ("port = 1\n[serve]\nport = 2\n", {}, "port is set both at the top level and in [serve]"),
        ("", {"CHRONOSERVE_MAX_QUEUE": "lots"}, "CHRONOSERVE_MAX_QUEUE: "),
        ("", {"CHRONOSERVE_LOG_FORMAT": "xml"}, "CHRONOSERVE_LOG_FORMAT: invalid choice: 'xml'"),
        ("", {"CHRONOSERVE_RAY": "maybe"}, "CHRONOSERVE_RAY: expected true or false, got 'maybe'"),
    ],
)
def test_bad_settings_are_refused_naming_where_they_came_from(
    tmp_path: Path, text: str, env: dict[str, str], message: str
) -> None:
    with pytest.raises(UsageError) as refused:
        effective(["--config", write(tmp_path, text)], env)
    assert message in str(refused.value)


def test_a_missing_file_is_a_usage_error_with_exit_status_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["serve", "--config", str(tmp_path / "nope.toml"), "--print-config"]) == 2
    assert "--config: no such file" in capsys.readouterr().err


def test_print_config_says_where_each_setting_came_from_and_reads_back(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write(tmp_path, "max-queue = 10\nmodels = ['chronos-2-pm25']\n")
    monkeypatch.setenv("CHRONOSERVE_DRAIN_TIMEOUT", "12")
    monkeypatch.setenv("CHRONOSERVE_NO_SUCH_OPTION", "1")
    assert cli.main(["serve", "--config", config, "--port", "8123", "--print-config"]) == 0
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    assert "max-queue = 10  # " + config in lines
    assert "drain-timeout = 12.0  # CHRONOSERVE_DRAIN_TIMEOUT" in lines
    assert "port = 8123  # command line" in lines
    assert 'host = "127.0.0.1"  # default' in lines
    assert "# ignored: CHRONOSERVE_NO_SUCH_OPTION is not a serve option" in lines
    # what it prints is a config file that gives the same settings back
    again = tmp_path / "again.toml"
    again.write_text(printed)
    monkeypatch.delenv("CHRONOSERVE_DRAIN_TIMEOUT")
    first = effective(["--config", config, "--port", "8123"], {"CHRONOSERVE_DRAIN_TIMEOUT": "12"}).values
    second = effective(["--config", str(again)]).values
    assert {k: v for k, v in second.items() if k != "config"} == {k: v for k, v in first.items() if k != "config"}
    assert tomllib.loads(printed)["max-queue"] == 10
