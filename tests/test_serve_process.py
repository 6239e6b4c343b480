"""A real `chronoserve serve` process on 127.0.0.1: start, forecast, SIGTERM drain, exit 0."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

pytest.importorskip("torch")
pytestmark = [pytest.mark.torch, pytest.mark.slow]

MODEL = "random/tiny-chronos-bolt"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
        time.sleep(0.2)
    raise AssertionError("server not ready in time")


@pytest.fixture
def server(tmp_path):
    port = free_port()
    log = (tmp_path / "server.log").open("wb")
    cmd = [
        sys.executable, "-m", "chronoserve", "serve", "--host", "127.0.0.1", "--port", str(port),
        "--default-model", MODEL, "--max-batch", "64", "--max-wait-ms", "3000", "--drain-timeout", "20",
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
    r = httpx.post(f"{url}/forecast", json={"city": "dongsi", "horizon_hours": 8}, timeout=30)
    assert r.status_code == 200, r.text
    assert len(r.json()["median"]) == 8

    # 12 requests queue up behind a 3 s batching window; SIGTERM arrives while they wait.
    def one(i: int) -> httpx.Response:
        return httpx.post(
            f"{url}/forecast", json={"city": "dongsi", "horizon_hours": 4, "request_id": str(i)}, timeout=30
        )

    with ThreadPoolExecutor(12) as pool:
        futures = [pool.submit(one, i) for i in range(12)]
        time.sleep(1.0)
        assert all(not f.done() for f in futures)
        proc.send_signal(signal.SIGTERM)
        responses = [f.result() for f in futures]
    assert [r.status_code for r in responses] == [200] * 12
    assert sorted(r.json()["request_id"] for r in responses) == sorted(str(i) for i in range(12))
    # Drained at once rather than after the 3 s window: one batch of 12.
    assert {r.json()["batch_size"] for r in responses} == {12}
    assert proc.wait(timeout=30) == 0
    output = log.read_text()
    assert "Traceback" not in output
    assert "draining" in output
