"""chronoserve, LitServe and the raw model loop over HTTP, side by side, driven by wrk (a C load generator).

    sudo apt-get install wrk                 # Debian/Ubuntu (wrk 4.1); brew install wrk on macOS
    pip install -e '.[bench]'                # litserve==0.2.19
    python bench/http.py                     # 20 s per system and connection count: 11 to 15 minutes
    python bench/http.py --duration 3 --connections 8,64 --systems raw,in-process,chronoserve,litserve

One JSON body (``POST /forecast``: ``model_name``, a 240-point ``target`` of real hourly PM2.5 from
chronoserve's embedded store, ``horizon_hours`` 24, ``quantile_levels`` [0.1, 0.5, 0.9]) is sent by
``wrk -t1 -c{C} -d{D}s --latency --timeout 30s -s post.lua`` for each C of ``--connections``
(8, 64, 256) to every system in turn, one after the other, all in one run:

- ``raw``: the model's own limit, the backend's ``predict`` on batches of B from 2 worker threads
  x 1 torch thread in this process (``bench/serving.py``'s raw loop); no HTTP, no queue. One
  number for every C. ``raw-<backend>`` for every other backend the configurations name.
- ``in-process``: chronoserve's ``Engine`` with ``chronoserve serve``'s default settings in this
  process, driven like wrk drives the servers: C submitters, each sending its next request when
  its answer arrives (closed loop), for D seconds. The engine without HTTP.
- ``chronoserve``: ``chronoserve serve --models M --default-model M`` and nothing else (B and Δt
  are its defaults, 32 and 10 ms, and its backend onnx), then each ``--chronoserve-configs``
  variant (``LABEL=flags``: by default ``torch`` with ``--backend torch``, ``1fe`` and ``2fe``
  with ``--http-workers 1`` and ``2`` front-end processes, ``2fe-torch`` with both);
  a variant whose flags ``chronoserve serve --help`` does not list is skipped, with the reason.
- ``litserve-1x2`` and ``litserve-2x1``: LitServe 0.2.19 as its users write it
  (``bench/_litserve_app.py --mode upstream``: the upstream ``BaseChronosPipeline`` and its
  ``predict_quantiles``, LitServe's batching with ``max_batch_size=B``, ``batch_timeout=Δt``),
  as it comes (1 worker process, torch's default threads: one per core) and with chronoserve's
  split (2 worker processes x 1 torch thread; labels follow the machine's cores).
- ``litserve-cs-1x2`` and ``litserve-cs-2x1``: the same LitServe serving chronoserve's backend
  (``--litserve-backend``: by default the fastest raw backend of this run), so that what the
  server itself adds is visible apart from the model code.

Every server is started on 127.0.0.1 on a free port, waited for (``/readyz``, LitServe's
``/health``), sent the body once to check its answer against the raw eager backend's (medians
within 1e-5 relative for chronoserve's backends, torch and onnx; the upstream pipeline's
difference is printed), warmed
up (``--warmup-seconds`` of wrk), measured at each C (after each run one more request waits out
any backlog the run left), then stopped with SIGTERM and checked to exit 0.

Output: a table per connection count (2xx req/s, p50/p90/p99 ms, errors, ratio to the best
LitServe as its users write it, ratio to in-process on the same backend, CPU seconds of wrk, of
the server and of everything else), the issue's goals (met or not, with the numbers), and under
``--out`` (default ``results/http``): ``http.json`` (every number, the machine, the versions),
``http.csv``, ``http.png`` (throughput and p99 against connections), ``body.json``, ``post.lua``,
each server's log and each wrk output. wrk shares the machine's cores with the server: its CPU
seconds are in the table. Random weights give real timings and meaningless forecasts. Compare
only numbers from one run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import dataclasses
import importlib.util
import json
import math
import os
import platform
import re
import resource
import shlex
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

if __name__ == "http":  # pragma: no cover
    # ``python bench/<script>.py`` puts bench/ first on sys.path, so ``import http`` (the standard
    # library's, which httpx, starlette and uvicorn import) finds this file: load the real package
    # in its place. (The rest of this file only defines things.)
    import importlib.machinery

    _here = os.path.dirname(os.path.abspath(__file__))
    _path = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]
    _spec = importlib.machinery.PathFinder.find_spec("http", _path)
    assert _spec is not None and _spec.loader is not None
    _real = importlib.util.module_from_spec(_spec)
    sys.modules["http"] = _real
    _spec.loader.exec_module(_real)

from chronoserve.settings import SERVE_BACKEND

HERE = Path(__file__).resolve().parent
LITSERVE_APP = HERE / "_litserve_app.py"
DEFAULT_MODEL = "random/chronos-bolt-tiny"
DEFAULT_SERIES = "dongsi"
CONTEXT_POINTS = 240
HORIZON = 24
LEVELS = (0.1, 0.5, 0.9)
DEFAULT_CONFIGS = (
    "torch=--backend torch,1fe=--http-workers 1,2fe=--http-workers 2,2fe-torch=--http-workers 2 --backend torch"
)
#: ``chronoserve serve``'s own B and Δt: passed only when the bench is asked for others.
SERVE_MAX_BATCH, SERVE_MAX_WAIT_MS = 32, 10.0
SAME_BACKEND_RTOL = 1e-5
#: Backends whose answers are eager torch's within SAME_BACKEND_RTOL (checked; others are reported).
PROMISED_BACKENDS = ("torch", "onnx")
GOAL_THROUGHPUT, GOAL_HTTP_SHARE, GOAL_CONNECTIONS = 1.8, 0.8, 64
HEADERS = {"Content-Type": "application/json", "Accept-Encoding": "identity"}


# -- wrk's output ------------------------------------------------------------------------------

_TIME_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_METRIC_UNITS = {"": 1.0, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15}
_BINARY_UNITS = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40, "PB": 1 << 50}
SUMMARY_TAG = "WRK_SUMMARY "


class WrkOutputError(ValueError):
    """wrk's output holds no result (it could not connect, or it is not wrk's output)."""


def parse_time(text: str) -> float:
    """A wrk duration (``199.66us``, ``43.97ms``, ``1.50s``, ``1.00m``, ``2.00h``) in seconds."""
    m = re.fullmatch(r"\s*(-?[\d.]+)(us|ms|s|m|h)\s*", text)
    if m is None:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(m.group(1)) * _TIME_UNITS[m.group(2)]


def parse_metric(text: str) -> float:
    """A wrk count with its metric suffix (``92.00``, ``83.01k``, ``1.20M``)."""
    m = re.fullmatch(r"\s*(-?[\d.]+)([kMGTP]?)\s*", text)
    if m is None:
        raise ValueError(f"not a wrk number: {text!r}")
    return float(m.group(1)) * _METRIC_UNITS[m.group(2)]


def parse_bytes(text: str) -> float:
    """A wrk byte count (``608.00B``, ``26.21KB``, ``6.61MB``: powers of 1024)."""
    m = re.fullmatch(r"\s*([\d.]+)([KMGTP]?B)\s*", text)
    if m is None:
        raise ValueError(f"not a wrk byte count: {text!r}")
    return float(m.group(1)) * _BINARY_UNITS[m.group(2)]


@dataclass
class WrkResult:
    """One wrk run. Times in seconds; ``requests`` counts every answer, 2xx or not."""

    requests: int
    seconds: float
    requests_per_s: float
    threads: int | None = None
    connections: int | None = None
    latency_mean: float | None = None
    latency_stdev: float | None = None
    latency_max: float | None = None
    percentiles: dict[float, float] = field(default_factory=dict)
    connect_errors: int = 0
    read_errors: int = 0
    write_errors: int = 0
    timeouts: int = 0
    non2xx: int = 0
    bytes_read: float | None = None
    exact: bool = False
    """True when the numbers come from post.lua's ``done()`` line (exact), not wrk's rounded text."""

    @property
    def socket_errors(self) -> int:
        return self.connect_errors + self.read_errors + self.write_errors + self.timeouts

    @property
    def errors(self) -> int:
        """Socket errors, timeouts and non-2xx/3xx answers."""
        return self.socket_errors + self.non2xx

    @property
    def ok_per_s(self) -> float:
        """Answers that were not errors, per second."""
        return max(0, self.requests - self.non2xx) / self.seconds if self.seconds > 0 else 0.0

    def percentile(self, q: float) -> float | None:
        return self.percentiles.get(float(q))

    def error_text(self) -> str:
        parts = [
            f"{name} {n}"
            for name, n in (
                ("connect", self.connect_errors),
                ("read", self.read_errors),
                ("write", self.write_errors),
                ("timeout", self.timeouts),
                ("non-2xx", self.non2xx),
            )
            if n
        ]
        return ", ".join(parts) or "none"

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["percentiles"] = {f"{q:g}": v for q, v in self.percentiles.items()}
        out.update(errors=self.errors, ok_per_s=self.ok_per_s)
        return out


def parse_wrk(text: str) -> WrkResult:
    """wrk 4's text output (with ``--latency``), and post.lua's exact ``WRK_SUMMARY`` line when present.

    Raises :class:`WrkOutputError` when there is no result (``unable to connect ...``).
    """
    rps = re.search(r"^Requests/sec:\s+(\S+)", text, re.M)
    done = re.search(r"^\s*(\d+) requests in (\S+), (\S+) read", text, re.M)
    summary = _summary_line(text)
    if (rps is None or done is None) and summary is None:
        first = next((line.strip() for line in text.splitlines() if line.strip()), "(no output)")
        raise WrkOutputError(f"no result in wrk's output: {first}")
    result = WrkResult(requests=0, seconds=0.0, requests_per_s=0.0)
    if rps is not None and done is not None:
        result.requests = int(done.group(1))
        result.seconds = parse_time(done.group(2))
        result.requests_per_s = parse_metric(rps.group(1))
        with contextlib.suppress(ValueError):
            result.bytes_read = parse_bytes(done.group(3))
    if m := re.search(r"(\d+) threads and (\d+) connections", text):
        result.threads, result.connections = int(m.group(1)), int(m.group(2))
    if m := re.search(r"^\s*Latency\s+(\S+)\s+(\S+)\s+(\S+)", text, re.M):
        with contextlib.suppress(ValueError):
            result.latency_mean, result.latency_stdev, result.latency_max = (parse_time(g) for g in m.groups())
    distribution = text.partition("Latency Distribution")[2]
    for m in re.finditer(r"^\s*(\d+(?:\.\d+)?)%\s+(\S+)\s*$", distribution, re.M):
        with contextlib.suppress(ValueError):
            result.percentiles[float(m.group(1))] = parse_time(m.group(2))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text):
        result.connect_errors, result.read_errors, result.write_errors, result.timeouts = map(int, m.groups())
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", text):
        result.non2xx = int(m.group(1))
    if summary is not None:
        _apply_summary(result, summary)
    if result.latency_max == 0.0:  # nothing recorded (every answer timed out): wrk prints 0.00us
        result.percentiles = {}
        result.latency_mean = result.latency_stdev = result.latency_max = None
    return result


def _summary_line(text: str) -> dict[str, Any] | None:
    for line in text.splitlines():
        if line.startswith(SUMMARY_TAG):
            try:
                value = json.loads(line[len(SUMMARY_TAG) :])
            except ValueError:
                return None
            return value if isinstance(value, dict) else None
    return None


def _apply_summary(result: WrkResult, s: Mapping[str, Any]) -> None:
    """post.lua's ``done()`` numbers (integers, microseconds) in place of the rounded text."""
    result.requests = int(s["requests"])
    result.seconds = float(s["duration_us"]) / 1e6
    result.requests_per_s = result.requests / result.seconds if result.seconds > 0 else 0.0
    result.bytes_read = float(s.get("bytes", result.bytes_read or 0.0))
    result.connect_errors, result.read_errors = int(s["connect"]), int(s["read"])
    result.write_errors, result.timeouts, result.non2xx = int(s["write"]), int(s["timeout"]), int(s["status"])
    lat = s.get("latency_us") or {}
    if lat.get("mean") is not None:
        result.latency_mean = float(lat["mean"]) / 1e6
    if lat.get("stdev") is not None:
        result.latency_stdev = float(lat["stdev"]) / 1e6
    if lat.get("max") is not None:
        result.latency_max = float(lat["max"]) / 1e6
    for key, value in lat.items():
        if key.startswith("p") and value is not None:
            result.percentiles[float(key[1:])] = float(value) / 1e6
    result.exact = True


# -- the body and the Lua script ---------------------------------------------------------------


def last_complete_window(values: Sequence[float], n: int) -> list[float]:
    """The last ``n`` consecutive finite values of ``values`` (the newest complete window)."""
    run: list[float] = []
    for v in reversed(values):
        if v is None or not math.isfinite(float(v)):
            run = []
            continue
        run.append(float(v))
        if len(run) == n:
            return run[::-1]
    raise ValueError(f"no {n} consecutive observed values")


def make_body(model: str, context: Sequence[float], horizon: int = HORIZON, levels: Sequence[float] = LEVELS) -> bytes:
    """The one ``POST /forecast`` body (docs/http.md field names), compact JSON."""
    body = {
        "model_name": model,
        "target": [float(v) for v in context],
        "horizon_hours": horizon,
        "quantile_levels": list(levels),
    }
    return json.dumps(body, separators=(",", ":")).encode()


LUA_TEMPLATE = """\
-- bench/http.py: POST one JSON body on every request; done() prints wrk's exact numbers as JSON.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept-Encoding"] = "identity"
wrk.body = @BODY@

local function num(x)
  if x ~= x or x == math.huge or x == -math.huge then return "null" end
  return string.format("%.17g", x)
end

function done(summary, latency, requests)
  local e = summary.errors
  local p = {}
  for _, q in ipairs({50, 75, 90, 99, 99.9, 99.99}) do
    p[#p + 1] = string.format('"p%g": %s', q, num(latency:percentile(q)))
  end
  io.write("@TAG@{",
    '"requests": ', num(summary.requests), ', "duration_us": ', num(summary.duration),
    ', "bytes": ', num(summary.bytes), ', "connect": ', num(e.connect), ', "read": ', num(e.read),
    ', "write": ', num(e.write), ', "status": ', num(e.status), ', "timeout": ', num(e.timeout),
    ', "latency_us": {"min": ', num(latency.min), ', "max": ', num(latency.max),
    ', "mean": ', num(latency.mean), ', "stdev": ', num(latency.stdev), ', ', table.concat(p, ", "), "}}\\n")
end
"""


def lua_long_string(text: str) -> str:
    """``text`` as a Lua long string literal (``[==[...]==]``, with a level that does not occur in it)."""
    level = 0
    while f"]{'=' * level}]" in text:
        level += 1
    eq = "=" * level
    newline = "\n" if text.startswith("\n") else ""  # Lua drops a newline right after the opening bracket
    return f"[{eq}[{newline}{text}]{eq}]"


def lua_script(body: bytes) -> str:
    """wrk's script: POST ``body`` (UTF-8 JSON) with a JSON content type, report exact numbers at the end."""
    return LUA_TEMPLATE.replace("@TAG@", SUMMARY_TAG).replace("@BODY@", lua_long_string(body.decode()))


def wrk_command(url: str, connections: int, duration: int, script: Path, timeout: int) -> list[str]:
    """wrk's command line (it reads durations as whole seconds: ``-d0.5s`` would be 0)."""
    return [
        "wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "--timeout", f"{timeout}s",
        "-s", str(script), url,
    ]  # fmt: skip


# -- systems and configurations ----------------------------------------------------------------


def parse_configs(text: str) -> list[tuple[str, list[str]]]:
    """``LABEL=flags,LABEL=flags`` (flags as on a shell command line) -> [(label, [flag, ...])]."""
    configs: list[tuple[str, list[str]]] = []
    for part in text.split(","):
        if not part.strip():
            continue
        label, sep, flags = part.partition("=")
        label = label.strip()
        if not sep or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", label):
            raise ValueError(f"{part.strip()!r}: expected LABEL=flags, e.g. onnx=--backend onnx")
        if label in {c[0] for c in configs}:
            raise ValueError(f"label {label!r} given twice")
        configs.append((label, shlex.split(flags)))
    return configs


def listed_flags(help_text: str) -> set[str]:
    """The long options a ``--help`` text lists."""
    return set(re.findall(r"(?<![\w-])(--[A-Za-z0-9][\w-]*)", help_text))


def unlisted_flags(flags: Sequence[str], listed: set[str]) -> list[str]:
    """The options among ``flags`` (``--name`` or ``--name=value``) that ``listed`` lacks."""
    return [f.split("=", 1)[0] for f in flags if f.startswith("--") and f.split("=", 1)[0] not in listed]


def default_backend(systems: Sequence[System]) -> str:
    """The backend of ``chronoserve serve`` with its defaults in this run (``SERVE_BACKEND``)."""
    default = next((s for s in systems if s.group == "chronoserve"), None)
    return default.backend if default is not None else SERVE_BACKEND


def flag_value(flags: Sequence[str], name: str, default: str) -> str:
    """The value of ``name`` in ``flags`` (``--name value`` or ``--name=value``), the last one winning."""
    value = default
    for i, f in enumerate(flags):
        if f == name and i + 1 < len(flags):
            value = flags[i + 1]
        elif f.startswith(name + "="):
            value = f.split("=", 1)[1]
    return value


@dataclass
class System:
    name: str
    kind: str  # "raw", "in-process", "http"
    group: str  # raw, in-process, chronoserve, chronoserve-configs, litserve, litserve-cs
    backend: str  # torch, onnx, ... or "upstream" (the Chronos pipeline itself)
    config: str
    cmd: list[str] | None = None
    ready_path: str = "/readyz"
    skipped: str | None = None
    error: str | None = None
    exit_code: int | None = None
    answer: dict[str, Any] | None = None
    points: dict[int, Point] = field(default_factory=dict)
    raw: dict[str, Any] | None = None

    def selected_by(self, tokens: Sequence[str]) -> bool:
        return "all" in tokens or self.name in tokens or self.group in tokens


@dataclass
class Point:
    """One system at one connection count."""

    connections: int
    per_s: float  # 2xx answers per second
    p50: float | None = None
    p90: float | None = None
    p99: float | None = None
    p999: float | None = None
    requests: int = 0
    seconds: float | None = None
    errors: int = 0
    error_text: str = "none"
    exact: bool = False
    wrk_cpu: float | None = None
    server_cpu: float | None = None
    other_cpu: float | None = None
    backlog_s: float | None = None
    wrk: dict[str, Any] | None = None

    @classmethod
    def from_wrk(cls, connections: int, r: WrkResult) -> Point:
        return cls(
            connections=connections,
            per_s=r.ok_per_s,
            p50=r.percentile(50),
            p90=r.percentile(90),
            p99=r.percentile(99),
            p999=r.percentile(99.9),
            requests=r.requests,
            seconds=r.seconds,
            errors=r.errors,
            error_text=r.error_text(),
            exact=r.exact,
            wrk=r.to_dict(),
        )


# -- ratios and goals --------------------------------------------------------------------------


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return None
    return a / b


def best_of(points: Mapping[str, Point | None]) -> tuple[str, Point] | None:
    """The highest 2xx rate among ``points`` (name -> point), error-free ones first."""
    present = [(name, p) for name, p in points.items() if p is not None]
    clean = [(name, p) for name, p in present if p.errors == 0] or present
    return max(clean, key=lambda item: item[1].per_s) if clean else None


@dataclass
class Goal:
    what: str
    connections: int
    value: float | None
    target: float
    met: bool
    text: str


def goals(
    chronoserve: Mapping[int, Point],
    litserve: Mapping[str, Mapping[int, Point]],
    in_process: Mapping[int, Point],
    connections: Sequence[int],
    answer_ok: bool | None = None,
) -> list[Goal]:
    """The issue's goals for ``chronoserve serve`` (defaults) at each connection count.

    Throughput at least 1.8x the best LitServe configuration's (as its users write it), and p99 no
    worse than that configuration's; over HTTP at least 0.8x the in-process rate; no errors; same
    answers as the raw eager backend.
    """
    out: list[Goal] = []
    for c in connections:
        cs = chronoserve.get(c)
        if cs is None:
            continue
        best = best_of({name: pts.get(c) for name, pts in litserve.items()})
        clean = cs.errors == 0
        flag = "" if clean else f" (chronoserve had errors: {cs.error_text})"
        if best is not None:
            name, ls = best
            x = ratio(cs.per_s, ls.per_s)
            met = x is not None and x >= GOAL_THROUGHPUT and clean
            out.append(
                Goal(
                    "throughput vs best LitServe",
                    c,
                    x,
                    GOAL_THROUGHPUT,
                    met,
                    f"-c{c}: chronoserve {cs.per_s:.1f} req/s vs {name} {ls.per_s:.1f} = {_x(x)}, goal >= "
                    f"{GOAL_THROUGHPUT:g}x: {_met(met)}{flag}",
                )  # fmt: skip
            )
            if cs.p99 is not None and ls.p99 is not None:
                met = cs.p99 <= ls.p99 and clean
                out.append(
                    Goal(
                        "p99 vs best LitServe",
                        c,
                        cs.p99 / ls.p99,
                        1.0,
                        met,
                        f"-c{c}: chronoserve p99 {cs.p99 * 1e3:.0f} ms vs {name} p99 {ls.p99 * 1e3:.0f} ms, goal <=: "
                        f"{_met(met)}{flag}",
                    )  # fmt: skip
                )
        ip = in_process.get(c)
        if ip is not None:
            x = ratio(cs.per_s, ip.per_s)
            met = x is not None and x >= GOAL_HTTP_SHARE and clean
            out.append(
                Goal(
                    "HTTP vs in-process",
                    c,
                    x,
                    GOAL_HTTP_SHARE,
                    met,
                    f"-c{c}: over HTTP {cs.per_s:.1f} req/s vs in-process {ip.per_s:.1f} = {_x(x)}, goal >= "
                    f"{GOAL_HTTP_SHARE:g}x: {_met(met)}{flag}",
                )  # fmt: skip
            )
    if answer_ok is not None:
        out.append(
            Goal(
                "same answers",
                0,
                None,
                SAME_BACKEND_RTOL,
                answer_ok,
                f"answers: chronoserve's median within {SAME_BACKEND_RTOL:g} (relative) of the raw eager "
                f"backend's: {_met(answer_ok)}",
            )  # fmt: skip
        )
    return out


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _met(met: bool) -> str:
    return "met" if met else "NOT MET"


def relative_difference(a: Sequence[float], b: Sequence[float]) -> float:
    """max |a - b| over max |b|: how far ``a`` is from ``b`` on ``b``'s scale (inf if shapes differ)."""
    x = [float("nan") if v is None else float(v) for v in a]
    y = [float("nan") if v is None else float(v) for v in b]
    if len(x) != len(y) or not y:
        return math.inf
    scale = max(abs(v) for v in y)
    diff = max(abs(u - v) for u, v in zip(x, y, strict=True))
    if math.isnan(diff):
        return math.inf
    return diff / scale if scale > 0 else diff


# -- the report --------------------------------------------------------------------------------


def _f(value: float | None, fmt: str, width: int, scale: float = 1.0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return f"{'-':>{width}s}"
    return f"{value * scale:{width}{fmt}}"


TABLE_HEAD = (
    f"  {'system':<20s}{'req/s':>9s}{'p50 ms':>9s}{'p90 ms':>9s}{'p99 ms':>9s}{'x best LS':>10s}{'x in-proc':>10s}"
    f"{'wrk cpu':>9s}{'srv cpu':>9s}{'oth cpu':>9s}{'srv ms/req':>11s}  errors"
)


def format_table(systems: Sequence[System], c: int, best_litserve: str | None) -> list[str]:
    lines = [TABLE_HEAD]
    best = next((s.points[c] for s in systems if s.name == best_litserve and c in s.points), None)
    for s in systems:
        if s.skipped is not None or (s.error is not None and c not in s.points):
            continue
        p = s.points.get(c)
        if p is None:
            continue
        ip = _in_process_point(systems, s.backend, c)
        answered = p.per_s * (p.seconds or 0.0)
        per_req = p.server_cpu / answered * 1e3 if p.server_cpu and answered else None
        flag = " !" if p.errors else ""
        lines.append(
            f"  {s.name + flag:<20s}{p.per_s:9.1f}{_f(p.p50, '.1f', 9, 1e3)}{_f(p.p90, '.1f', 9, 1e3)}"
            f"{_f(p.p99, '.1f', 9, 1e3)}{_f(ratio(p.per_s, best.per_s if best else None), '.2f', 10)}"
            f"{_f(ratio(p.per_s, ip.per_s if ip else None) if s.kind != 'in-process' else None, '.2f', 10)}"
            f"{_f(p.wrk_cpu, '.2f', 9)}{_f(p.server_cpu, '.2f', 9)}{_f(p.other_cpu, '.2f', 9)}{_f(per_req, '.2f', 11)}"
            f"  {p.error_text}"
        )
    return lines


def _in_process_point(systems: Sequence[System], backend: str, c: int) -> Point | None:
    want = "torch" if backend == "upstream" else backend
    for s in systems:
        if s.kind == "in-process" and s.backend == want and c in s.points:
            return s.points[c]
    return None


LEGEND = """\
  req/s: 2xx answers per second over the run (raw: the backend alone, batches of B, no HTTP, no queue: one
  number for every C). p50/p90/p99: wrk's latency histogram (in-process: the submitters' own clocks).
  x best LS: ratio to the best LitServe as its users write it (litserve-*: upstream pipeline) at this C;
  x in-proc: to chronoserve in-process on the same backend. "!": the run had errors (see the last column).
  wrk cpu, srv cpu, oth cpu: CPU seconds of wrk, of the server's processes (in-process: this process), of
  everything else on the machine, over the run; srv ms/req: server CPU per answer.
  wrk is closed-loop: each connection sends its next request only when its answer is back, so a server
  that stalls also stops the senders (coordinated omission): these percentiles are latencies at the rate
  the server sustains, not what an open-loop client would see at a fixed rate (bench/serving.py replays
  open-loop)."""


def plot(systems: Sequence[System], connections: Sequence[int], path: Path, title: str) -> Path | None:
    with_points = [s for s in systems if s.points or s.raw]
    if not with_points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_rate, ax_p99) = plt.subplots(1, 2, figsize=(13, 5.6))
    # chronoserve in blues and greens (solid), LitServe upstream in reds (dashed), LitServe on chronoserve's
    # backend in oranges (dotted), in-process in black
    palettes = {
        "in-process": iter(["k", "0.35"]),
        "chronoserve": iter(["tab:blue"]),
        "chronoserve-configs": iter(["tab:cyan", "tab:green", "tab:purple", "tab:olive", "tab:brown"]),
        "litserve": iter(["tab:red", "darkred", "lightcoral"]),
        "litserve-cs": iter(["tab:orange", "goldenrod", "peru"]),
    }
    styles = {"litserve": "--", "litserve-cs": ":"}
    markers = {"in-process": "x", "litserve": "s", "litserve-cs": "D"}
    served = [p.per_s for s in with_points if s.kind != "raw" for p in s.points.values()]
    top = 1.25 * max(served, default=0.0)
    raw_styles = iter([("0.35", "-."), ("0.6", (0, (1, 1.5))), ("0.5", (0, (5, 2))), ("0.7", "-.")])
    for s in with_points:
        if s.kind == "raw":
            assert s.raw is not None
            rate = s.raw["per_second"]
            color, style = next(raw_styles, ("0.5", "-."))
            if served and rate > 2 * top:  # far above what was served: in the legend, not on the axis
                ax_rate.plot([], [], color=color, ls=style, label=f"{s.name}: {rate:,.0f}/s (model limit, off scale)")
            else:
                ax_rate.axhline(rate, color=color, ls=style, lw=1.2, label=f"{s.name}: {rate:,.0f}/s (model limit)")
                top = max(top, 1.1 * rate)
            continue
        color = next(palettes.get(s.group, iter([])), None)
        style, marker = styles.get(s.group, "-"), markers.get(s.group, "o")
        cs = sorted(c for c in s.points if c in connections)
        pts = [s.points[c] for c in cs]
        lw = 2.4 if s.group == "chronoserve" else 1.5
        (line,) = ax_rate.plot(cs, [p.per_s for p in pts], ls=style, marker=marker, color=color, lw=lw, label=s.name)
        ax_p99.plot(
            [c for c, p in zip(cs, pts, strict=True) if p.p99],
            [p.p99 * 1e3 for p in pts if p.p99],
            ls=style,
            marker=marker,
            color=line.get_color(),
            lw=lw,
        )
        for c, p in zip(cs, pts, strict=True):  # runs with errors: a red ring
            if p.errors:
                ax_rate.plot([c], [p.per_s], "o", ms=13, mfc="none", mec="red", mew=1.5)
                if p.p99:
                    ax_p99.plot([c], [p.p99 * 1e3], "o", ms=13, mfc="none", mec="red", mew=1.5)
    for ax, label in ((ax_rate, "throughput (2xx answers/s)"), (ax_p99, "p99 latency (ms, log)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(connections))
        ax.set_xticklabels([str(c) for c in connections])
        ax.set_xlabel("connections (wrk -c)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    ax_rate.set_ylim(0, top or None)
    ax_p99.set_yscale("log")
    ax_p99.yaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax_p99.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax_p99.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax_rate.set_title("throughput against connections")
    ax_p99.set_title("p99 against connections")
    handles, labels = ax_rate.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(5, len(labels)), frameon=False, fontsize=9)
    fig.suptitle(title, fontsize=10)
    rows = math.ceil(len(labels) / 5)
    fig.tight_layout(rect=(0, 0.05 + 0.035 * rows, 1, 0.95))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


CSV_FIELDS = [
    "system", "kind", "backend", "connections", "requests_per_s", "p50_ms", "p90_ms", "p99_ms", "p999_ms",
    "requests", "errors", "error_detail", "ratio_best_litserve", "best_litserve", "ratio_in_process",
    "wrk_cpu_s", "server_cpu_s", "other_cpu_s", "backlog_s", "exact",
]  # fmt: skip


def csv_rows(systems: Sequence[System], connections: Sequence[int], best: Mapping[int, str | None]) -> list[dict]:
    rows = []
    for c in connections:
        best_point = next((s.points.get(c) for s in systems if s.name == best.get(c)), None)
        for s in systems:
            if s.kind == "raw" and s.raw is not None:
                p: Point | None = Point(c, s.raw["per_second"], requests=s.raw.get("requests", 0), exact=True)
            else:
                p = s.points.get(c)
            if p is None:
                continue
            ip = _in_process_point(systems, s.backend, c)
            rows.append(
                {
                    "system": s.name,
                    "kind": s.kind,
                    "backend": s.backend,
                    "connections": c,
                    "requests_per_s": round(p.per_s, 3),
                    "p50_ms": _ms(p.p50),
                    "p90_ms": _ms(p.p90),
                    "p99_ms": _ms(p.p99),
                    "p999_ms": _ms(p.p999),
                    "requests": p.requests,
                    "errors": p.errors,
                    "error_detail": p.error_text,
                    "ratio_best_litserve": _round(ratio(p.per_s, best_point.per_s if best_point else None)),
                    "best_litserve": best.get(c) or "",
                    "ratio_in_process": _round(ratio(p.per_s, ip.per_s if ip else None)),
                    "wrk_cpu_s": _round(p.wrk_cpu),
                    "server_cpu_s": _round(p.server_cpu),
                    "other_cpu_s": _round(p.other_cpu),
                    "backlog_s": _round(p.backlog_s),
                    "exact": p.exact,
                }
            )
    return rows


def _ms(seconds: float | None) -> float | str:
    return "" if seconds is None else round(seconds * 1e3, 3)


def _round(value: float | None) -> float | str:
    return "" if value is None else round(value, 4)


# -- running -----------------------------------------------------------------------------------


def load_sibling(script: str) -> ModuleType:
    """``bench/<script>.py`` as the module ``_bench_<script>`` (shared with tests/benches.py)."""
    name = f"_bench_{script}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, HERE / f"{script}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class BodyRequest:
    """What bench/serving.py's raw loop takes: something with ``to_http_body()``."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body

    def to_http_body(self) -> dict[str, Any]:
        return dict(self.body)


def note(text: str) -> None:
    print(f"[http] {text}", file=sys.stderr, flush=True)


def loader_takes_backend() -> bool:
    import inspect

    from chronoserve.models.loader import ChronosLoader

    return "backend" in inspect.signature(ChronosLoader).parameters


def make_loader(backend: str) -> Any:
    from chronoserve.models.loader import ChronosLoader

    return ChronosLoader() if backend == "torch" else ChronosLoader(backend=backend)


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_wrk(url: str, c: int, duration: float, script: Path, timeout: float, log: Path) -> tuple[WrkResult, float]:
    """One wrk run: its parsed result and its CPU seconds (wrk is this process's only child reaped meanwhile)."""
    cmd = wrk_command(url, c, duration, script, timeout)
    before = children_cpu_seconds()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + timeout + 60, check=False)
    cpu = children_cpu_seconds() - before
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("$ " + shlex.join(cmd) + "\n" + proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise WrkOutputError(f"wrk exited with {proc.returncode}: {(proc.stdout + proc.stderr).strip()[:300]}")
    return parse_wrk(proc.stdout), cpu


def post_once(url: str, body: bytes, timeout: float = 120.0) -> tuple[int, dict[str, Any] | None, float]:
    import httpx

    start = time.perf_counter()
    r = httpx.post(url + "/forecast", content=body, headers=HEADERS, timeout=timeout)
    elapsed = time.perf_counter() - start
    try:
        return r.status_code, r.json(), elapsed
    except ValueError:
        return r.status_code, None, elapsed


def check_answer(system: System, median: Sequence[float] | None, reference: Sequence[float], status: int) -> None:
    if median is None:
        system.answer = {"status": status, "ok": False, "rel_diff": None}
        return
    diff = relative_difference(median, reference)
    # chronoserve's backends all promise eager torch's answers within 1e-5 (docs/backends.md); the
    # upstream pipeline (LitServe as its users write it) is reported, not held to it.
    promised = system.backend in PROMISED_BACKENDS
    system.answer = {
        "status": status,
        "rel_diff": diff,
        "same_backend": system.backend == "torch",
        "ok": diff <= SAME_BACKEND_RTOL if promised else None,
    }


def answer_text(system: System) -> str:
    a = system.answer or {}
    if a.get("rel_diff") is None:
        return f"no answer (HTTP {a.get('status')})"
    verdict = {True: "same", False: "DIFFERENT", None: "reported"}[a.get("ok")]
    return f"max rel. diff {a['rel_diff']:.2g} vs raw eager ({verdict})"


# -- the systems' runs ---------------------------------------------------------------------------


def run_raw(system: System, ctx: Context) -> None:
    serving = ctx.serving
    models = serving.RawModels()
    models.loader = make_loader(system.backend)
    request = BodyRequest(ctx.body)
    workers, threads = ctx.workers, ctx.torch_threads
    unit = ctx.args.max_batch * workers
    first = serving.raw_loop([request] * (2 * unit), models, ctx.args.max_batch, workers, threads)
    n = max(unit, math.ceil(first["per_second"] * ctx.args.duration / unit) * unit)
    start = machine_cpu()
    system.raw = serving.raw_loop([request] * n, models, ctx.args.max_batch, workers, threads)
    system.raw["machine_cpu_s"] = machine_cpu() - start
    note(f"{system.name}: {system.raw['per_second']:.1f} req/s ({n} requests in {system.raw['seconds']:.1f} s)")
    if system.backend != "torch":  # the torch one is the reference itself
        check_answer(system, ctx.predict_median(*models.get(ctx.args.model)), ctx.reference, 200)


async def _closed_loop(engine: Any, template: Any, connections: int, duration: float) -> dict[str, Any]:
    """C submitters, each sending its next request when its answer is back, for ``duration`` seconds."""
    from chronoserve.errors import ChronoserveError

    latencies: list[float] = []
    errors: dict[str, int] = {}
    counter = iter(range(1 << 62))
    start = time.perf_counter()
    end = start + duration

    async def submitter() -> None:
        while True:
            sent = time.perf_counter()
            if sent >= end:
                return
            try:
                await engine.forecast(dataclasses.replace(template, request_id=f"w{next(counter)}"))
            except ChronoserveError as exc:
                name = type(exc).__name__
                errors[name] = errors.get(name, 0) + 1
                continue
            done = time.perf_counter()
            if done <= end:
                latencies.append(done - sent)

    await asyncio.gather(*(submitter() for _ in range(connections)))
    return {"latencies": latencies, "errors": errors, "seconds": duration}


def point_from_latencies(c: int, run: Mapping[str, Any]) -> Point:
    import numpy as np

    lat = np.asarray(run["latencies"], dtype=np.float64)
    pct = {q: float(np.percentile(lat, q)) for q in (50, 90, 99, 99.9)} if lat.size else {}
    errors = sum(run["errors"].values())
    return Point(
        connections=c,
        per_s=lat.size / run["seconds"],
        p50=pct.get(50),
        p90=pct.get(90),
        p99=pct.get(99),
        p999=pct.get(99.9),
        requests=int(lat.size),
        seconds=float(run["seconds"]),
        errors=errors,
        error_text=", ".join(f"{k} {v}" for k, v in run["errors"].items()) or "none",
        exact=True,
    )


def run_in_process(system: System, ctx: Context) -> None:
    from chronoserve.server.convert import build_request
    from chronoserve.server.schemas import ForecastIn

    settings = ctx.engine_settings()
    loader = make_loader(system.backend)
    item = ForecastIn.model_validate(ctx.body, strict=False)
    template = build_request(item, ctx.store(), loader.canonical(item.model_name)).request

    async def run() -> None:
        async with settings.engine(loader=loader) as engine:
            first = await engine.forecast(template)
            check_answer(system, first.median.tolist(), ctx.reference, 200)
            note(f"{system.name}: answer {answer_text(system)}; warming up {ctx.args.warmup_seconds:g} s ...")
            await _closed_loop(engine, template, ctx.warmup_connections, ctx.args.warmup_seconds)
            for c in ctx.args.connections:
                cpu, machine = time.process_time(), machine_cpu()
                result = await _closed_loop(engine, template, c, ctx.args.duration)
                point = point_from_latencies(c, result)
                point.server_cpu = time.process_time() - cpu
                point.other_cpu = max(0.0, machine_cpu() - machine - point.server_cpu)
                system.points[c] = point
                note(f"{system.name} -c{c}: {progress(point)}")

    asyncio.run(run())


def progress(p: Point) -> str:
    return (
        f"{p.per_s:.1f} req/s, p50 {_f(p.p50, '.1f', 0, 1e3)} ms, p99 {_f(p.p99, '.1f', 0, 1e3)} ms, "
        f"errors: {p.error_text}"
    )


def run_http(system: System, ctx: Context) -> None:
    import httpx

    serving = ctx.serving
    assert system.cmd is not None
    port = int(system.cmd[system.cmd.index("--port") + 1])
    log = ctx.args.out / "logs" / f"{system.name}.log"
    note(f"{system.name}: starting {shlex.join(system.cmd[1:])} ...")
    try:
        with serving.serve(system.cmd, system.ready_path, port, log, ctx.args.startup_timeout) as server:
            status, answer, _ = post_once(server.url, ctx.body_bytes)
            check_answer(system, (answer or {}).get("median") if status == 200 else None, ctx.reference, status)
            note(f"{system.name}: ready; answer {answer_text(system)}; warming up {ctx.args.warmup_seconds:g} s ...")
            if ctx.args.warmup_seconds > 0:
                run_wrk(
                    server.url + "/forecast", ctx.warmup_connections, ctx.args.warmup_seconds, ctx.script,
                    ctx.args.wrk_timeout, ctx.args.out / "wrk" / f"{system.name}-warmup.txt",
                )  # fmt: skip
                post_once(server.url, ctx.body_bytes)  # waits out what the warm-up left queued
            for c in ctx.args.connections:
                note(f"{system.name} -c{c}: wrk for {ctx.args.duration:g} s ...")
                server_cpu, machine = serving.tree_cpu_seconds(server.proc.pid), machine_cpu()
                result, wrk_cpu = run_wrk(
                    server.url + "/forecast", c, ctx.args.duration, ctx.script, ctx.args.wrk_timeout,
                    ctx.args.out / "wrk" / f"{system.name}-c{c}.txt",
                )  # fmt: skip
                point = Point.from_wrk(c, result)
                point.server_cpu = serving.tree_cpu_seconds(server.proc.pid) - server_cpu
                point.wrk_cpu = wrk_cpu
                # (tick rounding can leave a few hundredths below zero)
                point.other_cpu = max(0.0, machine_cpu() - machine - point.server_cpu - wrk_cpu)
                # One more request: it is answered once whatever the run left queued is done (LitServe
                # cannot drop the requests of connections wrk closed), so the next run starts clean.
                status, _, point.backlog_s = post_once(server.url, ctx.body_bytes)
                if status != 200:
                    point.error_text += f"; HTTP {status} after the run"
                system.points[c] = point
                note(f"{system.name} -c{c}: {progress(point)}")
        system.exit_code = server.exit_code
        if system.exit_code != 0:
            system.error = f"exit code {system.exit_code} after SIGTERM (log {log})"
    except (RuntimeError, OSError, subprocess.TimeoutExpired, WrkOutputError, httpx.HTTPError) as exc:
        system.error = f"{type(exc).__name__}: {exc}"
    if system.error is not None:
        note(f"{system.name}: FAILED: {system.error.splitlines()[0]}")


def machine_cpu() -> float:
    return float(load_sibling("serving").machine_cpu_seconds())


@dataclass
class Context:
    args: argparse.Namespace
    serving: ModuleType
    body: dict[str, Any]
    body_bytes: bytes
    script: Path
    reference: list[float]
    workers: int
    torch_threads: int
    _store: Any = None

    @property
    def warmup_connections(self) -> int:
        return min(64, max(self.args.connections))

    def store(self) -> Any:
        if self._store is None:
            from chronoserve.data import SeriesStore

            self._store = SeriesStore.embedded()
        return self._store

    def predict_median(self, spec: Any, backend: Any) -> list[float]:
        """The body's median from ``backend`` alone, prepared as the server prepares it."""
        from chronoserve.request import prepare
        from chronoserve.server.convert import build_request
        from chronoserve.server.schemas import ForecastIn

        item = ForecastIn.model_validate(self.body, strict=False)
        prepared = prepare(build_request(item, self.store(), self.args.model).request, spec)
        return [float(v) for v in backend.predict([prepared])[0].median]

    def engine_settings(self) -> Any:
        """``chronoserve serve``'s engine settings: its defaults, B and Δt only if asked for others."""
        from chronoserve.settings import EngineSettings

        options: dict[str, Any] = {}
        if self.args.max_batch != SERVE_MAX_BATCH:
            options["max_batch"] = self.args.max_batch
        if self.args.max_wait_ms != SERVE_MAX_WAIT_MS:
            options["max_wait"] = self.args.max_wait_ms / 1000.0
        return EngineSettings(max_queue=1024, policy_options=options)


def chronoserve_cmd(port: int, model: str, args: argparse.Namespace, extra: Sequence[str]) -> list[str]:
    cmd = [
        sys.executable, "-m", "chronoserve", "serve", "--host", "127.0.0.1", "--port", str(port),
        "--models", model, "--default-model", model,
    ]  # fmt: skip
    if args.max_batch != SERVE_MAX_BATCH:
        cmd += ["--max-batch", str(args.max_batch)]
    if args.max_wait_ms != SERVE_MAX_WAIT_MS:
        cmd += ["--max-wait-ms", f"{args.max_wait_ms:g}"]
    return [*cmd, *extra]


def litserve_cmd(port: int, model: str, args: argparse.Namespace, workers: int, threads: int | None) -> list[str]:
    cmd = [
        sys.executable, str(LITSERVE_APP), "--port", str(port), "--models", model,
        "--max-batch", str(args.max_batch), "--max-wait-ms", f"{args.max_wait_ms:g}", "--workers", str(workers),
    ]  # fmt: skip
    return cmd if threads is None else [*cmd, "--torch-threads", str(threads)]


def plan(
    args: argparse.Namespace, workers: int, torch_threads: int, serve_help: str, takes_backend: bool
) -> list[System]:
    """Every system of the run, in order, with the reason for each one skipped."""
    model, cores = args.model, os.cpu_count() or 1
    listed = listed_flags(serve_help)
    systems: list[System] = []
    configs = [("", [])] + args.chronoserve_configs
    backends = list(dict.fromkeys(["torch", *(flag_value(f, "--backend", SERVE_BACKEND) for _, f in configs)]))
    if args.litserve_backend != "auto":
        backends = list(dict.fromkeys([*backends, args.litserve_backend]))

    def no_backend(backend: str) -> str | None:
        if backend == "torch" or takes_backend:
            return None
        return f"chronoserve's ChronosLoader takes no backend= yet, so backend {backend!r} cannot run here"

    for backend in backends:
        name = "raw" if backend == "torch" else f"raw-{backend}"
        desc = f"{backend} backend, B={args.max_batch}, {workers} threads x {torch_threads} torch threads, in-process"
        systems.append(System(name, "raw", "raw", backend, desc, skipped=no_backend(backend)))
    for _, flags in configs:
        backend = flag_value(flags, "--backend", SERVE_BACKEND)
        name = "in-process" if backend == "torch" else f"in-process-{backend}"
        if any(s.name == name for s in systems):
            continue
        desc = f"Engine, serve's default settings, {backend} backend, C closed-loop submitters"
        systems.append(System(name, "in-process", "in-process", backend, desc, skipped=no_backend(backend)))
    for label, flags in configs:
        name = f"chronoserve-{label}" if label else "chronoserve"
        cmd = chronoserve_cmd(0, model, args, flags)
        missing = unlisted_flags(flags, listed)
        skipped = f"`chronoserve serve --help` does not list {', '.join(missing)}" if missing else None
        group = "chronoserve-configs" if label else "chronoserve"
        backend = flag_value(flags, "--backend", SERVE_BACKEND)
        desc = shlex.join(["chronoserve", *cmd[cmd.index("serve") :]])
        desc = re.sub(r" --host \S+ --port \S+", "", desc)
        systems.append(System(name, "http", group, backend, desc, cmd, "/readyz", skipped))
    lit_configs = list(dict.fromkeys([(1, None), (workers, max(1, cores // workers))]))
    lit_missing = importlib.util.find_spec("litserve") is None
    for mode in ("upstream", "chronoserve"):
        for w, t in lit_configs:
            shape = f"{w}x{t if t is not None else cores}"
            name = f"litserve-{shape}" if mode == "upstream" else f"litserve-cs-{shape}"
            threads = "torch's default threads" if t is None else f"{t} torch thread(s)"
            what = "upstream Chronos pipeline" if mode == "upstream" else "chronoserve's {backend} backend"
            desc = f"LitServe {w} worker process(es) x {threads}, {what}"
            cmd = [*litserve_cmd(0, model, args, w, t), "--mode", mode]
            skipped = "litserve is not installed (pip install -e '.[bench]')" if lit_missing else None
            group = "litserve" if mode == "upstream" else "litserve-cs"
            systems.append(
                System(name, "http", group, "upstream" if mode == "upstream" else "?", desc, cmd, "/health", skipped)
            )
    return systems


def assign_ports(system: System) -> None:
    if system.cmd is not None:
        port = load_sibling("serving").free_port()
        system.cmd[system.cmd.index("--port") + 1] = str(port)


def machine_info() -> dict[str, Any]:
    serving = load_sibling("serving")
    cpu_model = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    wrk_version = None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=10, check=False)
        wrk_version = (out.stdout + out.stderr).splitlines()[0].strip()
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        affinity = None
    return {
        "cpus": os.cpu_count(),
        "cpus_usable": affinity,
        "cpu_model": cpu_model or platform.processor() or platform.machine(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {
            p: serving._version(p)
            for p in ("chronoserve", "torch", "chronos-forecasting", "transformers", "litserve", "uvicorn", "numpy")
        },
        "wrk": wrk_version,
        "load_average": os.getloadavg(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"the model every system serves ({DEFAULT_MODEL})")
    parser.add_argument("--series", default=DEFAULT_SERIES, help="the embedded PM2.5 site the context comes from")
    parser.add_argument("--duration", type=int, default=20, help="whole seconds of wrk per system and C (20)")
    parser.add_argument("--connections", default="8,64,256", help="wrk -c values, comma-separated (8,64,256)")
    parser.add_argument(
        "--max-batch", type=int, default=32, help="B (32): LitServe's max_batch_size, the raw loop's; chronoserve "
        "gets --max-batch only when it is not serve's default"
    )  # fmt: skip
    parser.add_argument(
        "--max-wait-ms", type=float, default=10.0, help="Δt in ms (10): LitServe's batch_timeout; chronoserve gets "
        "--max-wait-ms only when it is not serve's default"
    )  # fmt: skip
    parser.add_argument(
        "--systems",
        default="all",
        help="comma-separated names or groups: raw, in-process, chronoserve, chronoserve-configs, "
        "chronoserve-LABEL, litserve, litserve-cs, litserve-1x2, ... (default: all)",
    )
    parser.add_argument(
        "--chronoserve-configs",
        default=DEFAULT_CONFIGS,
        help=f"LABEL=serve flags, comma-separated: chronoserve variants (default: {DEFAULT_CONFIGS}); '' for none",
    )
    parser.add_argument(
        "--litserve-backend",
        default="auto",
        help="chronoserve's backend inside LitServe (litserve-cs-*): torch, onnx, ... or auto, the fastest raw "
        "backend of this run (torch when raw did not run)",
    )
    parser.add_argument("--warmup-seconds", type=int, default=2, help="whole seconds of wrk warm-up per server (2)")
    parser.add_argument("--wrk-timeout", type=int, default=30, help="wrk --timeout (s): slower answers are errors")
    parser.add_argument("--startup-timeout", type=float, default=300.0, help="seconds a server may take to be ready")
    parser.add_argument("--out", type=Path, default=Path("results/http"))
    args = parser.parse_args(argv)
    try:
        args.connections = sorted({int(c) for c in args.connections.split(",") if c.strip()})
        args.chronoserve_configs = parse_configs(args.chronoserve_configs)
    except ValueError as exc:
        parser.error(str(exc))
    if not args.connections or min(args.connections) < 1:
        parser.error("--connections: whole numbers >= 1")
    if args.duration < 1 or args.warmup_seconds < 0 or args.wrk_timeout < 1:
        parser.error("--duration and --wrk-timeout must be >= 1, --warmup-seconds >= 0")
    tokens = [t.strip() for t in args.systems.split(",") if t.strip()]
    if shutil.which("wrk") is None:
        print(
            "wrk is not installed: `sudo apt-get install wrk` (Debian/Ubuntu), `brew install wrk` (macOS)",
            file=sys.stderr,
        )
        return 2

    # transformers draws a progress bar for every checkpoint it reads (read when it is first imported).
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    serving = load_sibling("serving")
    from chronoserve.engine import default_workers

    workers = default_workers()
    torch_threads = max(1, (os.cpu_count() or 1) // workers)
    serve_help = subprocess.run(
        [sys.executable, "-m", "chronoserve", "serve", "--help"], capture_output=True, text=True, check=False
    ).stdout
    systems = plan(args, workers, torch_threads, serve_help, loader_takes_backend())
    known = {"all"} | {s.name for s in systems} | {s.group for s in systems}
    if unknown := sorted(set(tokens) - known):
        parser.error(f"--systems: unknown {unknown}; known: {sorted(known)}")
    systems = [s for s in systems if s.selected_by(tokens)]
    for s in systems:  # in-process on another backend only for a chronoserve variant that runs on it
        others = [x for x in systems if x.kind == "http" and x.backend == s.backend and x.skipped is None]
        if s.kind == "in-process" and s.backend != "torch" and s.skipped is None and not others:
            s.skipped = f"no chronoserve configuration on backend {s.backend!r} runs"
    args.out.mkdir(parents=True, exist_ok=True)

    # Set-up, not measured: torch, the model's checkpoint, the body, the reference answer.
    note("preparing: importing torch, materialising the model, the reference answer ...")
    serving.preload_torch()
    from chronoserve.data import SeriesStore
    from chronoserve.models.loader import ChronosLoader
    from chronoserve.models.materialize import materialize

    loader = ChronosLoader()
    args.model = loader.canonical(args.model)
    spec = loader.resolve(args.model)
    if spec.random_weights:
        materialize(str(spec.extra.get("catalog_name", args.model)), spec.source)
    store = SeriesStore.embedded()
    context = last_complete_window(store.values(args.series).tolist(), CONTEXT_POINTS)
    body_bytes = make_body(args.model, context)
    body = json.loads(body_bytes)
    (args.out / "body.json").write_bytes(body_bytes)
    script = args.out / "post.lua"
    script.write_text(lua_script(body_bytes))
    ctx = Context(args, serving, body, body_bytes, script, [], workers, torch_threads, store)
    ctx.reference = ctx.predict_median(*serving.RawModels().get(args.model))  # the eager torch backend's

    info = machine_info()
    lit_version = info["versions"]["litserve"]
    title = (
        f"{args.model} ({'random weights: timings only' if spec.random_weights else 'trained weights'}), "
        f"{CONTEXT_POINTS}-point context, horizon {HORIZON}; B={args.max_batch}, Δt={args.max_wait_ms:g} ms; "
        f"wrk -t1 -d{args.duration:g}s; {info['cpus']} CPUs ({info['cpu_model']}); LitServe {lit_version}"
    )
    print(f"# {title}", flush=True)
    for s in systems:
        if s.skipped:
            print(f"  skipped {s.name}: {s.skipped}", flush=True)
    total = sum(1 for s in systems if not s.skipped and s.kind != "raw") * len(args.connections)
    note(f"{total} measured runs of {args.duration:g} s, plus start-ups and warm-ups")

    load_before = os.getloadavg()
    started = time.monotonic()
    for s in systems:
        if s.skipped:
            continue
        if s.group == "litserve-cs":
            s.backend = choose_litserve_backend(args.litserve_backend, systems)
            if (reason := _backend_reason(s.backend)) is not None:
                s.skipped = reason
                print(f"  skipped {s.name}: {reason}", flush=True)
                continue
            assert s.cmd is not None
            s.cmd += ["--backend", s.backend]
            s.config = s.config.format(backend=s.backend)
        try:
            if s.kind == "raw":
                note(f"{s.name}: the raw model loop ...")
                run_raw(s, ctx)
            elif s.kind == "in-process":
                note(f"{s.name}: the engine in this process ...")
                run_in_process(s, ctx)
            else:
                assign_ports(s)
                run_http(s, ctx)
        except Exception as exc:  # one system's failure is reported; the others still run
            traceback.print_exc()
            s.error = f"{type(exc).__name__}: {exc}"
            note(f"{s.name}: FAILED: {s.error.splitlines()[0]}")
    wall = time.monotonic() - started
    load_after = os.getloadavg()
    return report(systems, ctx, info, title, wall, (load_before, load_after))


def _backend_reason(backend: str) -> str | None:
    if backend == "torch" or loader_takes_backend():
        return None
    return f"chronoserve's ChronosLoader takes no backend= yet, so backend {backend!r} cannot run here"


def choose_litserve_backend(asked: str, systems: Sequence[System]) -> str:
    """``asked``, or with ``auto`` the backend of the fastest raw loop measured in this run (else torch)."""
    if asked != "auto":
        return asked
    measured = [(s.raw["per_second"], s.backend) for s in systems if s.kind == "raw" and s.raw is not None]
    return max(measured)[1] if measured else "torch"


def report(
    systems: Sequence[System],
    ctx: Context,
    info: dict[str, Any],
    title: str,
    wall: float,
    load: tuple[Any, Any],
) -> int:
    args = ctx.args
    ran = [s for s in systems if s.skipped is None]
    upstream = {s.name: s.points for s in ran if s.group == "litserve"}
    best: dict[int, str | None] = {}
    for c in args.connections:
        b = best_of({name: pts.get(c) for name, pts in upstream.items()})
        best[c] = b[0] if b else None
    # raw: the same rate at every C, for the tables' ratios
    for s in ran:
        if s.kind == "raw" and s.raw is not None:
            s.points = {
                c: Point(c, s.raw["per_second"], requests=s.raw.get("requests", 0), exact=True)
                for c in args.connections
            }
    print(f"\nload average {load[0][0]:.2f} before, {load[1][0]:.2f} after; {wall / 60:.1f} min in all")
    for c in args.connections:
        best_text = f"best LitServe (as its users write it): {best[c]}" if best[c] else "no LitServe run"
        print(f"\n## wrk -c{c} ({args.duration:g} s per system; {best_text})")
        print("\n".join(format_table(ran, c, best[c])))
    print(LEGEND)
    if busy := busy_elsewhere(ran):
        print(f"  NOTE: other work on this machine took CPU during the runs ({busy}): those numbers are not fair.")
    for s in ran:
        if s.answer is not None:
            print(f"  {s.name}: {answer_text(s)}")
        if s.kind == "http" and s.error is None:
            print(f"  {s.name}: {s.config}; exit code after SIGTERM: {s.exit_code}")
        if s.error is not None:
            print(f"  {s.name}: FAILED: {s.error.splitlines()[0]}")
    default = next((s for s in ran if s.group == "chronoserve"), None)
    in_process = next((s for s in ran if s.kind == "in-process" and s.backend == default_backend(ran)), None)
    goal_list: list[Goal] = []
    if default is not None and default.points:
        answer_ok = (default.answer or {}).get("ok")
        goal_list = goals(
            default.points,
            upstream,
            in_process.points if in_process is not None else {},
            args.connections,
            answer_ok if isinstance(answer_ok, bool) else None,
        )
        print("\ngoals (chronoserve serve with its defaults; fp32):")
        for g in goal_list:
            print(f"  {g.text}")
    for s in ran:  # the variants against in-process on their own backend
        if s.group == "chronoserve-configs" and s.points:
            ip = next((x for x in ran if x.kind == "in-process" and x.backend == s.backend), None)
            if ip is not None:
                shares = ", ".join(
                    f"-c{c} {_x(ratio(p.per_s, ip.points[c].per_s))}" for c, p in s.points.items() if c in ip.points
                )
                print(f"  {s.name} over HTTP vs {ip.name}: {shares}")
    # raw rows are not per C in the files: only the run's numbers
    for s in ran:
        if s.kind == "raw":
            s.points = {}
    figure = plot(ran, args.connections, args.out / "http.png", title)
    rows = csv_rows(ran, args.connections, best)
    with (args.out / "http.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    document = {
        "meta": {
            "title": title,
            "args": vars_json(args),
            "machine": info,
            "load_average": {"before": load[0], "after": load[1]},
            "wall_s": wall,
            "body": {
                "model_name": args.model,
                "series": args.series,
                "context_points": CONTEXT_POINTS,
                "horizon_hours": HORIZON,
                "quantile_levels": list(LEVELS),
                "bytes": len(ctx.body_bytes),
            },
            "wrk": shlex.join(wrk_command("URL", 0, args.duration, ctx.script, args.wrk_timeout)).replace("-c0", "-cC"),
            "chronoserve_engine": f"{ctx.workers} workers x {ctx.torch_threads} torch threads (serve's defaults)",
            "caveats": [
                "wrk is closed-loop (coordinated omission): latencies are at the rate each server sustains",
                "wrk, the servers and this process share the machine's cores",
                "random weights: timings only" if ctx.body["model_name"].startswith("random/") else "",
            ],
        },
        "systems": [
            {
                "name": s.name,
                "kind": s.kind,
                "group": s.group,
                "backend": s.backend,
                "config": s.config,
                "command": shlex.join(s.cmd) if s.cmd else None,
                "skipped": s.skipped,
                "error": s.error,
                "exit_code": s.exit_code,
                "answer": s.answer,
                "raw": s.raw,
                "points": [dataclasses.asdict(p) for p in s.points.values()],
            }
            for s in systems
        ],
        "best_litserve": {str(c): name for c, name in best.items()},
        "goals": [dataclasses.asdict(g) for g in goal_list],
        "rows": rows,
        "figure": str(figure) if figure else None,
    }
    (args.out / "http.json").write_text(json.dumps(document, indent=2, default=str))
    print(f"\nwrote {args.out / 'http.json'}, {args.out / 'http.csv'}" + (f", {figure}" if figure else ""))
    failed = [s.name for s in ran if s.error is not None]
    different = [s.name for s in ran if (s.answer or {}).get("ok") is False]
    if different:
        print(f"answers differ from the raw eager backend's: {', '.join(different)}")
    return 1 if failed or different else 0


def busy_elsewhere(systems: Sequence[System], threshold: float = 0.25) -> str:
    """The runs during which other processes used more than ``threshold`` of a core, as text."""
    found = [
        f"{s.name} -c{c}: {p.other_cpu / p.seconds:.1f} cores"
        for s in systems
        for c, p in s.points.items()
        if p.other_cpu is not None and p.seconds and p.other_cpu / p.seconds > threshold
    ]
    return ", ".join(found)


def vars_json(args: argparse.Namespace) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}


if __name__ == "__main__":
    sys.path[:] = [p for p in sys.path if Path(p or os.curdir).resolve() != HERE]
    raise SystemExit(main())
