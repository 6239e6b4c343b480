"""The guards of :mod:`.protocol` on uvicorn's httptools protocol (llhttp, a parser in C).

Importing this module needs ``httptools``; :func:`.protocol.guarded_protocol` falls back to
the h11 protocol without it.

llhttp parses every byte it is given, and tells no one where a request ended, while h11
parses one request at a time. Two things make the difference invisible to a client:

- the bytes that arrive once a request is complete and before it is answered (pipelining)
  are held, and reading paused, until the answer is sent; then they are parsed as the next
  request's, with its deadline and size limit (h11 does the same: it pauses);
- a request that llhttp cannot read, behind requests that are not yet answered (several
  pipelined in one piece), gets its 400 after their answers, as h11 would send it, rather
  than before them.
"""

from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .guards import END_OF_HEAD, IN_BODY, IN_HEAD, WAITING, ConnectionGuards


class GuardedHttpToolsProtocol(ConnectionGuards, HttpToolsProtocol):
    """uvicorn's httptools protocol with the guards. Use :func:`.protocol.guarded_protocol` to set their limits."""

    # Per connection, as in ConnectionGuards.
    _phase: int = IN_HEAD
    """Where the client is in its request (what h11 calls ``their_state``), kept by the parser's callbacks."""
    _held: bytes = b""
    """Bytes that arrived while the client was WAITING: parsed once its answer is sent."""
    _head_tail: bytes = b""
    """The last bytes of the previous piece of a head that is still incomplete (``_head_fits``)."""
    _bad_request_pending: bool = False
    """llhttp failed on a request behind others not yet answered: answer 400 after them."""

    # -- asyncio.Protocol -------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        phase = self._phase
        if phase != IN_BODY:
            if phase == WAITING:
                self._hold(data)
                return
            if self._head_data(data):
                return
        super().data_received(data)
        if self._phase != phase:
            self._follow_state()
        elif phase == IN_HEAD:  # a head still incomplete
            self._head_tail = data[-3:]
            self._head_incomplete()

    # -- the parser's callbacks -------------------------------------------------------------

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._phase = IN_BODY

    def on_message_complete(self) -> None:
        super().on_message_complete()
        # Either the request waits for its answer, or it had one (the tail of a body nobody
        # read has ended) and the next bytes are the next request's.
        cycle = self.cycle
        self._phase = IN_HEAD if cycle is not None and cycle.response_complete else WAITING

    def handle_websocket_upgrade(self) -> None:
        self._phase = WAITING  # the connection is the websocket protocol's from now on
        super().handle_websocket_upgrade()

    # -- uvicorn's hooks --------------------------------------------------------------------

    def on_response_complete(self) -> None:
        super().on_response_complete()  # starts the next pipelined request, if one is waiting
        if self.transport.is_closing():
            return
        cycle = self.cycle  # the last request read
        if self._phase == WAITING and not self.pipeline and (cycle.response_complete or cycle.disconnected):
            # Every request read so far has its answer (or, llhttp having failed in its body,
            # runs to find its client gone): now what came after them.
            if self._bad_request_pending:
                self._answer_bad_request()
                return
            self._phase = IN_HEAD
            if self._held:
                data, self._held = self._held, b""
                self.data_received(data)
            return
        self._answered()

    def send_400_response(self, msg: str) -> None:
        cycle = self.cycle
        if self._phase == WAITING or (self.pipeline and self.pipeline[0][0] is cycle):
            # The error is in a request behind one not yet answered (pipelined in the same
            # piece): h11 would parse it, and refuse it, only after that answer.
            if self._phase != WAITING:
                # In the body of a request still queued: its handler will run and find its
                # client gone, as with h11 (where it runs before the error is found).
                cycle.disconnected = True
                self._phase = WAITING
            self._bad_request_pending = True
            self.flow.pause_reading()
            return
        self._answer_bad_request()

    # -- ConnectionGuards -------------------------------------------------------------------

    def _client_phase(self) -> int:
        return self._phase

    def _head_fits(self, data: bytes) -> bool:
        # llhttp has taken the earlier pieces of the head (they did not end it): the end can
        # only be in ``data``, or across its start.
        before = self._head_bytes - len(data)
        window = (self._head_tail if before > 0 else b"") + data[: max(0, self.max_header_bytes - before)]
        return END_OF_HEAD.search(window) is not None

    def _hold(self, data: bytes) -> None:
        if self._bad_request_pending or self.transport.is_closing():
            return  # the connection ends after the answers it owes
        self._held += data
        self.flow.pause_reading()
