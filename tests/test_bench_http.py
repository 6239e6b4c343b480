"""bench/http.py: wrk's output parsed (real samples), the body and the Lua script, ratios and goals, one short run."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import benches
import pytest

bench = benches.load_bench("http")

# -- real wrk 4.1 outputs (Debian's wrk 4.1.0), captured on this project's 2-core machine ------------

#: chronoserve serve, bench/http.py's post.lua: the text and its exact done() line.
CHRONOSERVE_C64 = """\
Running 2s test @ http://127.0.0.1:53761/forecast
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    74.28ms   59.83ms 340.45ms   91.03%
    Req/Sec     1.06k   461.55     1.91k    66.67%
  Latency Distribution
     50%   57.86ms
     75%   77.52ms
     90%  123.82ms
     99%  324.18ms
  1979 requests in 2.00s, 4.41MB read
Requests/sec:    987.45
Transfer/sec:      2.20MB
WRK_SUMMARY {"requests": 1979, "duration_us": 2004156, "bytes": 4620293, "connect": 0, "read": 0, "write": 0, \
"status": 0, "timeout": 0, "latency_us": {"min": 16120, "max": 340451, "mean": 74282.364305427778, \
"stdev": 59828.677591346233, "p50": 57863, "p75": 77518, "p90": 123824, "p99": 324184, "p99.9": 336829, \
"p99.99": 340451}}
"""

#: A server answering 500 to everything: wrk counts the answers and reports them as non-2xx.
NON_2XX = """\
Running 1s test @ http://127.0.0.1:18082/
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    42.25ms    8.22ms  44.11ms   96.04%
    Req/Sec    92.09     18.80   121.00     72.73%
  Latency Distribution
     50%   43.98ms
     75%   44.00ms
     90%   44.02ms
     99%   44.09ms
  101 requests in 1.10s, 14.62KB read
  Non-2xx or 3xx responses: 101
Requests/sec:     91.85
Transfer/sec:     13.29KB
WRK_SUMMARY {"requests": 101, "duration_us": 1099627, "bytes": 14967, "connect": 0, "read": 0, "write": 0, \
"status": 101, "timeout": 0, "latency_us": {"min": 1011, "max": 44106, "mean": 42249.990099009898, \
"stdev": 8224.9239941716787, "p50": 43980, "p75": 44002, "p90": 44022, "p99": 44093, "p99.9": 44106, \
"p99.99": 44106}}
"""

#: Answers slower than ``--timeout 1s``: counted as timeouts, their latencies not recorded (text only).
TIMEOUTS = """\
Running 3s test @ http://127.0.0.1:18083/
  1 threads and 8 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     0.00us    0.00us   0.00us    -nan%
    Req/Sec     7.67     10.69    20.00     66.67%
  Latency Distribution
     50%    0.00us
     75%    0.00us
     90%    0.00us
     99%    0.00us
  8 requests in 3.00s, 1.62KB read
  Socket errors: connect 0, read 0, write 0, timeout 8
Requests/sec:      2.66
Transfer/sec:     553.77B
"""

#: The same with post.lua: the empty histogram's min is UINT64_MAX.
TIMEOUTS_LUA = """\
Running 2s test @ http://127.0.0.1:18083/
  1 threads and 8 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     0.00us    0.00us   0.00us    -nan%
    Req/Sec    11.00     12.73    20.00    100.00%
  Latency Distribution
     50%    0.00us
     75%    0.00us
     90%    0.00us
     99%    0.00us
  6 requests in 2.00s, 744.00B read
  Socket errors: connect 0, read 0, write 0, timeout 6
Requests/sec:      2.99
Transfer/sec:     371.27B
WRK_SUMMARY {"requests": 6, "duration_us": 2003950, "bytes": 744, "connect": 0, "read": 0, "write": 0, \
"status": 0, "timeout": 6, "latency_us": {"min": 1.8446744073709552e+19, "max": 0, "mean": 0, "stdev": 0, \
"p50": 0, "p75": 0, "p90": 0, "p99": 0, "p99.9": 0, "p99.99": 0}}
"""

#: Seconds as the unit (1.5 s answers), text only.
SLOW = """\
Running 3s test @ http://127.0.0.1:18083/
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.50s     2.95ms   1.51s    50.00%
    Req/Sec    15.00     21.21    30.00    100.00%
  Latency Distribution
     50%    1.50s 
     75%    1.51s 
     90%    1.51s 
     99%    1.51s 
  4 requests in 3.00s, 608.00B read
Requests/sec:      1.33
Transfer/sec:     202.37B
"""

#: Microseconds and k suffixes (a bare asyncio server), text only.
FAST = """\
Running 2s test @ http://127.0.0.1:18084/
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   199.66us  124.57us   3.76ms   99.00%
    Req/Sec    83.01k     1.48k   84.76k    76.19%
  Latency Distribution
     50%  189.00us
     75%  192.00us
     90%  199.00us
     99%  300.00us
  173403 requests in 2.10s, 6.61MB read
Requests/sec:  82576.44
Transfer/sec:      3.15MB
"""

REFUSED = "unable to connect to 127.0.0.1:18099 Connection refused\n"

#: Edited from a real output (the fields wrk prints when a server drops connections and a run lasts minutes).
SOCKET_ERRORS = """\
Running 1m test @ http://127.0.0.1:8000/forecast
  1 threads and 256 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.02s   210.31ms   2.01m    71.00%
    Req/Sec   301.12    80.00     1.20k    70.00%
  Latency Distribution
     50%    1.00s
     75%    1.10s
     90%    1.30s
     99%    1.90s
  18042 requests in 1.00m, 40.12MB read
  Socket errors: connect 12, read 3, write 1, timeout 5
  Non-2xx or 3xx responses: 7
Requests/sec:    300.70
Transfer/sec:    684.77KB
"""


# -- units -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("199.66us", 199.66e-6), ("43.97ms", 0.04397), ("1.50s", 1.5), ("1.00m", 60.0), ("2.00h", 7200.0),
     ("0.00us", 0.0), (" 1.50s ", 1.5)],
)  # fmt: skip
def test_times_in_every_unit(text, seconds):
    assert bench.parse_time(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("text", "value"), [("92.00", 92.0), ("83.01k", 83010.0), ("1.20M", 1.2e6), ("461.55", 461.55)]
)
def test_counts_with_metric_suffixes(text, value):
    assert bench.parse_metric(text) == pytest.approx(value)


@pytest.mark.parametrize(
    ("text", "value"), [("608.00B", 608.0), ("26.21KB", 26.21 * 1024), ("6.61MB", 6.61 * 2**20), ("1.00GB", 2**30)]
)
def test_byte_counts_are_binary(text, value):
    assert bench.parse_bytes(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["", "12", "1.5 sec", "nan", "-nan%", "3ns"])
def test_a_time_that_is_not_one_is_refused(text):
    with pytest.raises(ValueError, match="not a wrk duration"):
        bench.parse_time(text)


# -- wrk's output ------------------------------------------------------------------------------------


def test_exact_numbers_come_from_the_lua_summary_line():
    r = bench.parse_wrk(CHRONOSERVE_C64)
    assert r.exact
    assert (r.threads, r.connections) == (1, 64)
    assert r.requests == 1979 and r.seconds == pytest.approx(2.004156)
    assert r.requests_per_s == pytest.approx(1979 / 2.004156)
    assert r.percentile(50) == pytest.approx(0.057863) and r.percentile(99) == pytest.approx(0.324184)
    assert r.percentile(99.9) == pytest.approx(0.336829) and r.percentile(75) == pytest.approx(0.077518)
    assert r.latency_max == pytest.approx(0.340451) and r.latency_mean == pytest.approx(0.0742824, rel=1e-6)
    assert r.errors == 0 and r.error_text() == "none"
    assert r.ok_per_s == pytest.approx(r.requests_per_s)
    assert r.bytes_read == 4620293


def test_the_text_alone_gives_the_same_numbers_rounded():
    text_only = CHRONOSERVE_C64.split("WRK_SUMMARY")[0]
    r = bench.parse_wrk(text_only)
    exact = bench.parse_wrk(CHRONOSERVE_C64)
    assert not r.exact
    assert r.requests == 1979 and r.seconds == 2.0 and r.requests_per_s == 987.45
    for q in (50, 75, 90, 99):
        assert r.percentile(q) == pytest.approx(exact.percentile(q), abs=1e-5)
    assert r.percentile(99.9) is None  # only the summary line has it
    assert r.latency_mean == pytest.approx(0.07428) and r.latency_stdev == pytest.approx(0.05983)
    assert r.bytes_read == pytest.approx(4.41 * 2**20)


@pytest.mark.parametrize("text", [NON_2XX, NON_2XX.split("WRK_SUMMARY")[0]])
def test_non_2xx_answers_are_errors_and_not_throughput(text):
    r = bench.parse_wrk(text)
    assert r.requests == 101 and r.non2xx == 101
    assert r.errors == 101 and r.socket_errors == 0
    assert r.ok_per_s == 0.0 and r.requests_per_s > 90
    assert r.error_text() == "non-2xx 101"
    point = bench.Point.from_wrk(4, r)
    assert point.per_s == 0.0 and point.errors == 101


@pytest.mark.parametrize("text", [TIMEOUTS, TIMEOUTS_LUA])
def test_timeouts_are_errors_and_an_empty_histogram_gives_no_percentiles(text):
    r = bench.parse_wrk(text)
    assert r.timeouts in (6, 8) and r.errors == r.timeouts
    assert r.error_text() == f"timeout {r.timeouts}"
    assert r.percentiles == {} and r.percentile(99) is None
    assert r.latency_max is None and r.latency_mean is None
    assert bench.Point.from_wrk(8, r).p99 is None


def test_seconds_microseconds_and_k_suffixes():
    slow, fast = bench.parse_wrk(SLOW), bench.parse_wrk(FAST)
    assert slow.percentile(50) == 1.5 and slow.percentile(99) == 1.51 and slow.latency_max == 1.51
    assert slow.requests == 4 and slow.requests_per_s == 1.33 and slow.bytes_read == 608.0
    assert fast.percentile(50) == pytest.approx(189e-6) and fast.latency_max == pytest.approx(3.76e-3)
    assert fast.requests == 173403 and fast.seconds == 2.1 and fast.requests_per_s == 82576.44
    assert fast.connections == 16


def test_every_kind_of_socket_error_and_minutes():
    r = bench.parse_wrk(SOCKET_ERRORS)
    assert (r.connect_errors, r.read_errors, r.write_errors, r.timeouts, r.non2xx) == (12, 3, 1, 5, 7)
    assert r.errors == 28 and r.error_text() == "connect 12, read 3, write 1, timeout 5, non-2xx 7"
    assert r.seconds == 60.0 and r.latency_max == pytest.approx(120.6)
    assert r.ok_per_s == pytest.approx((18042 - 7) / 60)
    assert r.to_dict()["percentiles"] == {"50": 1.0, "75": 1.1, "90": 1.3, "99": 1.9}


@pytest.mark.parametrize("text", [REFUSED, "", "Usage: wrk <options> <url>\n"])
def test_no_result_is_an_error_naming_what_wrk_said(text):
    with pytest.raises(bench.WrkOutputError, match="no result in wrk's output"):
        bench.parse_wrk(text)
    if text:
        with pytest.raises(bench.WrkOutputError, match=text.split()[0]):
            bench.parse_wrk(text)


def test_a_broken_summary_line_falls_back_to_the_text():
    broken = CHRONOSERVE_C64.replace('"p99.99": 340451}}', '"p99.99": ')
    r = bench.parse_wrk(broken)
    assert not r.exact and r.requests_per_s == 987.45


# -- the body, the script, the command ------------------------------------------------------------


def test_the_body_is_a_valid_forecast_request_for_the_server():
    from chronoserve.server.schemas import ForecastIn

    context = [float(v) for v in range(240)]
    body = bench.make_body("random/chronos-bolt-tiny", context)
    item = ForecastIn.model_validate_json(body)  # the server's own strict parse
    assert item.model_name == "random/chronos-bolt-tiny"
    assert item.target == context and item.horizon_hours == 24
    assert list(item.quantile_levels) == [0.1, 0.5, 0.9]
    assert b" " not in body  # compact


def test_the_context_is_the_newest_complete_window():
    nan = math.nan
    assert bench.last_complete_window([1, 2, 3, nan, 4, 5, 6, 7, nan, 8], 3) == [5.0, 6.0, 7.0]
    assert bench.last_complete_window([1, 2, 3], 3) == [1.0, 2.0, 3.0]
    assert bench.last_complete_window([1, None, 2, 3], 2) == [2.0, 3.0]
    with pytest.raises(ValueError, match="no 3 consecutive"):
        bench.last_complete_window([1, 2, nan, 3], 3)


def test_the_embedded_series_has_a_real_240_point_context():
    from chronoserve.data import SeriesStore

    values = SeriesStore.embedded().values(bench.DEFAULT_SERIES).tolist()
    context = bench.last_complete_window(values, bench.CONTEXT_POINTS)
    assert len(context) == 240 and all(math.isfinite(v) and v >= 0 for v in context)
    assert len(set(context)) > 20  # real readings, not a constant


def test_the_lua_script_posts_the_body_verbatim():
    body = bench.make_body("random/chronos-bolt-tiny", [1.0, 2.5])
    script = bench.lua_script(body)
    assert 'wrk.method = "POST"' in script
    assert 'wrk.headers["Content-Type"] = "application/json"' in script
    assert f"wrk.body = [[{body.decode()}]]" in script
    assert "function done(summary, latency, requests)" in script
    assert 'io.write("WRK_SUMMARY {"' in script
    for key in ("duration_us", "status", "timeout", "latency_us", "percentile(q)"):
        assert key in script


@pytest.mark.parametrize(
    ("text", "literal"),
    [
        ('{"a": 1}', '[[{"a": 1}]]'),
        ('{"a": [[1]]}', '[=[{"a": [[1]]}]=]'),
        ("x]]y]=]z", "[==[x]]y]=]z]==]"),
        ("\nstarts with a newline", "[[\n\nstarts with a newline]]"),
    ],
)
def test_lua_long_strings_pick_a_level_the_text_lacks(text, literal):
    assert bench.lua_long_string(text) == literal


def test_the_wrk_command_line():
    cmd = bench.wrk_command("http://127.0.0.1:1/forecast", 64, 20, Path("/tmp/post.lua"), 30)
    assert cmd == [
        "wrk", "-t1", "-c64", "-d20s", "--latency", "--timeout", "30s", "-s", "/tmp/post.lua",
        "http://127.0.0.1:1/forecast",
    ]  # fmt: skip


# -- configurations --------------------------------------------------------------------------------


def test_chronoserve_configurations_parse():
    configs = bench.parse_configs(bench.DEFAULT_CONFIGS)
    assert configs == [
        ("torch", ["--backend", "torch"]),
        ("1fe", ["--http-workers", "1"]),
        ("2fe", ["--http-workers", "2"]),
        ("2fe-torch", ["--http-workers", "2", "--backend", "torch"]),
    ]
    assert bench.parse_configs("") == []
    assert bench.parse_configs(" q=--log-level 'warning' ,") == [("q", ["--log-level", "warning"])]
    for bad in ("--backend onnx", "=--x", "a b=--x"):
        with pytest.raises(ValueError, match="expected LABEL=flags"):
            bench.parse_configs(bad)
    with pytest.raises(ValueError, match="given twice"):
        bench.parse_configs("a=--x,a=--y")


SERVE_HELP = """\
usage: chronoserve serve [-h] [--host HOST] [--port PORT] [--max-queue MAX_QUEUE]
  --max-batch MAX_BATCH
                        batched: B, requests per batch, or auto (--slo-p95-ms)
  --workers WORKERS     inference threads (default: 2)
"""


def test_flags_that_serve_does_not_list_are_found():
    listed = bench.listed_flags(SERVE_HELP)
    assert {"--host", "--port", "--max-queue", "--max-batch", "--slo-p95-ms", "--workers"} <= listed
    assert "--backend" not in listed and "-h" not in listed
    assert bench.unlisted_flags(["--workers", "2", "--backend=onnx", "--http-workers", "2"], listed) == [
        "--backend",
        "--http-workers",
    ]
    assert bench.flag_value(["--backend", "onnx"], "--backend", "torch") == "onnx"
    assert bench.flag_value(["--backend=onnx", "--backend", "x"], "--backend", "torch") == "x"
    assert bench.flag_value(["--http-workers", "2"], "--backend", "torch") == "torch"


#: Variants on both backends (serve's own is onnx: bench.SERVE_BACKEND).
CONFIGS = "torch=--backend torch,2fe=--http-workers 2,2fe-torch=--http-workers 2 --backend torch"


def plan(help_text: str, takes_backend: bool, configs: str = CONFIGS) -> dict[str, object]:
    args = bench.argparse.Namespace(
        model="random/chronos-bolt-tiny",
        max_batch=32,
        max_wait_ms=10.0,
        chronoserve_configs=bench.parse_configs(configs),
        litserve_backend="auto",
    )
    return {s.name: s for s in bench.plan(args, 2, 1, help_text, takes_backend)}


def test_the_plan_skips_what_cannot_run_here_with_the_reason():
    systems = plan(SERVE_HELP, takes_backend=False)
    cores = bench.os.cpu_count()
    assert bench.SERVE_BACKEND == "onnx"
    assert list(systems) == [
        "raw", "raw-onnx", "in-process-onnx", "in-process", "chronoserve", "chronoserve-torch", "chronoserve-2fe",
        "chronoserve-2fe-torch", f"litserve-1x{cores}", f"litserve-2x{max(1, cores // 2)}",
        f"litserve-cs-1x{cores}", f"litserve-cs-2x{max(1, cores // 2)}",
    ]  # fmt: skip
    assert systems["chronoserve"].skipped is None
    assert systems["chronoserve"].config == (
        "chronoserve serve --models random/chronos-bolt-tiny --default-model random/chronos-bolt-tiny"
    )
    assert "--max-batch" not in systems["chronoserve"].cmd  # serve's defaults: no tuning flags
    assert "does not list --backend" in systems["chronoserve-torch"].skipped
    assert "does not list --http-workers" in systems["chronoserve-2fe"].skipped
    assert "does not list --http-workers, --backend" in systems["chronoserve-2fe-torch"].skipped
    assert "no backend=" in systems["raw-onnx"].skipped
    lit = systems[f"litserve-1x{cores}"]
    assert lit.cmd[-2:] == ["--mode", "upstream"] and "--torch-threads" not in lit.cmd  # as it comes
    assert systems[f"litserve-2x{max(1, cores // 2)}"].cmd[-4:-2] == ["--torch-threads", str(max(1, cores // 2))]
    assert lit.ready_path == "/health" and systems["chronoserve"].ready_path == "/readyz"


def test_the_plan_runs_the_variants_once_serve_and_the_loader_have_them():
    help_text = SERVE_HELP + "  --backend BACKEND\n  --http-workers N\n"
    systems = plan(help_text, takes_backend=True)
    assert all(systems[n].skipped is None for n in ("raw-onnx", "chronoserve-torch", "chronoserve-2fe-torch"))
    assert systems["chronoserve-2fe-torch"].backend == "torch" and systems["chronoserve-2fe"].backend == "onnx"
    assert systems["chronoserve"].backend == "onnx"  # serve's own default
    assert systems["chronoserve-torch"].cmd[-2:] == ["--backend", "torch"]
    assert list(plan(help_text, True, configs="")) == [
        "raw", "raw-onnx", "in-process-onnx", "chronoserve", *(n for n in systems if n.startswith("litserve"))
    ]  # fmt: skip


def test_the_fastest_raw_backend_goes_into_litserve():
    systems = [
        bench.System("raw", "raw", "raw", "torch", "", raw={"per_second": 800.0}),
        bench.System("raw-onnx", "raw", "raw", "onnx", "", raw={"per_second": 1200.0}),
    ]
    assert bench.choose_litserve_backend("auto", systems) == "onnx"
    assert bench.choose_litserve_backend("torch", systems) == "torch"
    assert bench.choose_litserve_backend("auto", []) == "torch"


# -- ratios and goals ------------------------------------------------------------------------------


def point(per_s: float, p99: float | None = 0.1, errors: int = 0, c: int = 64) -> object:
    return bench.Point(c, per_s, p50=p99 / 2 if p99 else None, p99=p99, errors=errors, seconds=10.0)


def test_ratios():
    assert bench.ratio(3.0, 2.0) == 1.5
    assert bench.ratio(None, 2.0) is None and bench.ratio(1.0, None) is None and bench.ratio(1.0, 0.0) is None
    assert bench.ratio(math.nan, 1.0) is None


def test_the_best_litserve_is_the_fastest_without_errors():
    best = bench.best_of({"a": point(300.0), "b": point(400.0, errors=3), "c": point(350.0), "d": None})
    assert best is not None and best[0] == "c"
    assert bench.best_of({"b": point(400.0, errors=3), "e": point(100.0, errors=1)})[0] == "b"
    assert bench.best_of({"d": None}) is None


def test_goals_met():
    found = bench.goals(
        {64: point(500.0, p99=0.2)},
        {"litserve-1x2": {64: point(200.0, p99=0.5)}, "litserve-2x1": {64: point(250.0, p99=0.3)}},
        {64: point(550.0)},
        [64],
        answer_ok=True,
    )
    by = {g.what: g for g in found}
    assert set(by) == {"throughput vs best LitServe", "p99 vs best LitServe", "HTTP vs in-process", "same answers"}
    assert all(g.met for g in found)
    assert by["throughput vs best LitServe"].value == 2.0
    assert "litserve-2x1 250.0" in by["throughput vs best LitServe"].text
    assert by["p99 vs best LitServe"].value == pytest.approx(0.2 / 0.3)
    assert by["HTTP vs in-process"].value == pytest.approx(500 / 550)
    assert "met" in by["HTTP vs in-process"].text and "NOT" not in by["HTTP vs in-process"].text


def test_goals_not_met_say_so_with_the_numbers():
    found = bench.goals(
        {8: point(300.0, p99=0.6, c=8), 64: point(440.0, c=64, errors=2)},
        {"litserve-2x1": {8: point(200.0, p99=0.5, c=8), 64: point(200.0, c=64)}},
        {8: point(400.0, c=8)},
        [8, 64, 256],
        answer_ok=False,
    )
    texts = [g.text for g in found if not g.met]
    assert any("-c8: chronoserve 300.0 req/s vs litserve-2x1 200.0 = 1.50x, goal >= 1.8x: NOT MET" in t for t in texts)
    assert any("-c8: chronoserve p99 600 ms vs litserve-2x1 p99 500 ms" in t for t in texts)
    assert any("-c8: over HTTP 300.0 req/s vs in-process 400.0 = 0.75x" in t for t in texts)
    # 2.2x at -c64, but with errors: not met, and said why
    c64 = next(g for g in found if g.connections == 64 and g.what == "throughput vs best LitServe")
    assert c64.value == pytest.approx(2.2) and not c64.met and "had errors" in c64.text
    assert not any(g.connections == 256 for g in found)  # nothing measured there
    assert not next(g for g in found if g.what == "same answers").met


def test_relative_difference():
    assert bench.relative_difference([1.0, 2.0], [1.0, 2.0]) == 0.0
    assert bench.relative_difference([1.0, 2.1], [1.0, 2.0]) == pytest.approx(0.05)
    assert bench.relative_difference([1.0], [1.0, 2.0]) == math.inf
    assert bench.relative_difference([None, 1.0], [1.0, 1.0]) == math.inf
    assert bench.relative_difference([0.5, 0.0], [0.0, 0.0]) == 0.5  # all-zero reference: the absolute difference


def test_the_table_and_csv_rows():
    systems = [
        bench.System("raw", "raw", "raw", "torch", "", raw={"per_second": 1000.0}),
        bench.System("in-process", "in-process", "in-process", "torch", "", points={64: point(600.0)}),
        bench.System("chronoserve", "http", "chronoserve", "torch", "", points={64: point(500.0)}),
        bench.System("litserve-2x1", "http", "litserve", "upstream", "", points={64: point(250.0, errors=4)}),
        bench.System("chronoserve-onnx", "http", "chronoserve-configs", "onnx", "", skipped="no flag"),
    ]
    systems[0].points = {64: bench.Point(64, 1000.0)}
    systems[3].points[64].error_text = "non-2xx 4"
    lines = bench.format_table(systems, 64, "litserve-2x1")
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(rows) == {"raw", "in-process", "chronoserve", "litserve-2x1"}  # skipped ones are not rows
    assert rows["chronoserve"][1] == "500.0" and rows["chronoserve"][5] == "2.00" and rows["chronoserve"][6] == "0.83"
    assert rows["litserve-2x1"][1] == "!" and lines[-1].endswith("non-2xx 4")  # flagged
    csv_rows = bench.csv_rows(systems, [64], {64: "litserve-2x1"})
    by = {r["system"]: r for r in csv_rows}
    assert by["chronoserve"]["ratio_best_litserve"] == 2.0 and by["chronoserve"]["ratio_in_process"] == 0.8333
    assert by["litserve-2x1"]["ratio_in_process"] == pytest.approx(250 / 600, abs=1e-4)  # upstream: vs torch
    assert by["raw"]["requests_per_s"] == 1000.0 and by["chronoserve"]["p99_ms"] == 100.0
    assert set(csv_rows[0]) == set(bench.CSV_FIELDS)


def test_bench_http_does_not_hide_the_standard_library_http_from_other_bench_scripts():
    """``python bench/X.py`` puts bench/ first on sys.path, where http.py would shadow ``http``."""
    code = "import sys; sys.path.insert(0, 'bench'); import http.client, httpx; print(http.client.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=benches.ROOT, capture_output=True, text=True, check=True)
    assert "bench" not in Path(out.stdout.strip()).parts


# -- one short run -----------------------------------------------------------------------------------


@pytest.mark.torch
@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (apt-get install wrk)")
def test_a_short_run_of_raw_in_process_and_chronoserve(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("torch")
    argv = [
        "--model", "random/tiny-chronos-bolt", "--duration", "1", "--connections", "8", "--warmup-seconds", "1",
        "--systems", "raw,in-process,chronoserve", "--chronoserve-configs", "", "--out", str(tmp_path),
    ]  # fmt: skip
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    document = json.loads((tmp_path / "http.json").read_text())
    systems = {s["name"]: s for s in document["systems"]}
    # serve runs onnx by default: the raw loop on both backends, the engine in-process on serve's
    assert list(systems) == ["raw", "raw-onnx", "in-process-onnx", "chronoserve"]
    assert systems["raw"]["raw"]["per_second"] > 0 and systems["raw-onnx"]["raw"]["per_second"] > 0
    assert systems["chronoserve"]["backend"] == "onnx"
    for name in ("in-process-onnx", "chronoserve"):
        (p,) = systems[name]["points"]
        assert p["connections"] == 8 and p["per_s"] > 0 and p["requests"] > 0
        assert p["errors"] == 0 and p["error_text"] == "none"
        assert 0 < p["p50"] <= p["p99"] < 5
        assert systems[name]["answer"]["ok"] is True and systems[name]["answer"]["rel_diff"] <= 1e-5
    cs = systems["chronoserve"]
    assert cs["exit_code"] == 0 and cs["error"] is None
    assert cs["points"][0]["exact"] is True  # post.lua's done() line was read
    assert cs["points"][0]["server_cpu"] > 0 and cs["points"][0]["backlog_s"] < 5
    assert document["meta"]["machine"]["cpus"] >= 1 and document["meta"]["machine"]["wrk"].startswith("wrk")
    goals = {g["what"] for g in document["goals"]}
    assert {"HTTP vs in-process", "same answers"} <= goals
    rows = (tmp_path / "http.csv").read_text().splitlines()
    assert rows[0].startswith("system,kind,backend,connections") and len(rows) == 5
    assert (tmp_path / "http.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "body.json").read_text())["model_name"] == "random/tiny-chronos-bolt"
    assert "WRK_SUMMARY" in (tmp_path / "wrk" / "chronoserve-c8.txt").read_text()
    assert "chronoserve serve" in (tmp_path / "logs" / "chronoserve.log").read_text()
    assert "## wrk -c8" in out and "goals (chronoserve serve with its defaults; fp32)" in out
    assert "exit code after SIGTERM: 0" in out


@pytest.mark.skipif(importlib.util.find_spec("litserve") is None, reason="litserve not installed (.[bench])")
@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--backend", "nosuch"], "--backend nosuch: "),  # no such backend, or a loader without backend=
        (["--mode", "upstream", "--backend", "torch-compiled"], "--backend: only with --mode chronoserve"),
    ],
)
def test_the_litserve_app_refuses_a_backend_it_cannot_serve(extra: list[str], message: str) -> None:
    app = benches.ROOT / "bench" / "_litserve_app.py"
    cmd = [sys.executable, str(app), "--port", "1", "--models", "random/tiny-chronos-bolt", *extra]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
