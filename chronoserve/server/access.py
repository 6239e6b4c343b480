"""The access log and request ids: one line per HTTP request, and ``X-Request-ID`` in and out.

:class:`AccessLog` is an ASGI middleware around every server app (one process, the front ends of
``--http-workers`` and Ray). For each request it takes the caller's ``X-Request-ID`` (printable
ASCII, at most :data:`MAX_REQUEST_ID` characters; otherwise it makes one), returns it in the
answer's ``X-Request-ID``, and when the answer is sent logs one line on the ``chronoserve.access``
logger: the id, client, method, path, status, the model, the batch size and the time in queue,
loading and inference that the routes noted (:func:`note`), and the total time in the server.
With ``--log-format json`` (:mod:`chronoserve.logs`) the same fields are the JSON record's.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .inprocess import FORWARDED

logger = logging.getLogger("chronoserve.access")

#: The longest ``X-Request-ID`` taken from a caller; longer (or not printable ASCII) gets a new one.
MAX_REQUEST_ID = 128
_VALID_ID = re.compile(rb"[\x21-\x7e]{1,%d}" % MAX_REQUEST_ID)
#: Where a request's :class:`Access` is kept in its ASGI scope.
SCOPE_KEY = "chronoserve.access"


@dataclass
class Access:
    """What the access line of one request says; the routes add the model and timings."""

    request_id: str
    method: str
    path: str
    client: str
    started: float = field(default_factory=time.perf_counter)
    status: int = 0
    fields: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "client": self.client,
            "method": self.method,
            "path": self.path,
            "status": self.status,
            **self.fields,
            "total_ms": round((time.perf_counter() - self.started) * 1000.0, 3),
        }


def request_id(scope: Scope) -> str | None:
    """The id of the request ``scope`` belongs to (None outside :class:`AccessLog`)."""
    access = scope.get(SCOPE_KEY)
    return access.request_id if isinstance(access, Access) else None


def note(scope: MutableMapping[str, Any], answer: Mapping[str, Any] | None = None, **fields: Any) -> None:
    """Add to the access line of the request ``scope`` belongs to: ``fields``, and from a forecast's
    ``answer`` (its JSON body) the model, batch size and times."""
    access = scope.get(SCOPE_KEY)
    if not isinstance(access, Access):
        return
    if answer is not None:
        model = answer.get("model")
        timings = answer.get("timings") or {}
        access.fields.update(
            model=model.get("name") if isinstance(model, Mapping) else model,
            batch_size=answer.get("batch_size"),
            queue_ms=_ms(timings.get("queue")),
            load_ms=_ms(timings.get("load")),
            inference_ms=_ms(timings.get("inference")),
        )
    access.fields.update({k: v for k, v in fields.items() if v is not None})


def _ms(seconds: Any) -> float | None:
    return None if seconds is None else round(float(seconds) * 1000.0, 3)


class AccessLog:
    """The ASGI middleware: ids in and out of every HTTP request, one log line when it is answered."""

    def __init__(self, app: ASGIApp, enabled: bool = True) -> None:
        self.app = app
        self.enabled = enabled

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get(FORWARDED):  # a front end's call: logged there
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope.get("headers", ()) if k == b"x-request-id"), None)
        rid = given.decode("ascii") if given is not None and _VALID_ID.fullmatch(given) else uuid.uuid4().hex
        client = scope.get("client")
        access = Access(
            rid, scope.get("method", ""), scope.get("path", ""), f"{client[0]}:{client[1]}" if client else ""
        )
        scope[SCOPE_KEY] = access
        header = (b"x-request-id", rid.encode("ascii"))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                access.status = int(message["status"])
                headers = [h for h in message.get("headers", ()) if h[0].lower() != b"x-request-id"]
                message = {**message, "headers": [*headers, header]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if self.enabled:
                if access.status == 0:  # no answer went out (the client left, or the server failed)
                    access.fields.setdefault("outcome", "no answer sent")
                log(access)


_FIRST = ("client", "method", "path", "status", "request_id")


def log(access: Access) -> None:
    """The access line: ``client "METHOD path" status id=... model=... batch_size=... queue_ms=...``
    (the record itself is the log record's ``access``, what the JSON format writes)."""
    record = {k: v for k, v in access.record().items() if v is not None}
    line = f'{record["client"]} "{record["method"]} {record["path"]}" {record["status"]} id={record["request_id"]}'
    rest = " ".join(f"{k}={v}" for k, v in record.items() if k not in _FIRST)
    logger.info(f"{line} {rest}", extra={"access": record})
