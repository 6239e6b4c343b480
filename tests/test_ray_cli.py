"""``chronoserve serve --ray`` as a user runs it against a cluster (``--ray-address``, the Ray
tests' cluster on 127.0.0.1): its own HTTP in front of two replicas on the cluster, ready, answers
that say their replica, SIGTERM drains and exits 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

pytest.importorskip("ray")
pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(300), pytest.mark.xdist_group("ray")]

from ray_cluster import PATIENT, RayCluster, free_port  # noqa: E402
from waiting import until_sync  # noqa: E402

MODEL = "random/tiny-chronos-bolt"


def ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=10).status_code == 200
    except httpx.TransportError:
        return False


def test_serve_ray_serves_says_which_replica_and_drains_on_sigterm(tmp_path: Path, ray_cluster: RayCluster) -> None:
    port = free_port()  # `serve --ray` serves HTTP itself, in front of the replicas it deploys on the cluster
    url = f"http://127.0.0.1:{port}"
    cmd = [
        sys.executable, "-m", "chronoserve", "serve", "--ray", "--ray-address", ray_cluster.address,
        "--replicas", "2", "--port", str(port), "--default-model", MODEL, "--backend", "torch",
    ]  # fmt: skip
    log = tmp_path / "serve.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, env={**os.environ, **PATIENT})
    try:
        until_sync(lambda: ready(url), "serve --ray ready", deadline=240)
        r = httpx.post(f"{url}/forecast", json={"city": "dongsi", "horizon_hours": 8}, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["model"]["name"] == MODEL
        models = httpx.get(f"{url}/models", timeout=60).json()
        assert len(models["replicas"]) == 2 and r.json()["served_by"] in [m["replica"] for m in models["replicas"]]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
