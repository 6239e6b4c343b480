"""Connection hygiene for ``chronoserve serve``: uvicorn's h11 protocol with deadlines and caps.

uvicorn bounds only the idle time between requests (its keep-alive timer). A client that
sends its headers one byte a second, opens thousands of connections, or sends megabytes of
headers would hold a connection, and its memory, for as long as it likes. The protocol made
by :func:`guarded_protocol` adds, per connection:

- a header deadline: the request line and headers must be complete within
  ``header_timeout`` seconds of the connection opening, or, on a kept-alive connection, of
  the first byte of the next request. Then 408 (JSON) if part of a request had arrived, and
  the connection is closed;
- a header size limit: more than ``max_header_bytes`` bytes without the end of the headers
  gets 431 (JSON), checked before h11 buffers the bytes (h11's own limit is a backstop);
- a connection cap: a connection beyond ``max_connections`` open ones gets 503 (JSON,
  ``Retry-After: 1``) and is closed at once;
- a deadline for a body nobody reads: once the answer is sent (a 404, a 405, an early 413)
  the client has ``body_timeout`` seconds to finish the body it is still sending;
- uvicorn's plain-text 400 for a malformed request becomes JSON like every other refusal.

The body of a request that a handler reads is bounded by the handler
(:func:`chronoserve.server.body.read_body`), which can still answer with JSON.

The hot path stays cheap: one ``their_state`` read before and one after handing the bytes to
h11; the rest runs once per request head or per refusal.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import json
import logging
import re
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

if TYPE_CHECKING:
    from .runtime import ServerSettings

logger = logging.getLogger("chronoserve.server")

#: How h11 finds the end of a request's headers (``h11._readers``: a blank line, CRLF or LF).
_END_OF_HEAD = re.compile(rb"\n\r?\n")
#: After a refusal the client gets this long to read it and hang up before the connection is
#: closed: closing while its bytes are still arriving would reset the connection, and many
#: clients then report the reset rather than the answer.
_LINGER_SECONDS = 2.0

# What our timer is waiting for (one timer per connection at most).
_NOTHING = 0
_HEAD = 1  # the request line and headers
_LEFTOVER = 2  # the rest of a body whose request was already answered


class _LogThrottle:
    """At most one log line per kind of refusal every ``interval`` seconds.

    A flood of bad clients must not become a flood of log lines; the next line says how many
    were not logged.
    """

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}
        self._skipped: dict[str, int] = {}

    def log(self, level: int, kind: str, message: str) -> None:
        now = time.monotonic()
        last = self._last.get(kind)
        if last is not None and now - last < self.interval:
            self._skipped[kind] = self._skipped.get(kind, 0) + 1
            return
        self._last[kind] = now
        skipped = self._skipped.pop(kind, 0)
        if skipped:
            message += f" ({skipped} more like it since the last such line)"
        logger.log(level, message)


def _json_body(detail: str) -> bytes:
    return json.dumps({"detail": detail}).encode()


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the limits above. Use :func:`guarded_protocol` to set them."""

    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_header_bytes: int = 16 * 1024
    max_connections: int = 1000
    refusals: _LogThrottle = _LogThrottle()

    # Per connection (set before uvicorn can call any method that reads them).
    _timer: asyncio.TimerHandle | None = None
    _waiting_for: int = _NOTHING
    _head_bytes: int = 0
    _refused: bool = False

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            # Not counted as open: it is gone at once, and must not hold the shutdown.
            self.connections.discard(self)
            self._refused = True
            self.refusals.log(
                logging.WARNING,
                "cap",
                f"refused a connection: {self.max_connections} are open (--max-connections)",
            )
            transport.write(
                self._raw_response(
                    503,
                    f"too many open connections (over --max-connections {self.max_connections}); retry later",
                    [(b"retry-after", b"1")],
                )
            )
            transport.close()
            return
        self._start_head()

    def data_received(self, data: bytes) -> None:
        their = self.conn.their_state
        if their is h11.IDLE and self._head_data(data):
            return
        super().data_received(data)
        if self.conn.their_state is not their:
            self._follow_state()
        elif self._waiting_for == _HEAD and self._timer is None and not self.transport.is_closing():
            # A head that did not arrive in one piece: now it gets a deadline. (One that does,
            # the usual case on a kept-alive connection, never costs a timer.)
            self._timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._cancel_timer()

    # -- uvicorn's hooks --------------------------------------------------------------------

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # Answered while the body is still arriving (a 404, a 405, an early 413): it gets a deadline.
        if self.conn.their_state is h11.SEND_BODY and not self.transport.is_closing():
            self._follow_state()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request h11 cannot parse, as JSON like every other refusal."""
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # A handler is running (the error is in its body): it must not answer after us.
            cycle.disconnected = True
            cycle.message_event.set()
            if cycle.response_started:  # half its answer is on the wire: nothing can follow it
                self.transport.close()
                return
        body = _json_body("invalid HTTP request")
        headers = [
            *self.server_state.default_headers,
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        events = (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"), h11.Data(data=body))
        try:
            for event in (*events, h11.EndOfMessage()):
                output = self.conn.send(event)
                if output:
                    self.transport.write(output)
        except h11.LocalProtocolError:
            pass  # h11 would not frame an answer in this state: closing says enough
        self.transport.close()

    # -- the request head -------------------------------------------------------------------

    def _start_head(self) -> None:
        """Start the byte count of a request head and its deadline."""
        self._cancel_timer()
        self._head_bytes = 0
        self._waiting_for = _HEAD
        self._timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _head_data(self, data: bytes) -> bool:
        """Account for bytes of a request head; True when they must not reach h11."""
        if self._refused:
            return True  # lingering after a refusal: read and drop
        if self._waiting_for != _HEAD:
            # The first bytes of the next request on a kept-alive connection. The deadline is
            # set only if they turn out not to hold the whole head (see data_received).
            if self._timer is not None:
                self._cancel_timer()
            self._head_bytes = 0
            self._waiting_for = _HEAD
        self._head_bytes += len(data)
        if self._head_bytes > self.max_header_bytes and not self._head_fits(data):
            self.refusals.log(
                logging.INFO,
                "431",
                f"refused {self._peer()}: request headers over {self.max_header_bytes} bytes (--max-header-bytes)",
            )
            self._refuse(
                431, f"the request line and headers are over {self.max_header_bytes} bytes (--max-header-bytes)"
            )
            return True
        return False

    def _head_fits(self, data: bytes) -> bool:
        """Whether the head ends within the limit (the rest of ``data`` is then body or the next request).

        Runs only once a head has passed the limit in bytes received, so the copy is rare.
        """
        window = (self.conn.trailing_data[0] + data)[: self.max_header_bytes]
        return _END_OF_HEAD.search(window) is not None

    def _head_timed_out(self) -> None:
        self._timer = None
        self._waiting_for = _NOTHING
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if self._head_bytes == 0:
            self._close()  # never started a request: nobody to answer
            return
        self.refusals.log(
            logging.INFO,
            "408",
            f"refused {self._peer()}: headers incomplete after {self.header_timeout:g} s (--header-timeout)",
        )
        self._refuse(
            408,
            f"the request line and headers did not arrive within {self.header_timeout:g} s (--header-timeout)",
        )

    # -- a body nobody reads ----------------------------------------------------------------

    def _leftover_timed_out(self) -> None:
        self._timer = None
        self._waiting_for = _NOTHING
        cycle = self.cycle
        if self.transport.is_closing() or self.conn.their_state is not h11.SEND_BODY:
            return
        if cycle is None or not cycle.response_complete:
            return  # a new request is being handled: its handler bounds its body
        self.refusals.log(
            logging.INFO,
            "leftover",
            f"closed {self._peer()}: its request was answered but its body was still arriving "
            f"after {self.body_timeout:g} s (--body-timeout)",
        )
        self._close()

    # -- timers -----------------------------------------------------------------------------

    def _follow_state(self) -> None:
        """Set our timer for what the client now owes us (after its side of h11 changed state)."""
        their = self.conn.their_state
        if their is h11.IDLE and self.timeout_keep_alive_task is None:
            # Between requests, and uvicorn's keep-alive timer is not running (it was stopped
            # by the tail of a body nobody read): the next head gets the header deadline.
            wanted = _HEAD
        elif their is h11.SEND_BODY and self.cycle is not None and self.cycle.response_complete:
            wanted = _LEFTOVER
        else:
            wanted = _NOTHING
        if wanted == self._waiting_for:
            return
        if wanted == _NOTHING and self._timer is None:  # the usual case: a head just arrived whole
            self._waiting_for = _NOTHING
        elif wanted == _HEAD:
            self._start_head()
        elif wanted == _LEFTOVER:
            self._cancel_timer()
            self._waiting_for = _LEFTOVER
            self._timer = self.loop.call_later(self.body_timeout, self._leftover_timed_out)
        else:
            self._cancel_timer()

    def _cancel_timer(self) -> None:
        self._waiting_for = _NOTHING
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- answering outside h11 --------------------------------------------------------------

    def _raw_response(self, status: int, detail: str, extra: Sequence[tuple[bytes, bytes]] = ()) -> bytes:
        """An HTTP/1.1 answer as bytes: h11 cannot send one before it has parsed a request."""
        body = _json_body(detail)
        headers = [
            *self.server_state.default_headers,
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
            *extra,
        ]
        phrase = http.HTTPStatus(status).phrase.encode()
        lines = [b"HTTP/1.1 %d %s" % (status, phrase), *(name + b": " + value for name, value in headers)]
        return b"\r\n".join(lines) + b"\r\n\r\n" + body

    def _refuse(self, status: int, detail: str) -> None:
        """Answer ``status`` and end the connection, lingering so the client can read the answer."""
        self._refused = True
        self._cancel_timer()
        self._unset_keepalive_if_required()
        self.transport.write(self._raw_response(status, detail))
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()  # the answer, then our end of the stream; what it still sends is dropped
        self._timer = self.loop.call_later(_LINGER_SECONDS, self._close)

    def _close(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        with contextlib.suppress(h11.LocalProtocolError):  # h11 already closed or in error
            self.conn.send(h11.ConnectionClosed())
        self.transport.close()

    def _peer(self) -> str:
        return f"{self.client[0]}:{self.client[1]}" if self.client else "a client"


def guarded_protocol(settings: ServerSettings) -> type[H11Protocol]:
    """The protocol class for ``uvicorn.Config(http=...)`` with the limits of ``settings``."""

    class Guarded(GuardedH11Protocol):
        header_timeout = settings.header_timeout
        body_timeout = settings.body_timeout
        max_header_bytes = settings.max_header_bytes
        max_connections = settings.max_connections
        refusals = _LogThrottle()

    return Guarded
