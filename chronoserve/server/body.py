"""Reading a request body: bounded in size and in time, and given up when the server drains.

Without the time bound a client that sends its body a byte a second holds a handler (and,
at shutdown, the whole process) for as long as it likes; without the drain a SIGTERM would
wait for half-sent bodies until uvicorn cancels their handlers with a plain-text 500.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.requests import ClientDisconnect, Request

from .errors import HTTPError, invalid

logger = logging.getLogger("chronoserve.server")


class ClientGone(Exception):
    """The client disconnected (while sending its body, or before its answer): there is no one left to answer."""


async def read_body(request: Request, *, limit: int, timeout: float, draining: asyncio.Event) -> bytes:
    """The whole body, or :class:`~chronoserve.server.errors.HTTPError`.

    - 413 ``body_too_large`` past ``limit`` bytes (declared or received);
    - 408 when the body has not all arrived ``timeout`` seconds after this call;
    - 503 when ``draining`` is set before the body has all arrived.

    Raises :class:`ClientGone` (after one INFO line) when the client disconnects meanwhile.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise invalid([], f"the body has {declared} bytes; the limit is {limit}", "body_too_large", 413)
    if draining.is_set():
        raise _shutting_down()
    reader = asyncio.ensure_future(_collect(request, limit))
    drain = asyncio.ensure_future(draining.wait())
    try:
        done, _ = await asyncio.wait({reader, drain}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        drain.cancel()
        reader.cancel()  # a no-op when it is done; nothing runs between the wait and here
    if reader in done:  # the body wins a tie with the drain: it is all here
        try:
            return reader.result()
        except ClientDisconnect:
            client = request.client
            address = f"{client.host}:{client.port}" if client else "unknown address"
            logger.info("client went away while sending its body (%s)", address)
            raise ClientGone from None
    if drain in done:
        raise _shutting_down()
    raise HTTPError(
        408,
        f"the request body did not all arrive within {timeout:g} s (--body-timeout)",
        {"Connection": "close"},
    )


async def _collect(request: Request, limit: int) -> bytes:
    size = 0
    chunks = []
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise invalid([], f"the body is over the limit of {limit} bytes", "body_too_large", 413)
        chunks.append(chunk)
    return b"".join(chunks)


def _shutting_down() -> HTTPError:
    return HTTPError(503, "the server is shutting down", {"Connection": "close"})
