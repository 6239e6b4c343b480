"""The guarded httptools protocol against the guarded h11 one, byte for byte.

Each scenario is a raw client's script (writes, and waits for what it must see before the
next write) run against both protocols, in this process, on 127.0.0.1; what the client
received and what the server logged must be the same from both, and what the scenario says
it must be. The app is a few lines of ASGI, so the bytes are uvicorn's and the guards' only.
(test_serve_hygiene.py runs the guards on both protocols in real server processes.)
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import re
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn
from uvicorn.server import ServerState
from waiting import until

from chronoserve.server.protocol import ConnectionGuards, GuardedH11Protocol, guarded_protocol, with_limits
from chronoserve.server.protocol_httptools import GuardedHttpToolsProtocol
from chronoserve.server.runtime import ServerSettings

PROTOCOLS = (GuardedH11Protocol, GuardedHttpToolsProtocol)
DEADLINE = 30.0  # seconds: a hang guard, not a speed limit
#: The guards' limits in the scenarios; the tests of a deadline shorten it (the client just waits for it).
LIMITS = {"header_timeout": 60.0, "body_timeout": 60.0, "max_header_bytes": 1024, "max_connections": 3}


# -- the app ----------------------------------------------------------------------------------


@dataclass
class App:
    """``/ok``; ``/echo`` reads its body and answers its size; ``/hold`` answers once the test lets it;
    any other path is 404 without reading the body."""

    holding: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope["path"]
        if path == "/ok":
            answer: tuple[int, object] = (200, {"ok": True})
        elif path == "/echo":
            size, more = 0, True
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                size += len(message.get("body", b""))
                more = message.get("more_body", False)
            answer = (200, {"bytes": size})
        elif path == "/hold":
            self.holding.set()
            await self.release.wait()
            answer = (200, {"held": True})
        else:
            answer = (404, {"detail": "Not Found"})
        body = json.dumps(answer[1]).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": answer[0], "headers": headers})
        await send({"type": "http.response.body", "body": body})


@dataclass
class Served:
    port: int
    app: App
    protocols: list[ConnectionGuards]


@contextlib.asynccontextmanager
async def serving(base: type[ConnectionGuards], **limits: float) -> AsyncIterator[Served]:
    """``base`` with ``limits`` serving :class:`App` on 127.0.0.1, as uvicorn would (without its date header)."""
    app = App()
    settings = ServerSettings(**{**LIMITS, **limits})  # type: ignore[arg-type]
    protocol = with_limits(base, settings)
    config = uvicorn.Config(
        app,
        http=protocol,
        log_config=None,
        lifespan="off",
        timeout_keep_alive=5,
        h11_max_incomplete_event_size=settings.max_header_bytes,  # as chronoserve.server.process sets it
    )
    config.load()
    state = ServerState()
    made: list[ConnectionGuards] = []

    def make() -> ConnectionGuards:
        made.append(protocol(config=config, server_state=state, app_state={}))  # type: ignore[call-arg]
        return made[-1]

    server = await asyncio.get_running_loop().create_server(make, "127.0.0.1", 0)
    try:
        yield Served(server.sockets[0].getsockname()[1], app, made)
    finally:
        server.close()
        for proto in made:
            proto.transport.close()
        await server.wait_closed()


# -- scripts ----------------------------------------------------------------------------------

Step = bytes | tuple[Any, ...]  # bytes to send, or (what to wait for or do, its arguments...)


async def play(served: Served, script: Sequence[Step]) -> bytes:
    """Run ``script`` on a new connection; everything the server sent until it closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    got = b""
    try:
        for step in script:
            if isinstance(step, bytes):
                writer.write(step)
                await writer.drain()
            elif step[0] == "until":  # read until the server has sent this
                while step[1] not in got:
                    chunk = await asyncio.wait_for(reader.read(65536), DEADLINE)
                    assert chunk, f"closed before {step[1]!r}: {got!r}"
                    got += chunk
            elif step[0] == "held":  # /hold is answering (and the server read what came with it)
                await asyncio.wait_for(served.app.holding.wait(), DEADLINE)
            elif step[0] == "release":
                served.app.release.set()
            elif step[0] == "check":  # a state of the server (a function of Served), then its name
                await until(functools.partial(step[1], served), step[2])
            else:
                raise AssertionError(f"unknown step {step!r}")
        while chunk := await asyncio.wait_for(reader.read(65536), DEADLINE):
            got += chunk
    except ConnectionResetError:
        pass  # a reset after the answer counts as closed
    finally:
        writer.close()
    return got


_PEER = re.compile(r"127\.0\.0\.1:\d+")


@pytest.fixture(autouse=True)
def _info_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)  # the guards' lines, uvicorn's (access lines included)


def _log(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str, str]]:
    return [(r.name, r.levelname, r.getMessage()) for r in caplog.records]


async def both(
    script: Sequence[Step], caplog: pytest.LogCaptureFixture, *, log_order: bool = True, **limits: float
) -> bytes:
    """What the client receives from each protocol (the same), and the same log lines from each
    (in the same order, unless ``log_order`` is false)."""
    seen = []
    for base in PROTOCOLS:
        caplog.clear()
        async with serving(base, **limits) as served:
            raw = await play(served, script)
        lines = [(r.name, r.levelname, _PEER.sub("PEER", r.getMessage())) for r in caplog.records]
        seen.append((raw, lines))
    (h11_raw, h11_log), (httptools_raw, httptools_log) = seen
    if httptools_raw != h11_raw:
        # uvicorn frames an answer that closes its connection a little differently in each
        # protocol (h11 writes "Connection: close" last, capitalised): the same headers.
        assert _unordered(httptools_raw) == _unordered(h11_raw), (h11_raw, httptools_raw)
    if log_order:
        assert httptools_log == h11_log
    else:
        assert sorted(httptools_log) == sorted(h11_log)
    return httptools_raw


def _unordered(raw: bytes) -> list[tuple[int, list[tuple[str, str]], bytes]]:
    return [(status, sorted(headers.items()), body) for status, headers, body in answers(raw)]


def answers(raw: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """The answers in ``raw`` (framed by content-length; informational ones have no body)."""
    found = []
    while raw:
        head, sep, raw = raw.partition(b"\r\n\r\n")
        assert sep, f"an incomplete answer: {head!r}"
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        size = int(headers.get("content-length", 0))
        found.append((int(lines[0].split()[1]), headers, raw[:size]))
        raw = raw[size:]
    return found


def statuses(raw: bytes) -> list[int]:
    return [status for status, _, _ in answers(raw)]


OK = b"GET /ok HTTP/1.1\r\nHost: t\r\n\r\n"
OK_CLOSE = b"GET /ok HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
GARBAGE = b"NOT HTTP AT ALL\r\n\r\n"
BAD_CHUNKS = b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\nzz\r\n"


# -- requests that work -----------------------------------------------------------------------


async def test_keep_alive_and_pipelining(caplog: pytest.LogCaptureFixture) -> None:
    echo = b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello"
    raw = await both([OK, ("until", b"true}"), OK + echo + OK_CLOSE], caplog)
    assert [(s, body) for s, _, body in answers(raw)] == [
        (200, b'{"ok": true}'),
        (200, b'{"ok": true}'),
        (200, b'{"bytes": 5}'),
        (200, b'{"ok": true}'),
    ]
    assert answers(raw)[-1][1]["connection"] == "close"


async def test_pipelined_request_arriving_while_the_first_is_answered(caplog: pytest.LogCaptureFixture) -> None:
    def waiting(served: Served) -> bool:  # the second request has been read, and not yet parsed
        proto = served.protocols[0]
        if isinstance(proto, GuardedHttpToolsProtocol):
            return bool(proto._held)
        assert isinstance(proto, GuardedH11Protocol)
        return bool(proto.conn.trailing_data[0])

    hold = b"GET /hold HTTP/1.1\r\nHost: t\r\n\r\n"
    raw = await both(
        [hold, ("held",), OK_CLOSE, ("check", waiting, "the pipelined request read"), ("release",)], caplog
    )
    assert statuses(raw) == [200, 200]


async def test_chunked_body_in_pieces(caplog: pytest.LogCaptureFixture) -> None:
    head = b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    raw = await both([head + b"3\r\nabc\r\n", b"4\r\nde", b"fg\r\n0\r\n", b"\r\n"], caplog)
    assert answers(raw) == [
        (200, {"content-type": "application/json", "content-length": "12", "connection": "close"}, b'{"bytes": 7}')
    ]


async def test_expect_100_continue(caplog: pytest.LogCaptureFixture) -> None:
    head = b"POST /echo HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 3\r\nConnection: close\r\n\r\n"
    raw = await both([head, ("until", b"100 Continue\r\n\r\n"), b"abc"], caplog)
    assert raw.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n")
    assert answers(raw)[-1][2] == b'{"bytes": 3}'


async def test_http_1_0_and_head(caplog: pytest.LogCaptureFixture) -> None:
    raw = await both([b"GET /ok HTTP/1.0\r\n\r\n"], caplog)
    assert statuses(raw) == [200]
    assert answers(raw)[0][1]["connection"] == "close"
    raw = await both([b"HEAD /ok HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"], caplog)
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n") and raw.endswith(b"\r\n\r\n")  # a HEAD answer has no body


async def test_head_in_pieces_under_the_limit(caplog: pytest.LogCaptureFixture) -> None:
    head = b"GET /ok HTTP/1.1\r\nHost: t\r\nX-Pad: " + b"a" * 900 + b"\r\nConnection: close\r\n\r\n"
    raw = await both([head[:500], head[500:1000], head[1000:]], caplog)
    assert statuses(raw) == [200]


async def test_body_after_a_head_that_ends_within_the_limit(caplog: pytest.LogCaptureFixture) -> None:
    # 600 bytes of head, then more than the limit in the same piece as its body: not a head.
    head = b"POST /echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: 2000\r\nX-Pad: " + b"a" * 500
    raw = await both([head, b"\r\n\r\n" + b"b" * 2000], caplog)
    assert answers(raw)[0][2] == b'{"bytes": 2000}'


# -- refusals ---------------------------------------------------------------------------------


async def test_malformed_request_gets_json_400(caplog: pytest.LogCaptureFixture) -> None:
    raw = await both([GARBAGE], caplog)
    assert raw == (
        b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 34\r\nconnection: close\r\n\r\n"
        b'{"detail": "invalid HTTP request"}'
    )
    raw = await both([BAD_CHUNKS], caplog)  # in a body a handler reads
    assert statuses(raw) == [400]


async def test_malformed_request_behind_unanswered_ones_is_refused_after_their_answers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hold = b"GET /hold HTTP/1.1\r\nHost: t\r\n\r\n"
    # llhttp parses all of one piece at once; h11 one request at a time.
    for piece, answered in (
        (OK + GARBAGE, 1),
        (hold + GARBAGE, 1),
        (hold + OK + GARBAGE, 2),
        (hold + BAD_CHUNKS, 1),
        (hold + OK + BAD_CHUNKS, 2),
    ):
        held = [("held",), ("release",)] if piece.startswith(hold) else []
        # uvicorn's line about the malformed request comes when the parser finds it, in
        # httptools before the answers to the requests in front of it.
        raw = await both([piece, *held], caplog, log_order=False)
        assert statuses(raw) == [200] * answered + [400], piece
        assert answers(raw)[-1][2] == b'{"detail": "invalid HTTP request"}'


async def test_headers_over_the_limit_get_431(caplog: pytest.LogCaptureFixture) -> None:
    big = b"GET /ok HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 2000 + b"\r\n\r\n"
    scripts: list[list[Step]] = [[big], [big[:600], big[600:1200], big[1200:]], [OK, ("until", b"true}"), big]]
    for script in scripts:
        raw = await both(script, caplog)
        assert statuses(raw)[-1] == 431, script
        assert "--max-header-bytes" in json.loads(answers(raw)[-1][2])["detail"]


async def test_slow_head_gets_408_and_silent_connection_is_closed(caplog: pytest.LogCaptureFixture) -> None:
    raw = await both([b"GET /ok HTTP/1.1\r\nHost: t\r\n"], caplog, header_timeout=0.5)
    assert statuses(raw) == [408]
    assert await both([], caplog, header_timeout=0.5) == b""
    # The next request on a kept-alive connection.
    raw = await both([OK, ("until", b"true}"), b"GET /ok HTT"], caplog, header_timeout=0.5)
    assert statuses(raw) == [200, 408]


async def test_unread_body_is_cut_off_after_the_answer(caplog: pytest.LogCaptureFixture) -> None:
    head = b"POST /missing HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n"
    raw = await both([head + b"abc", ("until", b"Not Found")], caplog, body_timeout=0.3)  # the rest never comes
    assert statuses(raw) == [404]
    assert any("--body-timeout" in message for *_, message in _log(caplog))
    # ... but the rest of it, then the next request, are fine.
    raw = await both([head + b"abc", ("until", b"Not Found"), b"d" * 97 + OK_CLOSE], caplog)
    assert statuses(raw) == [404, 200]
    raw = await both([head + b"abc", ("until", b"Not Found"), b"d" * 97, OK_CLOSE], caplog)
    assert statuses(raw) == [404, 200]
    # A malformed body nobody reads ends the connection without a second answer.
    chunked = b"POST /missing HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n"
    raw = await both([chunked, ("until", b"Not Found"), b"zz\r\n"], caplog)
    assert statuses(raw) == [404]


async def test_connections_beyond_the_cap_get_503(caplog: pytest.LogCaptureFixture) -> None:
    for base in PROTOCOLS:
        async with serving(base, max_connections=1) as served:
            first = await asyncio.open_connection("127.0.0.1", served.port)
            await until(lambda: len(served.protocols) == 1, "the first connection accepted")
            raw = await play(served, [OK])
            first[1].close()
        body = b'{"detail": "too many open connections (over --max-connections 1); retry later"}'
        assert raw == (
            b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\nretry-after: 1\r\n\r\n%s" % (len(body), body)
        )


# -- which protocol ---------------------------------------------------------------------------


def test_guarded_protocol_is_httptools_when_it_imports() -> None:
    protocol = guarded_protocol(ServerSettings(max_header_bytes=1234, header_timeout=3.0))
    assert issubclass(protocol, GuardedHttpToolsProtocol)
    assert (protocol.max_header_bytes, protocol.header_timeout) == (1234, 3.0)


def test_guarded_protocol_falls_back_to_h11(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "httptools", None)  # as if it were not installed
    for name in ("chronoserve.server.protocol_httptools", "uvicorn.protocols.http.httptools_impl"):
        monkeypatch.delitem(sys.modules, name)
    protocol = guarded_protocol(ServerSettings(max_connections=7))
    assert issubclass(protocol, GuardedH11Protocol)
    assert protocol.max_connections == 7
