"""Connection hygiene of a real `chronoserve serve` process: no client can hang, crash or starve it.

Every test runs against both guarded protocols: httptools (what `serve` picks) and h11 (its
fallback without httptools; test_protocol_httptools.py compares the two byte for byte).
Slow and hostile clients are raw sockets. Every wait is for a state (an answer, a closed
socket, a log line) with a generous deadline: the server would otherwise keep these
connections forever, so "it happened at all, within 30 s" is the property under test.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_serve_process import free_port, wait_ready

if importlib.util.find_spec("torch") is None:  # the server process needs it, this one does not
    pytest.skip("torch is not installed", allow_module_level=True)
pytestmark = [pytest.mark.torch, pytest.mark.slow]

MODEL = "random/tiny-chronos-bolt"
DEADLINE = 30.0  # seconds: an upper bound for things that take a second or two
#: A POST /forecast announcing a 1000-byte body (the tests send less, or send it slowly).
UPLOAD_HEAD = b"POST /forecast HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
#: `chronoserve serve` on the protocol named by its first argument: "h11" runs it as if httptools
#: were not installed. It first prints which protocol class it will serve with.
SERVE = """
import sys
if sys.argv.pop(1) == "h11":
    sys.modules["httptools"] = None
from chronoserve.cli import main
from chronoserve.server.protocol import guarded_protocol
from chronoserve.server.runtime import ServerSettings
print("protocol:", guarded_protocol(ServerSettings()).__mro__[1].__name__, flush=True)
raise SystemExit(main())
"""
PROTOCOLS = {"httptools": "GuardedHttpToolsProtocol", "h11": "GuardedH11Protocol"}


# -- a server process -------------------------------------------------------------------------


@dataclass
class Server:
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    protocol: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=DEADLINE)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def serving(tmp: Path, protocol: str, *options: str) -> Iterator[Server]:
    port = free_port()
    log_path = tmp / "server.log"
    cmd = [
        sys.executable, "-c", SERVE, protocol, "serve", "--host", "127.0.0.1", "--port", str(port),
        "--default-model", MODEL, "--no-warmup", *options,
    ]  # fmt: skip
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ})
    server = Server(port, proc, log_path, protocol)
    try:
        try:
            wait_ready(server.url, proc)
        except AssertionError as exc:
            raise AssertionError(f"{exc}:\n{server.log_text()}") from None
        yield server
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


@pytest.fixture(scope="module", params=list(PROTOCOLS))
def protocol(request: pytest.FixtureRequest) -> str:
    """Which guarded protocol the servers run: every test runs on each."""
    name: str = request.param
    return name


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory, protocol: str) -> Iterator[Server]:
    """Short deadlines: slow clients are cut off within a second or two."""
    options = [
        "--header-timeout", "1", "--body-timeout", "2", "--keep-alive-timeout", "2",
        "--max-header-bytes", "4096", "--max-connections", "20",
    ]  # fmt: skip
    with serving(tmp_path_factory.mktemp("strict"), protocol, *options) as server:
        yield server


@pytest.fixture(scope="module")
def patient(tmp_path_factory: pytest.TempPathFactory, protocol: str) -> Iterator[Server]:
    """Long deadlines and a small connection cap: slow clients stay until the test lets go."""
    options = ["--header-timeout", "60", "--body-timeout", "60", "--keep-alive-timeout", "60", "--max-connections", "5"]
    with serving(tmp_path_factory.mktemp("patient"), protocol, *options) as server:
        yield server


# -- raw HTTP ---------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict[str, object]:
        assert self.headers.get("content-type") == "application/json", self.headers
        parsed = json.loads(self.body)
        assert isinstance(parsed, dict)
        return parsed


def parse(raw: bytes) -> Answer:
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep, f"no complete answer: {raw!r}"
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Answer(status, headers, body[: int(headers.get("content-length", len(body)))])


def read_to_close(sock: socket.socket, deadline: float = DEADLINE) -> bytes:
    """Everything the server sends until it closes (a reset after an answer counts as closed)."""
    end = time.monotonic() + deadline
    data = b""
    while True:
        sock.settimeout(max(0.01, end - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        except TimeoutError:
            raise AssertionError(f"the server kept the connection open for {deadline:g} s; got {data!r}") from None
        if not chunk:
            return data
        data += chunk


def read_answer(sock: socket.socket) -> Answer:
    """One answer on a connection the server keeps open (framed by content-length)."""
    data = b""
    while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < int(parse(data).headers["content-length"]):
        chunk = sock.recv(65536)
        assert chunk, f"closed mid-answer: {data!r}"
        data += chunk
    return parse(data)


def trickle(sock: socket.socket, payload: bytes, interval: float = 0.2) -> bytes:
    """Send ``payload`` a byte every ``interval`` seconds until the server answers or closes; then read to close."""
    end = time.monotonic() + DEADLINE
    for i in range(len(payload)):
        try:
            sock.sendall(payload[i : i + 1])
        except OSError:  # reset or broken pipe: the server has answered and closed
            break
        readable, _, _ = select.select([sock], [], [], interval)
        if readable:
            break
        assert time.monotonic() < end, "still trickling after the deadline"
    else:
        raise AssertionError("the server took the whole payload without answering")
    return read_to_close(sock)


def get_healthz(server: Server) -> Answer:
    """GET /healthz on a connection of its own, read until the server has closed it (and forgotten it)."""
    with server.connect() as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        return parse(read_to_close(sock))


def start_upload(server: Server, sent: bytes = b'{"city": "dongsi", ') -> socket.socket:
    """A POST /forecast whose body is half sent; returns once its handler is reading the body.

    The socket's bytes are in the server's receive buffer before the /healthz connection is
    even opened, and one event loop reads both in order: once /healthz is answered, the
    upload's headers have been parsed and its handler started.
    """
    sock = server.connect()
    sock.sendall(UPLOAD_HEAD + sent)
    assert get_healthz(server).status == 200
    return sock


# -- the protocol ------------------------------------------------------------------------------


def test_serves_with_the_protocol_asked_for(strict: Server) -> None:
    assert f"protocol: {PROTOCOLS[strict.protocol]}\n" in strict.log_text()
    # The parsers differ on line ends: h11 takes a bare LF, llhttp wants CRLF (and its
    # refusal is our JSON 400, not uvicorn's plain text).
    with strict.connect() as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\nHost: test\nConnection: close\n\n")
        answer = parse(read_to_close(sock))
    if strict.protocol == "h11":
        assert answer.status == 200
    else:
        assert answer.status == 400
        assert answer.json() == {"detail": "invalid HTTP request"}


# -- the request head -------------------------------------------------------------------------


def test_slowloris_headers_get_408_and_close(strict: Server) -> None:
    with strict.connect() as sock:
        raw = trickle(sock, b"GET /healthz HTTP/1.1\r\nHost: test\r\n" + b"X-Slow: " + b"a" * 1000)
    answer = parse(raw)
    assert answer.status == 408
    assert answer.headers["connection"] == "close"
    assert "--header-timeout" in str(answer.json()["detail"])


def test_silent_new_connection_is_closed(strict: Server) -> None:
    with strict.connect() as sock:
        assert read_to_close(sock) == b""  # closed without an answer: it never asked anything


def test_keep_alive_connection_is_closed_when_idle(strict: Server) -> None:
    with strict.connect() as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
        assert read_answer(sock).status == 200
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")  # kept alive: a second request
        assert read_answer(sock).status == 200
        assert read_to_close(sock) == b""


def test_keep_alive_slow_second_request_gets_408(strict: Server) -> None:
    with strict.connect() as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
        assert read_answer(sock).status == 200
        raw = trickle(sock, b"GET /healthz HTTP/1.1\r\nHost: test\r\n" + b"X-Slow: " + b"a" * 1000)
    answer = parse(raw)
    assert answer.status == 408
    assert "--header-timeout" in str(answer.json()["detail"])


def test_headers_over_the_limit_get_431(strict: Server) -> None:
    with strict.connect() as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Big: " + b"a" * 8000 + b"\r\n\r\n")
        answer = parse(read_to_close(sock))
    assert answer.status == 431
    assert answer.headers["connection"] == "close"
    assert "--max-header-bytes" in str(answer.json()["detail"])


def test_headers_under_the_limit_and_large_bodies_pass(strict: Server) -> None:
    with strict.connect() as sock:  # 3.5 KB of headers: under the 4096 bytes allowed
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Big: " + b"a" * 3500 + b"\r\n\r\n")
        assert read_answer(sock).status == 200
    with strict.connect() as sock:  # a small head and a 20 KB body in one write: the body is not head
        body = b"x" * 20_000
        sock.sendall(b"POST /healthz HTTP/1.1\r\nHost: test\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        assert read_answer(sock).status == 405


def test_malformed_request_gets_json_400(strict: Server) -> None:
    with strict.connect() as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        answer = parse(read_to_close(sock))
    assert answer.status == 400
    assert "detail" in answer.json()


# -- connections ------------------------------------------------------------------------------


def test_connections_beyond_the_cap_get_503_then_service_resumes(patient: Server) -> None:
    partial = b"GET /healthz HTTP/1.1\r\nHost: test\r\n"  # no end of headers: held for 60 s
    held = []
    try:
        for _ in range(4):
            held.append(patient.connect())
            held[-1].sendall(partial)
        # The fifth connection is accepted after the four slow ones: they are open, and the
        # server still answers.
        assert get_healthz(patient).status == 200
        held.append(patient.connect())
        held[-1].sendall(partial)
        with patient.connect() as sock:  # the sixth, beyond --max-connections 5
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
            answer = parse(read_to_close(sock))
        assert answer.status == 503
        assert answer.headers["retry-after"] == "1"
        assert "--max-connections" in str(answer.json()["detail"])
    finally:
        for sock in held:
            sock.close()
    end = time.monotonic() + DEADLINE
    while get_healthz(patient).status != 200:  # the closed ones are forgotten
        assert time.monotonic() < end, "service did not resume after the held connections closed"
        time.sleep(0.05)


# -- the request body -------------------------------------------------------------------------


def test_trickled_body_gets_408(strict: Server) -> None:
    with strict.connect() as sock:
        sock.sendall(UPLOAD_HEAD)
        raw = trickle(sock, b'{"city": "dongsi", "horizon_hours": 8' + b" " * 1000)
    answer = parse(raw)
    assert answer.status == 408
    assert answer.headers["connection"] == "close"
    assert "--body-timeout" in str(answer.json()["detail"])


def test_unread_body_still_trickling_after_the_answer_is_cut_off(strict: Server) -> None:
    # /healthz answers 405 to a POST without reading its body; the client keeps sending it.
    with strict.connect() as sock:
        sock.sendall(b"POST /healthz HTTP/1.1\r\nHost: test\r\nContent-Length: 1000\r\n\r\n{")
        assert read_answer(sock).status == 405
        assert trickle(sock, b" " * 999) == b""  # closed (--body-timeout), not kept open by each byte


def test_malformed_body_gets_json_400(strict: Server) -> None:
    with strict.connect() as sock:
        sock.sendall(b"POST /forecast HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\nzz\r\n")
        answer = parse(read_to_close(sock))
    assert answer.status == 400
    assert "detail" in answer.json()
    assert "Traceback" not in strict.log_text()


def test_client_gone_mid_upload_logs_one_line(patient: Server) -> None:
    sock = start_upload(patient)
    port = sock.getsockname()[1]
    sock.close()
    end = time.monotonic() + DEADLINE
    while True:
        lines = [line for line in patient.log_text().splitlines() if "client went away" in line]
        if any(f":{port}" in line for line in lines):
            break
        assert time.monotonic() < end, f"no log line about the client that went away:\n{patient.log_text()}"
        time.sleep(0.05)
    assert get_healthz(patient).status == 200  # anything the handler logs after the line is written by now
    output = patient.log_text()
    assert len([line for line in lines if f":{port}" in line]) == 1
    assert "Traceback" not in output
    assert "ClientDisconnect" not in output


def test_sigterm_with_a_half_sent_body_answers_503_and_exits(tmp_path: Path, protocol: str) -> None:
    drain = 3.0
    options = ["--drain-timeout", str(drain), "--header-timeout", "60", "--body-timeout", "60"]
    with serving(tmp_path, protocol, *options) as server:
        with start_upload(server) as sock:
            server.proc.send_signal(signal.SIGTERM)
            answer = parse(read_to_close(sock))
        assert answer.status == 503, answer
        assert answer.json() == {"detail": "the server is shutting down"}
        assert server.proc.wait(timeout=drain + DEADLINE) == 0
        output = server.log_text()
        assert "Traceback" not in output
        assert "Cancel" not in output  # uvicorn never had to cancel a handler
