"""Worker processes from the preloaded fork server (chronoserve.forkserver).

A forked worker answers exactly as a spawned one; the fork server is single-threaded with torch
imported; one that ran parallel torch work is refused (spawn instead); one started earlier
without the preload still serves; a worker reports how it started and gets back what a spawned
process has (environment, standard streams, signals, its parent), drains when its parent is
killed, and is stopped when the parent is interrupted while it waits.

The fork server of this test process keeps chronoserve's preload: the cases that need another
fork server run in a process of their own.
"""

from __future__ import annotations

import importlib.util
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from waiting import until_sync

from chronoserve import forkserver
from chronoserve.forkserver import FORK_SERVER, SPAWN, run_worker, start_worker, worker_context

needs_torch = pytest.mark.skipif(
    importlib.util.find_spec("torch") is None or importlib.util.find_spec("chronos") is None,
    reason="needs torch and chronos-forecasting",
)
pytestmark = [pytest.mark.timeout(300), pytest.mark.skipif(sys.platform == "win32", reason="no fork server")]

MODEL = "random/tiny-chronos-bolt"
ROOT = Path(__file__).resolve().parent.parent


# -- what the workers run (module level: a worker imports them by name) -------------------------


def imported_at_start() -> dict[str, Any]:
    """What the worker holds before its target imports anything."""
    return {
        "modules": [m for m in ("numpy", "torch", "transformers", "chronos") if m in sys.modules],
        "threads": forkserver.os_threads(),
        "started": forkserver.started(),
    }


def as_spawned(tag: str) -> dict[str, Any]:
    print(f"stdout of {tag}", flush=True)
    print(f"stderr of {tag}", file=sys.stderr, flush=True)
    parent = multiprocessing.parent_process()
    return {
        "variable": os.environ.get("CHRONOSERVE_TEST_VARIABLE"),
        "sigint_raises": signal.getsignal(signal.SIGINT) is signal.default_int_handler,
        "sigchld_default": signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL,
        "parent": parent.pid if parent is not None else None,
        "os_parent": os.getppid(),
    }


def wait_until_stopped(marker: str) -> None:
    Path(f"{marker}.tmp").write_text(str(os.getpid()))
    os.replace(f"{marker}.tmp", marker)  # seen whole or not at all
    while True:
        signal.pause()


def exit_status(code: int) -> int:
    return code


def requests() -> list[Any]:
    from chronoserve import ForecastRequest

    rng = np.random.default_rng(7)
    return [
        ForecastRequest(
            model=MODEL, target=(50 + np.cumsum(rng.normal(size=96))).tolist(), horizon=8, request_id=str(i)
        )
        for i in range(3)
    ]


def run_script(tmp_path: Path, code: str, *args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``code`` as a script in a fresh interpreter (its own fork server); its last stdout line as JSON."""
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(code))
    done = subprocess.run(
        [sys.executable, str(script), *args],
        cwd=tmp_path,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["stderr"] = done.stderr
    return result


# -- the fork server ------------------------------------------------------------------------------


@needs_torch
@pytest.mark.torch
@pytest.mark.slow
def test_the_fork_server_is_single_threaded_and_has_torch_imported():
    zygote = forkserver.zygote()
    assert zygote.method == FORK_SERVER and zygote.preloaded is True
    assert zygote.threads == 1 and zygote.missing == () and zygote.import_seconds is not None
    worker = start_worker(imported_at_start)
    finished = worker.finished()
    worker.process.join()
    assert finished is not None and worker.process.exitcode == 0
    state = finished.value
    assert state["modules"] == ["numpy", "torch", "transformers", "chronos"] and state["threads"] == 1
    assert state["started"] == worker.startup()
    assert state["started"].zygote_pid == zygote.pid and state["started"].preloaded is True


@needs_torch
@pytest.mark.torch
@pytest.mark.slow
def test_forked_and_spawned_workers_answer_alike(model_cache):
    from chronoserve.sync import forecast

    options = {"policy_options": {"max_batch": 3, "max_wait": 600}}  # one batch of the three, on both
    answers = {}
    for context in (worker_context(), multiprocessing.get_context("spawn")):
        worker = start_worker(forecast, (requests(),), options, context=context)
        finished = worker.finished()
        worker.process.join()
        assert finished is not None and worker.process.exitcode == 0
        start = worker.startup()
        assert start is not None and start.method == worker.method and start.seconds >= 0
        answers[worker.method] = finished.value
    assert set(answers) == {FORK_SERVER, SPAWN}
    for forked, spawned in zip(answers[FORK_SERVER], answers[SPAWN], strict=True):
        assert forked.request_id == spawned.request_id and forked.batch_size == spawned.batch_size == 3
        np.testing.assert_array_equal(forked.quantiles, spawned.quantiles)
        np.testing.assert_array_equal(forked.median, spawned.median)


@needs_torch
@pytest.mark.torch
@pytest.mark.slow
def test_a_fork_server_that_ran_parallel_torch_work_is_refused_for_spawn(tmp_path):
    (tmp_path / "parallel_zygote.py").write_text(
        "import torch\ntorch.set_num_threads(2)\nx = torch.randn(512, 512)\n(x @ x).sum()\n"
    )
    code = """
        import json, logging, sys
        from chronoserve import forkserver

        if __name__ == "__main__":
            logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
            zygote = forkserver.zygote(["parallel_zygote"])
            worker = forkserver.start_worker(dict)
            start = worker.startup()
            worker.process.join()
            print(json.dumps({"method": zygote.method, "threads": zygote.threads, "worker": start.method,
                              "exitcode": worker.process.exitcode}))
    """
    result = run_script(tmp_path, code, env={"PYTHONPATH": str(tmp_path)})
    assert result["method"] == SPAWN and result["threads"] >= 2
    assert result["worker"] == SPAWN and result["exitcode"] == 0
    (line,) = [line for line in result["stderr"].splitlines() if "fork server" in line]
    assert line.startswith("WARNING refused the fork server") and f"it has {result['threads']} threads" in line


def test_a_fork_server_started_without_the_preload_still_serves(tmp_path):
    code = """
        import json, logging, multiprocessing
        from chronoserve import forkserver

        if __name__ == "__main__":
            logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
            other = multiprocessing.get_context("forkserver").Process(target=dict)
            other.start()
            other.join()
            zygote = forkserver.zygote()
            worker = forkserver.start_worker(dict)
            start = worker.startup()
            worker.process.join()
            print(json.dumps({"method": zygote.method, "preloaded": zygote.preloaded, "worker": start.method,
                              "worker_preloaded": start.preloaded, "exitcode": worker.process.exitcode}))
    """
    result = run_script(tmp_path, code)
    assert result["method"] == result["worker"] == FORK_SERVER and result["exitcode"] == 0
    assert result["preloaded"] is False and result["worker_preloaded"] is False
    assert "was started before chronoserve's, without its preload" in result["stderr"]


# -- what a worker gets ---------------------------------------------------------------------------


def test_a_forked_worker_has_what_a_spawned_one_would(capfd, monkeypatch, tmp_path):
    zygote = forkserver.zygote()
    if zygote.method != FORK_SERVER:
        pytest.skip(zygote.reason)
    monkeypatch.setenv("CHRONOSERVE_TEST_VARIABLE", "set after the fork server started")
    # A worker ignores SIGINT only if its parent does (a test run in a background job does):
    # here the parent takes it as an interactive Python would.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        worker = start_worker(as_spawned, ("the worker",))
    finally:
        signal.signal(signal.SIGINT, previous)
    finished = worker.finished()
    worker.process.join()
    assert finished is not None and worker.method == FORK_SERVER
    assert finished.value == {
        "variable": "set after the fork server started",
        "sigint_raises": True,  # the fork server ignores SIGINT
        "sigchld_default": True,  # and catches SIGCHLD
        "parent": os.getpid(),  # what exit_with_parent watches
        "os_parent": zygote.pid,
    }
    out, err = capfd.readouterr()  # this process's standard streams as they are now, not the fork server's
    assert "stdout of the worker" in out and "stderr of the worker" in err

    log = tmp_path / "stderr.log"
    worker = start_worker(as_spawned, ("a quiet worker",), stdout=os.devnull, stderr=log)
    worker.process.join()
    out, err = capfd.readouterr()
    assert "quiet" not in out + err and log.read_text() == "stderr of a quiet worker\n"


def test_a_worker_reports_how_it_started_and_its_exit_status():
    worker = start_worker(exit_status, (3,), context=multiprocessing.get_context("spawn"))
    start = worker.startup()
    worker.process.join()
    assert start is not None and start.method == SPAWN and start.seconds >= 0 and start.zygote_pid is None
    assert worker.process.exitcode == 3 and worker.finished() is not None
    assert run_worker(exit_status, (0,)) == 0


def test_an_interrupted_wait_stops_the_worker(tmp_path, monkeypatch):
    """Ctrl-C (or SIGTERM made KeyboardInterrupt, as profile does) while waiting for a worker stops it."""
    forkserver.zygote()  # decided before join is patched (the probe joins its child)
    marker = tmp_path / "up"
    join = multiprocessing.process.BaseProcess.join

    def interrupted_once(self: Any, timeout: float | None = None) -> None:
        if timeout is None and not marker.exists():
            until_sync(marker.exists, "the worker up", deadline=120)
            raise KeyboardInterrupt
        join(self, timeout)

    monkeypatch.setattr(multiprocessing.process.BaseProcess, "join", interrupted_once)
    with pytest.raises(KeyboardInterrupt):
        run_worker(wait_until_stopped, (str(marker),), grace=30)
    pid = int(marker.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # stopped and reaped


def test_a_forked_worker_drains_when_its_parent_is_killed(tmp_path):
    """exit_with_parent watches the process that started the worker, not its OS parent (the fork server)."""
    code = """
        import json, multiprocessing, os, signal, sys
        from pathlib import Path
        from chronoserve import forkserver
        from chronoserve.server.process import exit_with_parent

        def drained(signum, frame):
            Path(sys.argv[1], "drained").write_text("SIGTERM")
            os._exit(0)

        def child(directory):
            signal.signal(signal.SIGTERM, drained)
            exit_with_parent()
            up = {"parent": multiprocessing.parent_process().pid, "os_parent": os.getppid()}
            Path(directory, "up.tmp").write_text(json.dumps(up))
            os.replace(Path(directory, "up.tmp"), Path(directory, "up"))  # seen whole or not at all
            while True:
                signal.pause()

        if __name__ == "__main__":
            forkserver.zygote(["chronoserve.server.process"])
            worker = forkserver.start_worker(child, (sys.argv[1],), context=forkserver.worker_context())
            print(worker.method, flush=True)
            worker.process.join()
    """
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(code))
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path)], cwd=tmp_path, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == FORK_SERVER
        until_sync((tmp_path / "up").exists, "the worker up", deadline=120)
        up = json.loads((tmp_path / "up").read_text())
        assert up["parent"] == proc.pid and up["os_parent"] != proc.pid  # forked by the fork server
        proc.kill()
        proc.wait()
        until_sync((tmp_path / "drained").exists, "the worker drained", deadline=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


# -- the benchmark ----------------------------------------------------------------------------------


def test_the_benchmark_table_puts_the_two_kinds_side_by_side():
    from benches import load_bench

    bench = load_bench("coldstart_workers")
    rows = [
        {"method": method, "startup_s": s / 10, "first_forecast_s": s, "load_s": s / 2}
        for method, s in (("spawn", 6.0), ("fork-server", 0.3), ("spawn", 5.0), ("fork-server", 0.2))
    ]
    assert bench.summary(rows, "first_forecast_s")["spawn"] == {"min": 5.0, "median": 5.5, "max": 6.0}
    table = bench.format_table(rows)
    assert table.splitlines()[2].split() == ["spawn", "0.500", "0.550", "0.600", "5.000", "5.500", "6.000",
                                             "2.500", "2.750", "3.000"]  # fmt: skip
    assert table.endswith("(spawn / fork-server): 22.0x")
