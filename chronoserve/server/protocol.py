"""Connection hygiene for ``chronoserve serve``: uvicorn's HTTP protocols with deadlines and caps.

uvicorn bounds only the idle time between requests (its keep-alive timer). A client that
sends its headers one byte a second, opens thousands of connections, or sends megabytes of
headers would hold a connection, and its memory, for as long as it likes. The protocol made
by :func:`guarded_protocol` adds, per connection:

- a header deadline: the request line and headers must be complete within
  ``header_timeout`` seconds of the connection opening, or, on a kept-alive connection, of
  the first byte of the next request. Then 408 (JSON) if part of a request had arrived, and
  the connection is closed;
- a header size limit: more than ``max_header_bytes`` bytes without the end of the headers
  gets 431 (JSON), checked before the parser buffers the bytes (h11's own limit is a
  backstop; llhttp, under httptools, has none);
- a connection cap: a connection beyond ``max_connections`` open ones gets 503 (JSON,
  ``Retry-After: 1``) and is closed at once;
- a deadline for a body nobody reads: once the answer is sent (a 404, a 405, an early 413)
  the client has ``body_timeout`` seconds to finish the body it is still sending;
- uvicorn's plain-text 400 for a malformed request becomes JSON like every other refusal.

The body of a request that a handler reads is bounded by the handler
(:func:`chronoserve.server.body.read_body`), which can still answer with JSON.

Two parsers, one set of guards: :class:`ConnectionGuards` holds the guards, written once
against two questions a protocol answers about its client (where it is in its request:
sending a head, a body, or waiting for the answer, :meth:`ConnectionGuards._client_phase`;
whether an oversized piece still ends the head in time, :meth:`ConnectionGuards._head_fits`).
:class:`GuardedH11Protocol` mixes it into uvicorn's h11 protocol (pure Python), and
:class:`~chronoserve.server.protocol_httptools.GuardedHttpToolsProtocol` into uvicorn's
httptools one (llhttp, in C: measured here, a fifth less server CPU per request).
:func:`guarded_protocol` picks the httptools one when ``httptools`` imports, h11 otherwise. A
client gets the same statuses, headers and bodies from both, and its connection closed at
the same points; the log gets the same lines. (uvicorn itself spells one header differently:
h11 writes ``Connection: close`` where httptools writes ``connection: close``.)

The hot path stays cheap: per request, one look at the client's state before and one after
handing the bytes to the parser (with httptools, two of its callbacks also note the state);
the rest runs once per request head or per refusal.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, TypeVar, cast

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from .guards import END_OF_HEAD, IN_BODY, IN_HEAD, WAITING, ConnectionGuards, LogThrottle

if TYPE_CHECKING:
    from .runtime import ServerSettings


class GuardedH11Protocol(ConnectionGuards, H11Protocol):
    """uvicorn's h11 protocol with the guards. Use :func:`guarded_protocol` to set their limits."""

    def data_received(self, data: bytes) -> None:
        their = self.conn.their_state
        if their is h11.IDLE and self._head_data(data):
            return
        super().data_received(data)
        if self.conn.their_state is not their:
            self._follow_state()
        else:
            self._head_incomplete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._answered()

    def send_400_response(self, msg: str) -> None:
        self._answer_bad_request()

    def _client_phase(self) -> int:
        their = self.conn.their_state
        if their is h11.IDLE:
            return IN_HEAD
        return IN_BODY if their is h11.SEND_BODY else WAITING

    def _head_fits(self, data: bytes) -> bool:
        # h11 keeps the unparsed part of the head: it and ``data`` are the head so far.
        window = (self.conn.trailing_data[0] + data)[: self.max_header_bytes]
        return END_OF_HEAD.search(window) is not None


_G = TypeVar("_G", bound=ConnectionGuards)


def guarded_protocol(settings: ServerSettings) -> type[asyncio.Protocol]:
    """The protocol class for ``uvicorn.Config(http=...)`` with the limits of ``settings``.

    uvicorn's httptools protocol when ``httptools`` imports, its h11 one otherwise.
    """
    base: type[ConnectionGuards]
    try:
        from .protocol_httptools import GuardedHttpToolsProtocol
    except ModuleNotFoundError as exc:
        if exc.name != "httptools":
            raise
        base = GuardedH11Protocol
    else:
        base = GuardedHttpToolsProtocol
    return with_limits(base, settings)


def with_limits(base: type[_G], settings: ServerSettings) -> type[_G]:
    """A subclass of ``base`` with the limits of ``settings`` (and a log throttle of its own)."""
    limits = {
        "header_timeout": settings.header_timeout,
        "body_timeout": settings.body_timeout,
        "max_header_bytes": settings.max_header_bytes,
        "max_connections": settings.max_connections,
        "refusals": LogThrottle(),
    }
    return cast("type[_G]", type(base.__name__, (base,), limits))
