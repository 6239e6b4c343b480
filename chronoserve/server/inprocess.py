"""Calling an ASGI app in this process, without a socket: one request in, its whole answer out.

How an engine process (:mod:`.engine_process`) and a Ray Serve engine replica
(:mod:`chronoserve.ray.replica`) answer the routes a front end forwards to them (``/models``,
``/readyz``, ``/metrics``, ...): the app's own route, so each route has one implementation
whatever the process layout.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, MutableMapping
from typing import Any

from starlette.types import ASGIApp

logger = logging.getLogger("chronoserve.server")

#: In the scope of a call forwarded by a front end, which logs it (:mod:`.access`) itself.
FORWARDED = "chronoserve.forwarded"
#: An answer: status, headers (``[name, value]`` byte pairs), body.
Answer = tuple[int, list[list[bytes]], bytes]


async def call_app(
    app: ASGIApp,
    state: Mapping[str, Any],
    method: str,
    path: str,
    query: bytes,
    headers: list[list[bytes]],
    body: bytes,
) -> Answer:
    """``app``'s answer to one request (500 with no body if the app raised: it is logged).

    ``state`` is the lifespan state the app's routes read (``request.state``); the caller is
    a front end that never disconnects, so ``receive`` gives the body once and then waits."""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": query, "root_path": "",
        "headers": [(bytes(k), bytes(v)) for k, v in headers], "client": None, "server": None,
        "state": dict(state), FORWARDED: True,
    }  # fmt: skip
    status, answer_headers, chunks = 500, [], []
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            await asyncio.Event().wait()  # the caller is a front end: it never disconnects here
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        nonlocal status, answer_headers
        if message["type"] == "http.response.start":
            status = message["status"]
            answer_headers = [list(h) for h in message.get("headers", [])]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    try:
        await app(scope, receive, send)
    except Exception:
        logger.exception("%s %s failed in the engine process", method, path)
    return status, answer_headers, b"".join(chunks)


__all__ = ["FORWARDED", "Answer", "call_app"]
