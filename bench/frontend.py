"""What the HTTP front end costs per request, with a model that costs nothing (issue 15's baseline).

    python bench/frontend.py                 # about 20 s
    python bench/frontend.py --requests 500  # quicker

The server's ASGI app (``chronoserve.server.create_app``: routing, JSON decoding and validation,
the engine's queue and worker threads, the answer, metrics) serves ``POST /forecast`` from a
fake model that answers at once, called directly as ASGI (no sockets, no uvicorn: those come on
top), side by side in one run with two references on the same machine and the same body: a bare
Starlette route that validates the body with pydantic and answers with orjson, and a raw ASGI
callable that decodes with orjson and answers at once. For each: wall time per request one at a
time, and CPU time per request (this process, every thread) with 64 requests in flight.

Timings vary with the machine and its load: compare only numbers from one run.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

MODEL = "random/chronos-bolt-tiny"  # served by the fake loader: no weights, no torch
BODY = orjson.dumps({"model_name": MODEL, "city": "dongsi", "horizon_hours": 24, "context_hours": 240})
App = ASGIApp


async def call(app: App, body: bytes = BODY) -> int:
    """One ``POST /forecast`` straight into ``app``; its status."""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/forecast", "raw_path": b"/forecast", "query_string": b"", "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8000),
    }  # fmt: skip
    sent = False
    status = 0

    async def receive() -> Any:
        nonlocal sent
        if sent:
            await asyncio.Event().wait()  # no disconnect while the answer is computed
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Any) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


def raw_app() -> App:
    """Decode with orjson, answer at once: the floor of any Python ASGI route."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        orjson.loads(message["body"])
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": orjson.dumps({"ok": True})})

    return app


def starlette_app() -> App:
    """A bare Starlette route: pydantic validation of the same body, an orjson answer."""
    from pydantic import BaseModel
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    class Body(BaseModel):
        model_name: str
        city: str
        horizon_hours: int
        context_hours: int

    async def forecast(request: Request) -> Response:
        item = Body.model_validate_json(await request.body())
        return Response(orjson.dumps({"city": item.city, "median": [0.0] * item.horizon_hours}), 200)

    app: App = Starlette(routes=[Route("/forecast", forecast, methods=["POST"])])
    return app


async def measure(app: App, requests: int, in_flight: int = 64) -> dict[str, float]:
    """Wall microseconds per request one at a time; CPU microseconds per request ``in_flight`` at once."""
    for _ in range(50):  # warm-up: imports, caches, the model's first load
        assert await call(app) == 200
    walls = []
    for _ in range(requests):
        started = time.perf_counter()
        status = await call(app)
        walls.append(time.perf_counter() - started)
        assert status == 200, status
    cpu0, wall0 = time.process_time(), time.perf_counter()
    done = 0
    while done < requests:
        statuses = await asyncio.gather(*(call(app) for _ in range(min(in_flight, requests - done))))
        assert all(s == 200 for s in statuses), statuses[:3]
        done += len(statuses)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return {
        "median_us": 1e6 * statistics.median(walls),
        "p99_us": 1e6 * sorted(walls)[int(0.99 * len(walls))],
        "cpu_us_at_64": 1e6 * cpu / requests,
        "per_s_at_64": requests / wall,
    }


async def run(requests: int) -> dict[str, dict[str, float]]:
    from asgi_lifespan import LifespanManager

    from chronoserve.server import create_app
    from chronoserve.testing import FakeLoader, fake_spec, server_settings

    spec = fake_spec(MODEL, family="chronos-bolt", context_length=2048, max_horizon=64, supports_covariates=False)
    settings = server_settings(default_model=MODEL, policy_options={"max_wait": 0.0})
    app = create_app(settings, loader=FakeLoader(specs={MODEL: spec}))
    results = {}
    async with LifespanManager(app) as manager:  # (the warm-up's first request waits for the model's load)
        results["chronoserve"] = await measure(manager.app, requests)
    results["starlette + pydantic"] = await measure(starlette_app(), requests)
    results["raw ASGI"] = await measure(raw_app(), requests)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per measurement (default 2000)")
    args = parser.parse_args(argv)
    results = asyncio.run(run(args.requests))
    raw = results["raw ASGI"]["median_us"]
    print(f"POST /forecast with a zero-cost model, {args.requests} requests each, called as ASGI (no sockets)")
    print(f"{'':<22s}{'median µs':>10s}{'p99 µs':>9s}{'x raw':>7s}{'CPU µs @64':>12s}{'req/s @64':>11s}")
    for name, r in results.items():
        print(
            f"{name:<22s}{r['median_us']:10.0f}{r['p99_us']:9.0f}{r['median_us'] / raw:7.1f}"
            f"{r['cpu_us_at_64']:12.0f}{r['per_s_at_64']:11.0f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
