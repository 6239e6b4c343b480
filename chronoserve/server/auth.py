"""Access control: API keys for the data, an admin key for model management, bearer tokens.

With no key configured every route is open (and model management is off: it needs an admin key).
With API keys (``--api-key``, ``--api-key-file``, ``CHRONOSERVE_API_KEY``), every route but the
probes and the scrape (:data:`OPEN`: ``/healthz``, ``/readyz``, ``/metrics``, the OpenAPI document
and its page, the Open Inference Protocol's health routes) needs ``Authorization: Bearer <key>``
with one of them, or an admin key: 401 with ``WWW-Authenticate: Bearer`` otherwise. Admin keys
(``--admin-key``, ``--admin-key-file``) are the only ones that open the management routes
(:func:`is_admin_route`); an API key there is a 403. Keys are compared in constant time.

:class:`Auth` is an ASGI middleware inside the access log (so refusals are logged with their id),
in every app that takes HTTP from clients; calls a front end forwards to an engine process are
not checked again there.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from .inprocess import FORWARDED

#: Routes any caller may reach: liveness and readiness probes, the metrics scrape, the API's documents.
OPEN = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/v2/health/live", "/v2/health/ready"})
_ADMIN = re.compile(r"^/models/.+/(?:load|unload|warm)$")


def is_admin_route(path: str) -> bool:
    """Model management: ``POST /models/{name}/load``, ``.../unload``, ``.../warm``."""
    return _ADMIN.match(path) is not None


@dataclass(frozen=True)
class Keys:
    """The keys that open the data (``api``) and the management routes (``admin``, which also opens the data)."""

    api: tuple[str, ...] = ()
    admin: tuple[str, ...] = ()

    @property
    def required(self) -> bool:
        """Whether the data routes need a key."""
        return bool(self.api)

    def is_admin(self, token: str | None) -> bool:
        return token is not None and _any_equal(token, self.admin)

    def opens_data(self, token: str | None) -> bool:
        return token is not None and (_any_equal(token, self.api) or _any_equal(token, self.admin))


def _any_equal(token: str, keys: Sequence[str]) -> bool:
    given = token.encode()
    found = False
    for key in keys:  # every key compared, each in constant time
        found |= hmac.compare_digest(given, key.encode())
    return found


def bearer(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


class Auth:
    """The ASGI middleware: 401/403 before the app sees a request that its key does not open."""

    def __init__(self, app: ASGIApp, keys: Keys) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get(FORWARDED):
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        token = bearer(scope.get("headers", ()))
        if is_admin_route(path):
            if not self.keys.admin:
                await _refuse(send, 403, "model management is off: the operator enables it with --admin-key")
                return
            if not self.keys.is_admin(token):
                status = 401 if token is None or not self.keys.opens_data(token) else 403
                await _refuse(send, status, "model management needs the admin key: Authorization: Bearer <admin key>")
                return
        elif self.keys.required and path not in OPEN and not self.keys.opens_data(token):
            what = "missing" if token is None else "invalid"
            await _refuse(send, 401, f"{what} API key: send Authorization: Bearer <key>")
            return
        await self.app(scope, receive, send)


async def _refuse(send: Send, status: int, detail: str) -> None:
    body = orjson.dumps({"detail": detail})
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="chronoserve"'))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
