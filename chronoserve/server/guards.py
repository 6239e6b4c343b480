"""The connection guards of :mod:`chronoserve.server.protocol`, written once for both parsers.

:class:`ConnectionGuards` is mixed into uvicorn's h11 protocol
(:class:`~chronoserve.server.protocol.GuardedH11Protocol`) and its httptools one
(:class:`~chronoserve.server.protocol_httptools.GuardedHttpToolsProtocol`); what each guard
does and why is in :mod:`chronoserve.server.protocol`.
"""

from __future__ import annotations

import asyncio
import http
import json
import logging
import re
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from uvicorn.server import ServerState

logger = logging.getLogger("chronoserve.server")

#: How h11 finds the end of a request's headers (``h11._readers``: a blank line, CRLF or LF).
#: llhttp accepts only CRLF, so a match is never missed for it either.
END_OF_HEAD = re.compile(rb"\n\r?\n")
#: After a refusal the client gets this long to read it and hang up before the connection is
#: closed: closing while its bytes are still arriving would reset the connection, and many
#: clients then report the reset rather than the answer.
_LINGER_SECONDS = 2.0

# What our timer is waiting for (one timer per connection at most).
_NOTHING = 0
_HEAD = 1  # the request line and headers
_LEFTOVER = 2  # the rest of a body whose request was already answered

# Where the client is in its request (ConnectionGuards._client_phase).
IN_HEAD = 0
"""Between requests, or sending a request line and headers."""
IN_BODY = 1
"""Sending the body of a request whose head has arrived."""
WAITING = 2
"""Its request has all arrived (or the connection is past HTTP): the next move is the server's."""


class LogThrottle:
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


class _Cycle(Protocol):
    """What the guards use of uvicorn's request-response cycle (each protocol has its own class)."""

    response_started: bool
    response_complete: bool
    disconnected: bool
    message_event: asyncio.Event


class ConnectionGuards(asyncio.Protocol):
    """The guards, mixed in before one of uvicorn's HTTP protocols (whose attributes they use).

    A protocol class provides :meth:`_client_phase` and :meth:`_head_fits`, calls
    :meth:`_head_data` before handing bytes of a head to its parser and :meth:`_follow_state`
    when its client's phase changed, :meth:`_answered` when an answer is complete, and
    :meth:`_answer_bad_request` for a request its parser cannot read.
    """

    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_header_bytes: int = 16 * 1024
    max_connections: int = 1000
    refusals: LogThrottle = LogThrottle()

    # Per connection (set before uvicorn can call any method that reads them).
    _timer: asyncio.TimerHandle | None = None
    _waiting_for: int = _NOTHING
    _head_bytes: int = 0
    _refused: bool = False

    if TYPE_CHECKING:  # uvicorn's, in both protocols
        transport: asyncio.Transport
        loop: asyncio.AbstractEventLoop
        server_state: ServerState
        connections: set[Any]
        client: tuple[str, int] | None
        timeout_keep_alive_task: asyncio.TimerHandle | None
        cycle: Any  # each protocol its own RequestResponseCycle class: the guards read it as a _Cycle | None

        def _unset_keepalive_if_required(self) -> None: ...

    # -- what a protocol class provides -----------------------------------------------------

    def _client_phase(self) -> int:
        """IN_HEAD, IN_BODY or WAITING: where the client is in its request."""
        raise NotImplementedError

    def _head_fits(self, data: bytes) -> bool:
        """Whether the head ends within the limit (the rest of ``data`` is then body or the next request).

        Called only once a head has passed the limit in bytes received, so it may be slow.
        """
        raise NotImplementedError

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

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._cancel_timer()

    # -- answers ----------------------------------------------------------------------------

    def _answered(self) -> None:
        """After uvicorn's ``on_response_complete``: an answer sent while its body is still
        arriving (a 404, a 405, an early 413) gets the deadline for that body."""
        if self._client_phase() == IN_BODY and not self.transport.is_closing():
            self._follow_state()

    def _answer_bad_request(self) -> None:
        """uvicorn's answer to a request its parser cannot read, as JSON like every other refusal."""
        cycle: _Cycle | None = self.cycle
        if cycle is not None and not cycle.response_complete:
            # A handler is running (the error is in its body): it must not answer after us.
            cycle.disconnected = True
            cycle.message_event.set()
            if cycle.response_started:  # half its answer is on the wire: nothing can follow it
                self.transport.close()
                return
        elif self._waiting_for == _LEFTOVER:
            # The error is in the body of a request already answered: a second answer to it
            # would read as the answer to the next request. Closing says enough.
            self.transport.close()
            return
        self.transport.write(self._raw_response(400, "invalid HTTP request"))
        self.transport.close()

    # -- the request head -------------------------------------------------------------------

    def _start_head(self) -> None:
        """Start the byte count of a request head and its deadline."""
        self._cancel_timer()
        self._head_bytes = 0
        self._waiting_for = _HEAD
        self._timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _head_data(self, data: bytes) -> bool:
        """Account for bytes of a request head; True when they must not reach the parser."""
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

    def _head_incomplete(self) -> None:
        """After the parser took bytes of a head that did not complete it: now the head gets a
        deadline. (One that arrives in one piece, the usual case on a kept-alive connection,
        never costs a timer.)"""
        if self._waiting_for == _HEAD and self._timer is None and not self.transport.is_closing():
            self._timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _head_timed_out(self) -> None:
        self._timer = None
        self._waiting_for = _NOTHING
        if self.transport.is_closing() or self._client_phase() != IN_HEAD:
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
        cycle: _Cycle | None = self.cycle
        if self.transport.is_closing() or self._client_phase() != IN_BODY:
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
        """Set our timer for what the client now owes us (after its phase changed)."""
        phase = self._client_phase()
        cycle: _Cycle | None = self.cycle
        if phase == IN_HEAD and self.timeout_keep_alive_task is None:
            # Between requests, and uvicorn's keep-alive timer is not running (it was stopped
            # by the tail of a body nobody read): the next head gets the header deadline.
            wanted = _HEAD
        elif phase == IN_BODY and cycle is not None and cycle.response_complete:
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

    # -- answering outside the parser -------------------------------------------------------

    def _raw_response(self, status: int, detail: str, extra: Sequence[tuple[bytes, bytes]] = ()) -> bytes:
        """An HTTP/1.1 answer as bytes: no parser can frame one before it has parsed a request."""
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
        if not self.transport.is_closing():
            self.transport.close()

    def _peer(self) -> str:
        return f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
