"""The access log and request ids: one line per request with its id, status, model, batch size and
times; ``X-Request-ID`` taken from the caller (or made) and returned; JSON logs with those fields."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import httpx
import pytest
from test_serve_process import serve_process, stop, wait_ready
from test_server import FAKE, client_for

from chronoserve.logs import JsonFormatter, configure_logging
from chronoserve.testing import server_settings

BODY = {"target": [1.0, 2.0, 3.0], "horizon_hours": 2}


def access_records(caplog: pytest.LogCaptureFixture) -> list[dict]:
    return [r.access for r in caplog.records if r.name == "chronoserve.access"]


async def test_a_forecast_is_one_line_with_its_id_model_batch_and_times(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="chronoserve.access"):
        async with client_for() as client:
            r = await client.post("/forecast", json=BODY, headers={"X-Request-ID": "order-42/a"})
    assert r.status_code == 200, r.text
    assert r.headers["x-request-id"] == "order-42/a" and r.json()["request_id"] == "order-42/a"
    (record,) = [a for a in access_records(caplog) if a["path"] == "/forecast"]
    assert record["request_id"] == "order-42/a" and record["status"] == 200 and record["method"] == "POST"
    assert record["model"] == FAKE and record["batch_size"] == 1
    for key in ("queue_ms", "load_ms", "inference_ms", "total_ms"):
        assert record[key] >= 0.0, key
    lines = [r.getMessage() for r in caplog.records if r.name == "chronoserve.access"]
    line = next(line for line in lines if "/forecast" in line)
    assert '"POST /forecast" 200 id=order-42/a' in line and f"model={FAKE}" in line


async def test_ids_are_made_when_absent_or_unfit_and_a_body_id_is_kept(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="chronoserve.access"):
        async with client_for() as client:
            made = await client.post("/forecast", json=BODY)
            unfit = await client.post("/forecast", json=BODY, headers={"X-Request-ID": "x" * 129})
            spaced = await client.post("/forecast", json=BODY, headers={"X-Request-ID": "a b"})
            own = await client.post("/forecast", json={**BODY, "request_id": "mine"}, headers={"X-Request-ID": "h"})
            bad = await client.post("/forecast", json={**BODY, "horizon_hours": 0}, headers={"X-Request-ID": "e-1"})
            health = await client.get("/healthz", headers={"X-Request-ID": "probe"})
    for r in (made, unfit, spaced):
        rid = r.headers["x-request-id"]
        assert len(rid) == 32 and int(rid, 16) >= 0 and r.json()["request_id"] == rid
    assert own.headers["x-request-id"] == "h" and own.json()["request_id"] == "mine"  # the body's id is the answer's
    assert bad.status_code == 422 and bad.headers["x-request-id"] == "e-1"
    assert health.headers["x-request-id"] == "probe"
    by_id = {a["request_id"]: a for a in access_records(caplog)}
    assert by_id["e-1"]["status"] == 422 and by_id["probe"]["path"] == "/healthz"


async def test_the_access_log_can_be_turned_off(caplog: pytest.LogCaptureFixture) -> None:
    settings = server_settings(default_model=FAKE, policy_options={"max_wait": 0.001}, access_log=False)
    with caplog.at_level(logging.INFO, logger="chronoserve.access"):
        async with client_for(settings) as client:
            r = await client.post("/forecast", json=BODY, headers={"X-Request-ID": "quiet"})
    assert r.headers["x-request-id"] == "quiet"  # ids still go in and out
    assert access_records(caplog) == []


@pytest.fixture
def restored_loggers() -> Iterator[None]:
    """configure_logging changes process-wide loggers: put them back for the other tests."""
    names = ("chronoserve", "uvicorn", "uvicorn.error")
    loggers = [logging.getLogger(n) for n in names]
    saved = {x.name: (list(x.handlers), x.propagate, x.level) for x in loggers}
    yield
    for n, (handlers, propagate, level) in saved.items():
        logger = logging.getLogger(n)
        logger.handlers[:] = handlers
        logger.propagate, logger.level = propagate, level


def test_json_logs_are_one_object_per_line_with_the_access_fields(restored_loggers: None) -> None:
    configure_logging("info", role="http-0", log_format="json")
    stream = io.StringIO()
    handler = logging.getLogger("chronoserve").handlers[-1]
    assert isinstance(handler.formatter, JsonFormatter)
    handler.setStream(stream)  # type: ignore[attr-defined]
    logging.getLogger("chronoserve.access").info("line", extra={"access": {"request_id": "r1", "status": 200}})
    logging.getLogger("chronoserve.server").warning("something %s", "happened")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["request_id"] == "r1" and first["status"] == 200 and first["logger"] == "chronoserve.access"
    assert first["process"] == "http-0" and first["level"] == "INFO" and first["time"].endswith("+00:00")
    assert second["message"] == "something happened" and second["level"] == "WARNING"
    with pytest.raises(ValueError, match="log_format"):
        configure_logging("info", log_format="xml")


@pytest.mark.slow
@pytest.mark.torch
def test_serve_with_json_logs_writes_json_lines_and_the_access_line(tmp_path) -> None:
    options = ["--log-format", "json", "--default-model", "random/tiny-chronos-bolt", "--backend", "torch"]
    with (tmp_path / "serve.log").open("w+") as log, serve_process(*options, "--no-warmup", stderr=log) as (url, proc):
        wait_ready(url, proc)
        r = httpx.post(
            f"{url}/forecast", json={"city": "dongsi", "horizon_hours": 4}, headers={"X-Request-ID": "j-1"}, timeout=120
        )
        assert r.status_code == 200 and r.headers["x-request-id"] == "j-1"
        stop(proc)
        log.seek(0)
        written = log.read()
    records = [json.loads(line) for line in written.splitlines() if line.startswith("{")]
    messages = " ".join(r["message"] for r in records)
    assert "Uvicorn running on" in messages or "Application startup complete" in messages  # uvicorn's, as JSON
    (access,) = [r for r in records if r.get("request_id") == "j-1"]
    assert access["status"] == 200 and access["model"] == "random/tiny-chronos-bolt" and access["path"] == "/forecast"
