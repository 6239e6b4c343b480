"""chronoserve against LitServe and the raw model loop, on the shipped traces, in one run.

    python bench/serving.py                                  # both shipped traces, B=32, Δt=10 ms
    python bench/serving.py --traces traces/poisson.jsonl --limit 100 --systems batched,litserve   # quicker

On the same materialised random-weight models (the trace's own: random weights, so timings
only) and the same requests, one system after the other:

1. ``raw``: the limit. Every request of the trace prepared before the clock starts, grouped
   by (model, batch key), the backend's ``predict`` on batches of B from the engine's worker
   threads (2 x 1 torch thread on 2 cores), as ``bench/engine.py``'s raw loop: wall time ->
   requests/s. It ignores the send times: it is capacity, not a served rate.
2. chronoserve ``naive``, ``lru`` and ``batched`` in-process (``InProcessTarget``, models
   warmed up before the clock): the engine without HTTP.
3. ``http batched`` (and ``http lru`` if asked): ``chronoserve serve`` as a subprocess on
   127.0.0.1 (``--max-queue 100000``, the trace's models), replayed with ``HTTPTarget``,
   then SIGTERM and a check that it exits 0.
4. ``litserve``: LitServe 0.2.19 as a subprocess (``bench/_litserve_app.py``) with its own
   batching (``max_batch_size=B``, ``batch_timeout=Δt``), serving the same models through
   chronoserve's backends and answering the same ``POST /forecast`` bodies; replayed with the
   same ``HTTPTarget``. Two configurations by default (``--litserve-configs``): ``litserve``,
   LitServe as it comes (1 worker process, torch's default of one thread per core: 1 x 2 on 2
   cores), and ``litserve WxT`` with chronoserve's own split (2 worker processes x 1 torch thread).

Every HTTP-driven system is driven identically: the open-loop replayer (latency from the
scheduled send time), one httpx client in this process, ``Accept-Encoding: identity``. The
load generator shares the machine's cores with the server: its CPU seconds are printed.

Per trace it prints p50/p99 (end to end, ms), throughput, errors and the ratios against
chronoserve ``batched`` in-process, and writes under ``--out`` (default ``results/serving``):
``<trace>/<system>/`` (the replayer's records, .hgrm files, summary, plots), the servers'
logs ``<trace>/<system>.log``, ``<trace>/compare.png`` (all systems side by side) and
``serving.json`` (every number). Timings vary with the machine and its load: compare only
numbers from one run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from chronoserve.engine import default_workers
from chronoserve.replay import HTTPTarget, InProcessTarget, preload_torch, replay, write_outputs
from chronoserve.replay.plots import plot_compare, plot_replay
from chronoserve.replay.targets import Outcome, Target
from chronoserve.traces import read_trace

HERE = Path(__file__).resolve().parent
LITSERVE_APP = HERE / "_litserve_app.py"
IN_PROCESS = ("naive", "lru", "batched")
HTTP_POLICIES = {"http-batched": "batched", "http-lru": "lru", "http-naive": "naive"}
DEFAULT_SYSTEMS = "naive,lru,batched,http-batched,litserve"
REFERENCE = "batched"
#: Same headers for every HTTP server: LitServe gzips bodies over 1,000 bytes when the client accepts it.
HTTP_HEADERS = {"Accept-Encoding": "identity"}
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


class StartupTimeout(RuntimeError):
    """A server did not become ready in time (it may still have been loading)."""


@dataclass
class LitServeConfig:
    workers: int
    torch_threads: int
    fast_queue: bool = False

    @classmethod
    def parse(cls, text: str) -> LitServeConfig:
        """``WxT`` (worker processes x torch threads), optionally ``+zmq`` (``fast_queue=True``)."""
        body, _, extra = text.strip().partition("+")
        w, _, t = body.partition("x")
        if not (w.isdigit() and t.isdigit()) or int(w) < 1 or int(t) < 1 or extra not in ("", "zmq"):
            raise argparse.ArgumentTypeError(f"LitServe config {text!r}: expected WxT or WxT+zmq, e.g. 1x2")
        return cls(int(w), int(t), extra == "zmq")

    @property
    def name(self) -> str:
        return f"{self.workers}x{self.torch_threads}" + (" zmq" if self.fast_queue else "")

    def is_default(self) -> bool:
        """LitServe as it comes: one worker process, torch's default threads (one per core), no ZMQ."""
        return self.workers == 1 and self.torch_threads == (os.cpu_count() or 1) and not self.fast_queue


@dataclass
class Run:
    """One system on one trace."""

    label: str
    kind: str  # "raw", "in-process", "http"
    config: str
    summary: Any = None  # chronoserve.replay.Summary
    records: list[Any] = field(default_factory=list)
    medians: dict[str, np.ndarray] = field(default_factory=dict)
    client_cpu: float | None = None
    server_cpu: float | None = None
    machine_cpu: float | None = None
    wall: float | None = None
    exit_code: int | None = None
    raw: dict[str, Any] | None = None
    error: str | None = None


# -- the raw model loop ----------------------------------------------------------------------


class RawModels:
    """chronoserve's backends, loaded once in this process for the raw loop."""

    def __init__(self) -> None:
        from chronoserve.models.loader import ChronosLoader

        self.loader = ChronosLoader()
        self.specs: dict[str, Any] = {}
        self.backends: dict[str, Any] = {}

    def get(self, name: str) -> tuple[Any, Any]:
        if name not in self.backends:
            self.specs[name] = self.loader.resolve(name)
            self.backends[name] = self.loader.load(self.specs[name])
        return self.specs[name], self.backends[name]


def raw_loop(
    requests: Sequence[Any], models: RawModels, batch: int, workers: int, torch_threads: int
) -> dict[str, Any]:
    """Seconds for the backends alone to forecast every request, in batches of B per (model, batch key)."""
    import torch

    from chronoserve.data import SeriesStore
    from chronoserve.models.base import batch_key, covariate_signature
    from chronoserve.request import prepare
    from chronoserve.server.convert import build_request
    from chronoserve.server.schemas import ForecastIn

    store = SeriesStore.embedded()
    groups: dict[tuple[str, Any], list[Any]] = {}
    for r in requests:  # set-up, before the clock: what the server does before queueing
        item = ForecastIn.model_validate(r.to_http_body(), strict=False)
        spec, _ = models.get(item.model_name)
        p = prepare(build_request(item, store, item.model_name).request, spec)
        key = batch_key(spec, p.horizon, covariate_signature(p.past_covariates, p.future_covariates))
        groups.setdefault((spec.name, key), []).append(p)
    jobs = [
        (models.get(name)[1], group[i : i + batch])
        for (name, _), group in groups.items()
        for i in range(0, len(group), batch)
    ]

    def init() -> None:
        torch.set_num_threads(torch_threads)

    def run(job: tuple[Any, list[Any]]) -> int:
        backend, prepared = job
        return len(backend.predict(prepared))

    with ThreadPoolExecutor(workers, initializer=init) as pool:
        first = {id(backend): (backend, chunk) for backend, chunk in jobs}
        list(pool.map(run, first.values()))  # warm-up: one batch per model
        start = time.perf_counter()
        answered = sum(pool.map(run, jobs))
        seconds = time.perf_counter() - start
    assert answered == len(requests)
    return {
        "requests": len(requests),
        "seconds": seconds,
        "per_second": len(requests) / seconds,
        "batches": len(jobs),
        "mean_batch": len(requests) / len(jobs),
    }


# -- servers as subprocesses ----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and all its descendants so far (Linux ``/proc``)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total, todo, seen = 0.0, [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
            total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue  # gone meanwhile
    return total


def own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def machine_cpu_seconds() -> float:
    """Busy CPU seconds of the whole machine so far, every process of every user (``/proc/stat``)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return float("nan")
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path
    exit_code: int | None = None


def _log_tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join("    " + line for line in text[-lines:])


@contextmanager
def serve(cmd: list[str], ready_path: str, port: int, log: Path, timeout: float) -> Iterator[Server]:
    """Start ``cmd`` (listening on 127.0.0.1:``port``), wait for ``ready_path`` to answer 200, stop it after.

    The server runs in its own session so that every process it starts can be killed by its
    group if it does not stop on SIGTERM within 60 s.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as handle:
        handle.write(("$ " + " ".join(cmd) + "\n").encode())
        handle.flush()
        proc = subprocess.Popen(
            cmd, stdout=handle, stderr=subprocess.STDOUT, env={**os.environ, **OFFLINE_ENV}, start_new_session=True
        )
        server = Server(proc, url, log)
        try:
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"{cmd[1]} exited with {proc.returncode} before ready; log {log}:\n{_log_tail(log)}"
                    )
                try:
                    if httpx.get(url + ready_path, timeout=2.0).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise StartupTimeout(
                        f"not ready after {timeout:.0f} s (GET {ready_path}); log {log}:\n{_log_tail(log)}"
                    )
                time.sleep(0.25)
            yield server
            proc.send_signal(signal.SIGTERM)
            server.exit_code = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)  # the group of the session started above
                proc.wait(timeout=30)
            if server.exit_code is None:
                server.exit_code = proc.returncode


def chronoserve_cmd(policy: str, port: int, models: Sequence[str], args: argparse.Namespace) -> list[str]:
    cmd = [
        sys.executable, "-m", "chronoserve", "serve", "--host", "127.0.0.1", "--port", str(port),
        "--policy", policy, "--max-queue", "100000", "--models", ",".join(models), "--default-model", models[0],
        "--workers", str(args.workers), "--torch-threads", str(args.torch_threads),
    ]  # fmt: skip
    if policy == "batched":
        cmd += ["--max-batch", str(args.batch), "--max-wait-ms", str(args.max_wait_ms)]
    return cmd


def litserve_cmd(config: LitServeConfig, port: int, models: Sequence[str], args: argparse.Namespace) -> list[str]:
    cmd = [
        sys.executable, str(LITSERVE_APP), "--port", str(port), "--models", ",".join(models),
        "--max-batch", str(args.batch), "--max-wait-ms", str(args.max_wait_ms),
        "--workers", str(config.workers), "--torch-threads", str(config.torch_threads),
    ]  # fmt: skip
    return [*cmd, "--fast-queue"] if config.fast_queue else cmd


# -- replaying ------------------------------------------------------------------------------


class Capture(Target):
    """Passes requests to ``inner`` and keeps each answer's median (to compare answers across systems)."""

    def __init__(self, inner: Target) -> None:
        self.inner = inner
        self.label = inner.label
        self.medians: dict[str, np.ndarray] = {}

    async def start(self) -> None:
        await self.inner.start()

    async def send(self, request: Any) -> Outcome:
        outcome = await self.inner.send(request)
        if outcome.status == 200 and outcome.body is not None:
            self.medians[request.request_id] = np.asarray(outcome.body["median"], dtype=np.float64)
        return outcome

    async def close(self) -> None:
        await self.inner.close()

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()


def replay_on(run: Run, requests: Sequence[Any], target: Target, out: Path, meta: dict[str, Any], plots: bool) -> None:
    capture = Capture(target)
    with measure_cpu(run):
        result = asyncio.run(replay(requests, capture, label=run.label, meta=meta, lead=0.5))
    run.summary, run.records, run.medians = result.summary, result.records, capture.medians
    # The files and plots after the measurement.
    write_outputs(out / slug(run.label), result.records, result.summary)
    if plots and result.records:
        plot_replay(out / slug(run.label), result.records, result.summary)


@contextmanager
def measure_cpu(run: Run) -> Iterator[None]:
    """CPU seconds of this process and of the whole machine over the block (the server's are taken apart)."""
    own, machine, wall = own_cpu_seconds(), machine_cpu_seconds(), time.monotonic()
    yield
    run.client_cpu = own_cpu_seconds() - own
    run.machine_cpu = machine_cpu_seconds() - machine
    run.wall = time.monotonic() - wall


def other_cpu(run: Run) -> float | None:
    """CPU seconds used during the run by processes neither of this benchmark nor of its server."""
    if run.machine_cpu is None or run.client_cpu is None:
        return None
    return max(0.0, run.machine_cpu - run.client_cpu - (run.server_cpu or 0.0))


def slug(label: str) -> str:
    return label.replace(" ", "-")


def run_trace(path: Path, args: argparse.Namespace, raw_models: RawModels) -> list[Run]:
    trace = read_trace(path)
    requests = list(trace.requests)[: args.limit] if args.limit else list(trace.requests)
    models = sorted({r.model_name for r in requests})
    out = args.out / path.stem
    meta = {
        "trace": path.name,
        "requests": len(requests),
        "models": models,
        "random_weights": any(m.startswith("random/") for m in models),
        "trace_meta": dict(trace.meta),
    }
    engine_config = f"{args.workers} workers x {args.torch_threads} torch threads"
    runs: list[Run] = []

    def note(text: str) -> None:
        print(f"[{path.name}] {text}", file=sys.stderr, flush=True)

    if "raw" in args.systems:
        note("raw model loop ...")
        run = Run("raw", "raw", f"{engine_config}, B={args.batch}")
        with measure_cpu(run):
            run.raw = raw_loop(requests, raw_models, args.batch, args.workers, args.torch_threads)
        runs.append(run)
    options = {"naive": {}, "lru": {}, "batched": {"max_batch": args.batch, "max_wait": args.max_wait_ms / 1000}}
    for policy in IN_PROCESS:
        if policy not in args.systems:
            continue
        note(f"in-process {policy} ...")
        run = Run(policy, "in-process", engine_config)
        target = InProcessTarget(
            policy,
            warm_models=models,
            policy_options=options[policy],
            workers=args.workers,
            torch_threads=args.torch_threads,
        )
        replay_on(run, requests, target, out, meta, args.system_plots)
        runs.append(run)
    http: list[tuple[str, str, list[str], int, str]] = []
    for system, policy in HTTP_POLICIES.items():
        if system in args.systems:
            port = free_port()
            http.append((f"http {policy}", engine_config, chronoserve_cmd(policy, port, models, args), port, "/readyz"))
    if "litserve" in args.systems:
        if importlib.util.find_spec("litserve") is None:
            note("litserve is not installed (pip install -e '.[bench]'): skipped")
        else:
            for config in args.litserve_configs:
                port = free_port()
                label = "litserve" if config.is_default() else f"litserve {config.name}"
                desc = f"{config.workers} process x {config.torch_threads} torch threads" + (
                    ", fast_queue" if config.fast_queue else ""
                )
                http.append((label, desc, litserve_cmd(config, port, models, args), port, "/health"))
    for label, desc, cmd, port, ready in http:
        note(f"{label}: starting {' '.join(cmd[1:3])} on port {port} ...")
        run = Run(label, "http", desc)
        try:
            with serve(cmd, ready, port, out / f"{slug(label)}.log", args.startup_timeout) as server:
                note(f"{label}: ready, replaying ...")
                before = tree_cpu_seconds(server.proc.pid)
                replay_on(run, requests, HTTPTarget(server.url, headers=HTTP_HEADERS), out, meta, args.system_plots)
                run.server_cpu = tree_cpu_seconds(server.proc.pid) - before
            run.exit_code = server.exit_code
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            run.error = f"{type(exc).__name__}: {exc}"
            note(f"{label}: FAILED: {run.error}")
        runs.append(run)
    return runs


# -- the report -----------------------------------------------------------------------------


def ratios(runs: Sequence[Run]) -> dict[str, dict[str, float | None]]:
    """Each system against chronoserve batched in-process: p50, p99 (lower is better) and throughput."""
    ref = next((r for r in runs if r.label == REFERENCE and r.summary is not None), None)
    out: dict[str, dict[str, float | None]] = {}
    for r in runs:
        if ref is None or (r.summary is None and r.raw is None):
            continue
        e2e = ref.summary.percentiles["end_to_end"]
        if r.raw is not None:
            out[r.label] = {"p50": None, "p99": None, "throughput": r.raw["per_second"] / ref.summary.throughput}
        else:
            mine = r.summary.percentiles["end_to_end"]
            out[r.label] = {
                "p50": mine[50.0] / e2e[50.0],
                "p99": mine[99.0] / e2e[99.0],
                "throughput": r.summary.throughput / ref.summary.throughput,
            }
    return out


def answer_check(runs: Sequence[Run]) -> dict[str, dict[str, float | int]]:
    """Largest |median difference| of each system against batched in-process, over the requests both answered."""
    ref = next((r for r in runs if r.label == REFERENCE and r.summary is not None), None)
    out: dict[str, dict[str, float | int]] = {}
    if ref is None:
        return out
    for r in runs:
        if r is ref or not r.medians:
            continue
        common = sorted(set(r.medians) & set(ref.medians))
        diffs = [float(np.max(np.abs(r.medians[k] - ref.medians[k]))) for k in common if r.medians[k].size]
        out[r.label] = {"compared": len(common), "max_abs_diff": max(diffs) if diffs else float("nan")}
    return out


def _f(value: float | None, fmt: str, width: int) -> str:
    return f"{'-':>{width}s}" if value is None or value != value else f"{value:{width}{fmt}}"


def format_report(runs: Sequence[Run], rel: dict[str, dict[str, float | None]]) -> str:
    head = (
        f"  {'system':<16s}{'p50 ms':>9s}{'p99 ms':>9s}{'req/s':>8s}{'ok':>9s}{'batch':>7s}"
        f"{'p50 x':>8s}{'p99 x':>8s}{'req/s x':>9s}{'wall s':>8s}{'cpu gen':>9s}{'cpu srv':>9s}{'cpu oth':>9s}  errors"
    )
    lines = [head]
    for r in runs:
        x = rel.get(r.label, {})
        cpu = _f(r.wall, ".1f", 8) + "".join(_f(v, ".1f", 9) for v in (r.client_cpu, r.server_cpu, other_cpu(r)))
        if r.raw is not None:
            lines.append(
                f"  {r.label:<16s}{'-':>9s}{'-':>9s}{r.raw['per_second']:8.1f}{r.raw['requests']:>9d}"
                f"{r.raw['mean_batch']:7.1f}{'-':>8s}{'-':>8s}{_f(x.get('throughput'), '.3f', 9)}{cpu}  none"
            )
            continue
        if r.summary is None:
            lines.append(f"  {r.label:<16s}  FAILED: {(r.error or '').splitlines()[0]}")
            continue
        s = r.summary
        e2e = s.percentiles["end_to_end"]
        errors = ", ".join(f"{k}: {v}" for k, v in s.errors.items()) or "none"
        lines.append(
            f"  {r.label:<16s}{e2e[50.0] * 1000:9.1f}{e2e[99.0] * 1000:9.1f}{s.throughput:8.1f}"
            f"{f'{s.ok}/{s.requests}':>9s}{_f(s.mean_batch, '.1f', 7)}"
            f"{_f(x.get('p50'), '.3f', 8)}{_f(x.get('p99'), '.3f', 8)}{_f(x.get('throughput'), '.3f', 9)}"
            f"{cpu}  {errors}"
        )
    return "\n".join(lines)


LEGEND = """\
  x: ratio to chronoserve batched in-process, same run (p50 x, p99 x: lower is better; req/s x: higher).
  raw: the backends alone on every request at once (no send times, no queueing): capacity, not a served rate.
  batch: mean size of the model call each request ran in (LitServe: its (model, batch key) group).
  wall s: the run's wall time; raw and in-process include loading and warming the models, HTTP servers
  were started before it. cpu columns cover the same span; writing files and plots comes after.
  cpu gen: CPU seconds of this process during the run: the load generator (and the engine, in-process).
  cpu srv: of the server's processes. cpu oth: of everything else on the machine (other users' work)."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--traces", default="traces/burst.jsonl,traces/poisson.jsonl", help="comma-separated")
    parser.add_argument("--batch", type=int, default=32, help="B: chronoserve --max-batch, LitServe max_batch_size")
    parser.add_argument(
        "--max-wait-ms", type=float, default=10.0, help="Δt: chronoserve --max-wait-ms, LitServe batch_timeout"
    )
    parser.add_argument("--limit", type=int, default=None, help="only the first N requests of each trace (development)")
    parser.add_argument("--out", type=Path, default=Path("results/serving"))
    parser.add_argument(
        "--systems",
        default=f"raw,{DEFAULT_SYSTEMS}",
        help="comma-separated: raw, naive, lru, batched, http-batched, http-lru, http-naive, litserve "
        "(default: all but http-lru and http-naive)",
    )
    parser.add_argument(
        "--litserve-configs",
        default=None,
        help="LitServe runs: WORKERSxTORCH_THREADS[+zmq], comma-separated (+zmq: fast_queue=True), e.g. 1x2,2x1; "
        "default: 1 x cores (LitServe's defaults) and chronoserve's workers x torch threads",
    )
    parser.add_argument("--workers", type=int, default=default_workers(), help="chronoserve inference threads")
    parser.add_argument("--torch-threads", type=int, default=None, help="chronoserve torch threads per worker")
    parser.add_argument("--startup-timeout", type=float, default=300.0, help="seconds a server may take to be ready")
    parser.add_argument("--no-system-plots", dest="system_plots", action="store_false", help="skip per-system PNGs")
    args = parser.parse_args(argv)
    args.torch_threads = args.torch_threads or max(1, (os.cpu_count() or 1) // args.workers)
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    known = {"raw", *IN_PROCESS, *HTTP_POLICIES, "litserve"}
    if unknown := sorted(set(args.systems) - known):
        parser.error(f"--systems: unknown {unknown}; known: {sorted(known)}")
    if args.litserve_configs is None:
        args.litserve_configs = ",".join(
            dict.fromkeys([f"1x{os.cpu_count() or 1}", f"{args.workers}x{args.torch_threads}"])
        )
    try:
        args.litserve_configs = [LitServeConfig.parse(c) for c in args.litserve_configs.split(",") if c.strip()]
    except argparse.ArgumentTypeError as exc:
        parser.error(f"--litserve-configs: {exc}")
    if args.limit is not None and args.limit < 1:
        parser.error("--limit: must be at least 1")
    paths = [Path(p.strip()) for p in args.traces.split(",") if p.strip()]
    for p in paths:
        if not p.is_file():
            parser.error(f"--traces: no such file: {p}")

    # Set-up, not measured: torch imports and the random checkpoints written into the cache.
    print("preparing: importing torch, materialising the traces' random models ...", file=sys.stderr, flush=True)
    preload_torch()
    from chronoserve.models.loader import ChronosLoader
    from chronoserve.models.materialize import materialize

    loader = ChronosLoader()
    for name in sorted({r.model_name for p in paths for r in read_trace(p).requests}):
        spec = loader.resolve(name)
        if spec.random_weights:
            materialize(str(spec.extra.get("catalog_name", name)), spec.source)
    lit_version = _version("litserve")
    litserve_desc = ", ".join(
        f"{c.workers} worker process x {c.torch_threads} torch threads" + (" (fast_queue)" if c.fast_queue else "")
        for c in args.litserve_configs
    )
    print(
        f"# random weights: timings only. B={args.batch}, Δt={args.max_wait_ms:g} ms; chronoserve {args.workers} "
        f"workers x {args.torch_threads} torch threads; LitServe {lit_version}: {litserve_desc}; "
        f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, torch {_version('torch')}",
        flush=True,
    )
    raw_models = RawModels()
    report: dict[str, Any] = {
        "meta": {
            "argv": sys.argv if argv is None else argv,
            "random_weights": True,
            "batch": args.batch,
            "max_wait_ms": args.max_wait_ms,
            "chronoserve": f"{args.workers} workers x {args.torch_threads} torch threads",
            "litserve": {"version": lit_version, "configs": [c.name for c in args.litserve_configs]},
            "cpus": os.cpu_count(),
            "torch": _version("torch"),
            "http_headers": HTTP_HEADERS,
        },
        "traces": {},
    }
    status = 0
    for path in paths:
        load = os.getloadavg()
        runs = run_trace(path, args, raw_models)
        load_after = os.getloadavg()
        rel = ratios(runs)
        answers = answer_check(runs)
        n = next((r.summary.requests for r in runs if r.summary is not None), None)
        print(f"\n## {path.name}: {n} requests (random weights: timings only); load average {load[0]:.2f} before, "
              f"{load_after[0]:.2f} after")  # fmt: skip
        print(format_report(runs, rel))
        print(LEGEND)
        for r in runs:
            if r.kind == "http" and r.summary is not None:
                print(f"  {r.label}: {r.config}; exit code after SIGTERM: {r.exit_code}")
                if r.exit_code != 0:
                    status = 1
            if r.error is not None:
                status = 1
        if answers:
            print(
                "  answers, max |median - batched median|: "
                + ", ".join(f"{k} {v['max_abs_diff']:.2g} ({v['compared']} requests)" for k, v in answers.items())
            )
        figure = None
        replayed = [r for r in runs if r.summary is not None]
        if replayed:
            figure = plot_compare(args.out / path.stem / "compare.png", [(r.summary, r.records) for r in replayed])
            print(f"  files: {args.out / path.stem}/ (per system), figure: {figure}")
        report["traces"][path.stem] = {
            "trace": str(path),
            "load_average": {"before": load, "after": load_after},
            "runs": [
                {
                    "label": r.label,
                    "kind": r.kind,
                    "config": r.config,
                    "summary": r.summary.to_dict() if r.summary is not None else None,
                    "raw": r.raw,
                    "client_cpu_s": r.client_cpu,
                    "server_cpu_s": r.server_cpu,
                    "other_cpu_s": other_cpu(r),
                    "wall_s": r.wall,
                    "exit_code": r.exit_code,
                    "error": r.error,
                }
                for r in runs
            ],
            "ratios_to_batched": rel,
            "answers_vs_batched": answers,
            "figure": str(figure) if figure else None,
        }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serving.json").write_text(json.dumps(report, indent=2, default=str))
    print(f"\nwrote {args.out / 'serving.json'}")
    return status


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


if __name__ == "__main__":
    raise SystemExit(main())
