"""chronoserve on Ray Serve against ``chronoserve serve``, side by side in one run (issue 17's goals).

    pip install -e '.[ray]'                  # ray[serve]==2.60.0
    sudo apt-get install wrk
    python bench/ray.py                      # all three sections: about 10 minutes on 2 cores
    python bench/ray.py --sections overhead --duration 10

Sections (``--sections``, all by default), each printed as a table with its goal met or not:

- ``overhead``: ``chronoserve serve`` (its defaults), ``serve --http-workers 1`` (the same split
  into a front end and an engine process, without Ray), ``serve --ray --replicas 1`` (a local
  Ray on 127.0.0.1; its own front end in front of one engine replica, reached directly) and
  ``serve --ray --ray-proxy --replicas 1`` (Serve's HTTP proxy and the ingress deployment, as
  ``serve run`` runs it), each driven by ``wrk -c{C} -d{D}s`` with one ``POST /forecast`` body
  (240 points of real PM2.5, 24 steps) on ``--model``, one after the other, on the same cores.
  Goal: ``serve --ray`` ≥ 0.85x the throughput of ``serve``.
- ``affinity``: ``traces/zipf-models.jsonl`` (16 random-weight models, Zipf popularity with
  bursts) replayed open-loop (``chronoserve.replay`` against the URL) on ``serve --ray
  --replicas 2`` on a 2-node cluster, each replica with a memory budget of a third of the
  models' bytes, requests placed by readiness, then at random (``--placement random``) to
  compare. A request hits when its model was resident where it ran (its answer's
  ``cold_start`` is false). Goal: ≥ 90 % hits placed by readiness.
- ``scaling``: a simulated 2-node cluster (``ray.cluster_utils.Cluster``, one CPU each, on
  127.0.0.1), ``serve --ray --ray-address`` with 1 and then 2 replicas (1 worker, 1 torch
  thread each: one CPU each) of ``--scaling-model`` (random weights: a request's work outweighs
  the front end's, as when one scales out; with a light model, on 2 shared cores, the front end
  and Ray take what a second replica would need), wrk as in ``overhead``. Goal: 2 replicas ≥ 1.5x one. Ray's own
  processes, the front end and wrk share the machine's cores: the table says what each group
  used (CPU seconds during the run, from /proc).

Output: the tables on stdout, progress on stderr, ``ray.json`` under ``--out`` (default
``results/ray``). Random weights give real timings and meaningless forecasts. Compare only
numbers from one run.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if __name__ == "__main__":
    # `python bench/ray.py` puts bench/ first on sys.path, where `import ray` would find this file;
    # and bench/coldstart.py puts it back when loaded: Ray is imported here first, for good.
    sys.path[:] = [p for p in sys.path if Path(p or os.curdir).resolve() != HERE]
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # loopback (read at import)
    import ray  # noqa: F401

DEFAULT_MODEL = "chronos-2-pm25"
SCALING_MODEL = "random/chronos-bolt-small"
SECTIONS = ("overhead", "affinity", "scaling")
GOAL_OVERHEAD, GOAL_HITS, GOAL_SCALING = 0.85, 0.90, 1.5
TRACE = ROOT / "traces" / "zipf-models.jsonl"
ONE_CPU = {"workers": 1, "torch_threads": 1}
RAY, RAY_PROXY = "serve --ray --replicas 1", "serve --ray --ray-proxy --replicas 1"
SPLIT = "serve --http-workers 1"


def server_settings(model: str, **engine: Any) -> Any:
    """``serve``'s settings with ``model`` the default and ``engine``'s (serve's backend unless given)."""
    from chronoserve.server import ServerSettings
    from chronoserve.settings import SERVE_BACKEND, EngineSettings

    engine.setdefault("backend", SERVE_BACKEND)
    return ServerSettings(engine=EngineSettings(**engine), default_model=model)


def sibling(script: str) -> ModuleType:
    """``bench/<script>.py`` as a module (``http.py``'s wrk helpers, ``serving.py``'s free port,
    ``coldstart.py``'s models): ``bench/http.py``'s ``load_sibling``, which this loads ``http.py`` with."""
    name = f"_bench_{script}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, HERE / f"{script}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def free_port() -> int:
    return int(sibling("serving").free_port())  # as bench/http.py does


def wait_ready(url: str, deadline: float = 600.0) -> None:
    import httpx

    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            if httpx.get(f"{url}/readyz", timeout=10).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} was not ready in {deadline:g} s")


# -- CPU by process group, from /proc ------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def _group(cmdline: str) -> str | None:
    if "chronoserve-engine" in cmdline:
        return "engine replicas"
    if "Ingress" in cmdline:
        return "ingress"
    if "ProxyActor" in cmdline:
        return "Serve proxy"
    if "wrk" in cmdline.split("\0", 1)[0]:
        return "wrk"
    if "chronoserve serve" in cmdline.replace("\0", " "):
        return "front end (driver)" if "--ray" in cmdline else "chronoserve serve"
    if "multiprocessing.forkserver" in cmdline:  # serve --http-workers' processes (from its fork server)
        return "chronoserve serve"
    if "ray" in cmdline or "gcs_server" in cmdline or "raylet" in cmdline:
        return "Ray's own"
    return None


def cpu_by_group() -> dict[str, float]:
    """CPU seconds so far of every process, added up by :func:`_group` (others left out)."""
    totals: dict[str, float] = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        group = _group(cmdline)
        if group is not None:
            totals[group] = totals.get(group, 0.0) + (int(fields[11]) + int(fields[12])) / _TICK
    return totals


def used(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    return {k: round(after[k] - before.get(k, 0.0), 2) for k in sorted(after) if after[k] - before.get(k, 0.0) > 0.005}


# -- wrk ----------------------------------------------------------------------------------------------


class Wrk:
    """One body, posted by wrk (bench/http.py's script and parser)."""

    def __init__(self, model: str, out: Path) -> None:
        from chronoserve.data import SeriesStore

        self.http = sibling("http")
        values = SeriesStore.embedded().values(self.http.DEFAULT_SERIES).tolist()
        self.body = self.http.make_body(model, self.http.last_complete_window(values, self.http.CONTEXT_POINTS))
        self.script = out / "post.lua"
        self.script.write_text(self.http.lua_script(self.body))

    def check(self, url: str) -> dict[str, Any]:
        import httpx

        r = httpx.post(f"{url}/forecast", content=self.body, headers={"Content-Type": "application/json"}, timeout=120)
        r.raise_for_status()
        return dict(r.json())

    def run(self, url: str, connections: int, duration: int, warmup: int = 3) -> dict[str, Any]:
        if warmup:
            subprocess.run(
                self.http.wrk_command(f"{url}/forecast", connections, warmup, self.script, 30), capture_output=True
            )
        before = cpu_by_group()
        done = subprocess.run(
            self.http.wrk_command(f"{url}/forecast", connections, duration, self.script, 30),
            capture_output=True,
            text=True,
            check=True,
        )
        cpu = used(before, cpu_by_group())
        result = self.http.parse_wrk(done.stdout)
        return {
            "requests_per_s": round(result.requests_per_s, 1),
            "p50_ms": round(result.percentiles.get(50.0, float("nan")) * 1000, 1),
            "p99_ms": round(result.percentiles.get(99.0, float("nan")) * 1000, 1),
            "errors": result.errors,
            "cpu_seconds": cpu,
            "seconds": duration,
        }


# -- the sections ---------------------------------------------------------------------------------


@contextmanager
def process(cmd: Sequence[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as sink:
        proc = subprocess.Popen(list(cmd), stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=180)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def overhead(model: str, connections: int, duration: int, out: Path) -> dict[str, Any]:
    wrk = Wrk(model, out)
    rows = {}
    systems = (
        ("serve", []),
        (SPLIT, ["--http-workers", "1"]),
        (RAY, ["--ray", "--replicas", "1"]),
        (RAY_PROXY, ["--ray", "--ray-proxy", "--replicas", "1"]),
    )
    for label, extra in systems:
        note(f"overhead: {label} ...")
        with serving(["--default-model", model, *extra], out / f"overhead-{len(rows)}.log") as url:
            answer = wrk.check(url)
            rows[label] = {**wrk.run(url, connections, duration), "served_by": answer.get("served_by")}
    ratio = rows[RAY]["requests_per_s"] / rows["serve"]["requests_per_s"]
    return {
        "model": model,
        "connections": connections,
        "rows": rows,
        "ratio": round(ratio, 3),
        "proxy_ratio": round(rows[RAY_PROXY]["requests_per_s"] / rows["serve"]["requests_per_s"], 3),
        "split_ratio": round(rows[SPLIT]["requests_per_s"] / rows["serve"]["requests_per_s"], 3),
        "met": ratio >= GOAL_OVERHEAD,
    }


@contextmanager
def cluster(nodes: int) -> Iterator[str]:
    """A Ray cluster of ``nodes`` one-CPU nodes on 127.0.0.1; its address (``serve --ray-address``)."""
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        for _ in range(nodes - 1):
            c.add_node(num_cpus=1)
        yield c.address
    finally:
        c.shutdown()


@contextmanager
def serving(args: Sequence[str], log: Path) -> Iterator[str]:
    """``chronoserve serve`` with ``args`` on a free port, until it is ready; its URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with process([sys.executable, "-m", "chronoserve", "serve", "--port", str(port), *args], log):
        wait_ready(url)
        yield url


def scaling(model: str, backend: str, connections: int, duration: int, out: Path) -> dict[str, Any]:
    wrk = Wrk(model, out)
    rows = {}
    with cluster(2) as address:
        for replicas in (1, 2):
            note(f"scaling: {replicas} replica(s) of {model} ({backend}) on a 2-node cluster ...")
            args = ["--ray", "--ray-address", address, "--replicas", str(replicas), "--replica-cpus", "1"]
            args += ["--default-model", model, "--backend", backend, "--max-queue", "4096"]
            args += ["--workers", "1", "--torch-threads", "1"]
            with serving(args, out / f"scaling-{replicas}.log") as url:
                wrk.check(url)
                rows[str(replicas)] = wrk.run(url, connections, duration)
    ratio = rows["2"]["requests_per_s"] / rows["1"]["requests_per_s"]
    return {
        "model": f"{model} ({backend})",
        "connections": connections,
        "rows": rows,
        "ratio": round(ratio, 3),
        "met": ratio >= GOAL_SCALING,
    }


def affinity(limit: int | None, out: Path) -> dict[str, Any]:
    from chronoserve.replay import replay
    from chronoserve.replay.targets import HTTPTarget
    from chronoserve.traces import read_trace

    coldstart = sibling("coldstart")
    trace = read_trace(TRACE)
    requests = list(trace.requests[:limit] if limit else trace.requests)
    sizes = coldstart.trace_models(trace)
    note("affinity: materialising the trace's random checkpoints ...")
    coldstart.prepare(list(sizes), "torch")
    third = sum(sizes.values()) // 3
    rows = {}
    with cluster(2) as address:
        for placement in ("readiness", "random"):
            note(f"affinity: {len(requests)} requests on 2 replicas, placed by {placement} ...")
            args = ["--ray", "--ray-address", address, "--replicas", "2", "--replica-cpus", "1"]
            args += ["--default-model", "random/chronos-bolt-tiny", "--backend", "torch", "--policy", "batched"]
            args += ["--max-resident", str(len(sizes)), "--memory-budget", str(third), "--eviction", "gdsf"]
            args += ["--workers", "1", "--torch-threads", "1", "--max-queue", "4096", "--placement", placement]
            with serving(args, out / f"affinity-{placement}.log") as url:
                result = asyncio.run(replay(requests, HTTPTarget(url), progress=True, plots=False))
            s = result.summary
            rows[placement] = {
                "requests": s.requests,
                "ok": s.ok,
                "errors": s.errors,
                "hit_ratio": round(1.0 - s.cold_starts / s.ok, 3) if s.ok else None,
                "p50_ms": round(s.percentiles["end_to_end"][50.0] * 1000, 1),
                "p99_ms": round(s.percentiles["end_to_end"][99.0] * 1000, 1),
            }
    hits = rows["readiness"]["hit_ratio"] or 0.0
    return {
        "trace": str(TRACE.relative_to(ROOT)),
        "models": len(sizes),
        "model_bytes": sum(sizes.values()),
        "memory_budget_per_replica": third,
        "rows": rows,
        "met": hits >= GOAL_HITS,
    }


# -- the report -----------------------------------------------------------------------------------


def _verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def _cpu(cpu: Mapping[str, float]) -> str:
    return ", ".join(f"{k} {v:.1f}" for k, v in cpu.items())


def _wrk_table(title: str, first: str, section: Mapping[str, Any], goal: str) -> list[str]:
    lines = [title, "", f"| {first} | req/s | p50 ms | p99 ms | errors | CPU s by group |", "|---|---|---|---|---|---|"]
    for label, r in section["rows"].items():
        cells = (label, r["requests_per_s"], r["p50_ms"], r["p99_ms"], r["errors"], _cpu(r["cpu_seconds"]))
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return [*lines, "", f"{goal}: {_verdict(section['met'])}", ""]


def report(results: Mapping[str, Any]) -> str:
    lines = []
    if "overhead" in results:
        o = results["overhead"]
        title = f"## overhead: {o['model']}, wrk -c{o['connections']}"
        goal = (
            f"Ray / serve: {o['ratio']:.2f}x (goal >= {GOAL_OVERHEAD}x; the same split without Ray, "
            f"--http-workers 1: {o['split_ratio']:.2f}x; through Serve's proxy {o['proxy_ratio']:.2f}x)"
        )
        lines += _wrk_table(title, "system", o, goal)
    if "affinity" in results:
        a = results["affinity"]
        lines += [
            f"## affinity: {a['trace']}, {a['models']} models, {a['model_bytes'] / 1e6:.0f} MB, "
            f"{a['memory_budget_per_replica'] / 1e6:.0f} MB resident per replica, 2 replicas",
            "",
            "| placement | requests | ok | hit ratio | p50 ms | p99 ms |",
            "|---|---|---|---|---|---|",
        ]
        for label, r in a["rows"].items():
            lines.append(
                f"| {label} | {r['requests']} | {r['ok']} | {r['hit_ratio']} | {r['p50_ms']} | {r['p99_ms']} |"
            )
        lines += ["", f"hits placed by readiness (goal >= {GOAL_HITS:.0%}): {_verdict(a['met'])}", ""]
    if "scaling" in results:
        s = results["scaling"]
        title = f"## scaling: 2 one-CPU nodes, {s['model']}, wrk -c{s['connections']}"
        lines += _wrk_table(title, "replicas", s, f"2 replicas / 1: {s['ratio']:.2f}x (goal >= {GOAL_SCALING}x)")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of {', '.join(SECTIONS)}")
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"the model wrk's body names (default: {DEFAULT_MODEL})")
    parser.add_argument(
        "--scaling-model",
        default=SCALING_MODEL,
        help=f"the scaling section's model (default: {SCALING_MODEL}, whose work per request outweighs the "
        "front end's: on shared cores a light model measures the front end, not the replicas)",
    )
    parser.add_argument("--scaling-backend", default="torch", choices=["torch", "onnx"])
    parser.add_argument("--connections", type=int, default=64, help="wrk's connections (default: 64)")
    parser.add_argument("--duration", type=int, default=20, help="seconds of wrk per point (default: 20)")
    parser.add_argument("--limit", type=int, default=None, help="replay only the trace's first N requests")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "ray")
    args = parser.parse_args(argv)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"--sections: unknown {', '.join(unknown)} (known: {', '.join(SECTIONS)})")
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("CHRONOSERVE_CACHE", str(Path(tempfile.gettempdir()) / "chronoserve-bench-cache"))
    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform()}}
    runs = {
        "overhead": lambda: overhead(args.model, args.connections, args.duration, args.out),
        "affinity": lambda: affinity(args.limit, args.out),
        "scaling": lambda: scaling(args.scaling_model, args.scaling_backend, args.connections, args.duration, args.out),
    }
    for section in sections:
        results[section] = runs[section]()
        (args.out / "ray.json").write_text(json.dumps(results, indent=2))  # each section kept as it ends
        note(report({section: results[section]}))
    print(report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
