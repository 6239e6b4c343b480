"""A real `chronoserve serve` process on 127.0.0.1: start, forecast, SIGTERM drain, exit 0."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from waiting import queue_depth, until_sync

if importlib.util.find_spec("torch") is None:  # the server process needs it, this one does not
    pytest.skip("torch is not installed", allow_module_level=True)
pytestmark = [pytest.mark.torch, pytest.mark.slow]

MODEL = "random/tiny-chronos-bolt"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve_process(*options: str, stderr: Any = subprocess.DEVNULL, scheme: str = "http") -> Iterator[tuple[str, Any]]:
    """A `chronoserve serve` process with ``options`` on a free port of 127.0.0.1: its URL and the
    process (killed at the end if still running; :func:`stop` drains it as an operator would)."""
    port = free_port()
    cmd = [sys.executable, "-m", "chronoserve", "serve", "--port", str(port), *options]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=stderr, env={**os.environ})
    try:
        yield f"{scheme}://127.0.0.1:{port}", proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def stop(proc: Any) -> None:
    """SIGTERM: the server drains and exits 0."""
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited early with {proc.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError("server not ready in time")


@pytest.fixture
def server(tmp_path):
    port = free_port()
    log = (tmp_path / "server.log").open("wb")
    cmd = [
        sys.executable, "-m", "chronoserve", "serve", "--host", "127.0.0.1", "--port", str(port),
        "--default-model", MODEL, "--max-batch", "64", "--max-wait-ms", "60000", "--drain-timeout", "20",
        "--no-warmup",  # the warm-up's lone request would wait out the 60 s window: the test loads the model
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc)
        yield url, proc, tmp_path / "server.log"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        log.close()


def test_serve_forecast_then_sigterm_drains_in_flight_requests(server):
    url, proc, log = server
    # A full batch (--max-batch 64) runs at once, window or not: it loads the model and forecasts.
    batch = {"requests": [{"city": "dongsi", "horizon_hours": 8}] * 64}
    r = httpx.post(f"{url}/forecast/batch", json=batch, timeout=60)
    assert r.status_code == 200, r.text
    assert [i["status"] for i in r.json()["results"]] == [200] * 64
    assert {len(i["result"]["median"]) for i in r.json()["results"]} == {8}
    assert {i["result"]["batch_size"] for i in r.json()["results"]} == {64}

    # 12 requests queue up behind a batching window longer than any client waits (--max-wait-ms
    # 60000, timeout 30 s): SIGTERM arrives once the server's queue gauge says all 12 wait, and
    # only the drain can answer them, at once.
    def one(i: int) -> httpx.Response:
        return httpx.post(
            f"{url}/forecast", json={"city": "dongsi", "horizon_hours": 4, "request_id": str(i)}, timeout=30
        )

    def all_queued() -> bool:
        failed = [f.exception() for f in futures if f.done()]
        assert not failed, f"a request ended before SIGTERM: {failed}"
        return queue_depth(httpx.get(f"{url}/metrics", timeout=30).text) == 12

    with ThreadPoolExecutor(12) as pool:
        futures = [pool.submit(one, i) for i in range(12)]
        until_sync(all_queued, "12 requests in the server's queue (chronoserve_queue_depth)", poll=0.02)
        assert all(not f.done() for f in futures)
        proc.send_signal(signal.SIGTERM)
        responses = [f.result() for f in futures]
    assert [r.status_code for r in responses] == [200] * 12, [r.text for r in responses]
    assert sorted(r.json()["request_id"] for r in responses) == sorted(str(i) for i in range(12))
    assert all(len(r.json()["median"]) == 4 and len(r.json()["timestamps"]) == 4 for r in responses)
    # Drained at once rather than after the 60 s window: one batch of 12.
    assert {r.json()["batch_size"] for r in responses} == {12}
    assert proc.wait(timeout=30) == 0
    output = log.read_text()
    assert "Traceback" not in output
    assert "draining" in output
