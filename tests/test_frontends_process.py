"""``chronoserve serve --http-workers 2`` for real: three processes on 127.0.0.1 and torch.

The processes come from the preloaded fork server (chronoserve.forkserver). Across them a
forecast is answered; an engine process killed with requests in it fails them with 503 and is
restarted (from the fork server too); SIGTERM drains the queued requests through every process
and the server exits 0.
"""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from test_serve_process import free_port
from waiting import queue_depth, until_sync

if importlib.util.find_spec("torch") is None:
    pytest.skip("torch is not installed", allow_module_level=True)
pytestmark = [pytest.mark.torch, pytest.mark.slow, pytest.mark.timeout(240)]

MODEL = "random/tiny-chronos-bolt"
BODY = {"city": "dongsi", "horizon_hours": 8}
FULL_BATCH = {"requests": [BODY] * 64}  # --max-batch 64: runs at once, window or not


def engine_pids(log: Path) -> list[int]:
    return [int(p) for p in re.findall(r"started the engine process \(pid (\d+)\)", log.read_text())]


def connections(log: Path) -> int:
    return log.read_text().count("connected to the engine process")


def ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2.0).status_code == 200
    except httpx.TransportError:
        return False


def queued(url: str) -> float:
    try:
        return queue_depth(httpx.get(f"{url}/metrics", timeout=5.0).text)
    except httpx.TransportError:
        return -1


def test_front_end_processes_forecast_survive_an_engine_death_and_drain(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "server.log"
    cmd = [
        sys.executable, "-m", "chronoserve", "serve", "--host", "127.0.0.1", "--port", str(port),
        "--http-workers", "2", "--default-model", MODEL, "--max-batch", "64", "--max-wait-ms", "60000",
        "--drain-timeout", "20", "--no-warmup",
    ]  # fmt: skip
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ})
    try:
        until_sync(lambda: ready(url), "the server ready", deadline=120)
        r = httpx.post(f"{url}/forecast/batch", json=FULL_BATCH, timeout=60)
        assert r.status_code == 200, r.text
        assert {i["status"] for i in r.json()["results"]} == {200}
        assert {i["result"]["batch_size"] for i in r.json()["results"]} == {64}  # one engine saw all 64

        # Three requests wait behind the window; the engine process dies under them.
        with ThreadPoolExecutor(3) as pool:
            held = [pool.submit(httpx.post, f"{url}/forecast", json=BODY, timeout=60) for _ in range(3)]
            until_sync(lambda: queued(url) == 3, "three requests queued in the engine", deadline=60)
            (first,) = engine_pids(log_path)
            os.kill(first, signal.SIGKILL)
            answers = [f.result() for f in held]
        assert [a.status_code for a in answers] == [503] * 3
        assert all("retry-after" in a.headers for a in answers)

        until_sync(lambda: len(engine_pids(log_path)) == 2, "the engine process restarted", deadline=60)
        # Both front ends reconnected (each logs it: twice at the start, twice after the restart).
        until_sync(lambda: connections(log_path) >= 4, "both front ends reconnected", deadline=120)
        until_sync(lambda: ready(url), "the restarted engine ready", deadline=120)
        r = httpx.post(f"{url}/forecast/batch", json=FULL_BATCH, timeout=60)
        assert r.status_code == 200 and {i["status"] for i in r.json()["results"]} == {200}

        # SIGTERM with 12 requests queued behind the window: the drain runs them, every process exits.
        with ThreadPoolExecutor(12) as pool:
            waiting = [pool.submit(httpx.post, f"{url}/forecast", json=BODY, timeout=60) for _ in range(12)]
            until_sync(lambda: queued(url) == 12, "twelve requests queued", deadline=60)
            proc.send_signal(signal.SIGTERM)
            drained = [f.result() for f in waiting]
        assert [a.status_code for a in drained] == [200] * 12
        assert {a.json()["batch_size"] for a in drained} == {12}
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    text = log_path.read_text()
    assert "exited with signal SIGKILL" in text and "all processes stopped" in text
    # Each of the four starts (the engine twice, two front ends) from the fork server, each up in a logged time.
    assert len(re.findall(r"started the (engine|http-\d) process \(pid \d+\) from the fork server", text)) == 4
    assert len(re.findall(r"process \(pid \d+\) is up [\d.]+ s after its start \(fork-server\)", text)) == 4
    assert "Traceback" not in text


def test_two_engine_processes_serve_every_model_and_drain(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "server.log"
    other = "random/tiny-chronos-2"
    cmd = [
        sys.executable, "-m", "chronoserve", "serve", "--host", "127.0.0.1", "--port", str(port),
        "--engines", "2", "--default-model", MODEL, "--models", other, "--max-wait-ms", "1",
        "--host-cache-budget", "10MB", "--eviction", "gdsf",
    ]  # fmt: skip
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ})
    try:
        until_sync(lambda: ready(url), "the server ready", deadline=120)
        for model in (MODEL, other, MODEL, other):
            r = httpx.post(f"{url}/forecast", json={**BODY, "model_name": model}, timeout=60)
            assert r.status_code == 200, r.text
            assert r.json()["model"]["name"] == model
            assert r.json()["served_by"] in {"engine-0", "engine-1"}  # each answer says which engine
        models = httpx.get(f"{url}/models", timeout=60).json()
        assert {m["engine"] for m in models["resident"]} == {0, 1}
        assert [e["engine"] for e in models["engines"]] == [0, 1]
        metrics = httpx.get(f"{url}/metrics", timeout=60).text
        assert 'chronoserve_resident_models{engine="1"}' in metrics
        assert 'chronoserve_process_start_seconds{engine="0",method="fork-server"}' in metrics
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log_path.read_text()
    assert "with 1 front-end process(es) and 2 engine process(es)" in text
    assert "started the engine-1 process" in text and "all processes stopped" in text
