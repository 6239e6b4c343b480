"""Start-up that fails fast: a default model that cannot load stops ``serve`` with exit status 1 and
one line saying why (one process, and ``--http-workers``: no restarts), rather than a server that is
never ready; ``exit_on_error=False`` keeps the old retrying behaviour (test_server_hardening)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager
from test_serve_process import free_port
from test_server import FAKE, fake_loader
from waiting import until

from chronoserve.models.catalog import find_entry
from chronoserve.server import create_app
from chronoserve.testing import server_settings

#: Seconds a `serve` process gets to give up (it needs seconds; a hang would be the bug).
EXIT_WITHIN = 240


def broken_checkpoint(tmp_path: Path) -> Path:
    """A checkpoint that describes itself (its config and the safetensors header: it resolves) but
    whose weights are cut short (its load fails)."""
    entry = find_entry("chronos-2-pm25")
    assert entry is not None
    shipped = entry.shipped_dir()
    assert shipped is not None
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_bytes((shipped / "config.json").read_bytes())
    data = (shipped / "model.safetensors").read_bytes()
    header = 8 + int.from_bytes(data[:8], "little")
    (broken / "model.safetensors").write_bytes(data[: header + 16])
    return broken


async def test_a_default_model_that_fails_to_load_stops_the_app_once() -> None:
    loader = fake_loader(fail_load={FAKE})
    app = create_app(server_settings(default_model=FAKE), loader=loader)
    stopped: list[bool] = []
    app.state.runtime.on_fatal = lambda: stopped.append(True)
    async with LifespanManager(app) as manager:
        runtime = app.state.runtime
        await until(lambda: runtime.fatal is not None, "the warm-up gives up")
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            r = await client.get("/readyz")
    assert r.status_code == 503 and r.json()["status"] == "default_model_failed"
    assert "told to fail" in runtime.fatal and FAKE in runtime.fatal
    assert stopped == [True] and loader.loads[FAKE] == 1  # told once, never retried


def serve(tmp_path: Path, *options: str) -> subprocess.CompletedProcess[str]:
    model = broken_checkpoint(tmp_path)
    cmd = [sys.executable, "-m", "chronoserve", "serve", "--port", str(free_port()), "--default-model", str(model)]
    return subprocess.run([*cmd, *options], capture_output=True, text=True, timeout=EXIT_WITHIN)


@pytest.mark.slow
@pytest.mark.torch
def test_serve_exits_1_with_one_line_when_its_default_model_cannot_load(tmp_path: Path) -> None:
    done = serve(tmp_path, "--backend", "torch")
    assert done.returncode == 1, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1, done.stderr
    assert "the default model" in errors[0] and "broken-model" in errors[0] and "failed to load" in errors[0]
    assert "Traceback" not in done.stderr


@pytest.mark.slow
@pytest.mark.torch
def test_serve_with_http_workers_stops_rather_than_restart_an_engine_that_cannot_serve(tmp_path: Path) -> None:
    done = serve(tmp_path, "--backend", "torch", "--http-workers", "1")
    assert done.returncode == 1, done.stderr
    assert "failed to load" in done.stderr and "stopping the server" in done.stderr
    assert "restarting" not in done.stderr and "Traceback" not in done.stderr
