"""A hostile client against a running `chronoserve serve` on this machine: one line per attack.

    chronoserve serve --port 8790 &
    python bench/hostile.py http://127.0.0.1:8790

The reproducers of the hardening issue (work sized by untrusted numbers, overflow, covariates
and cost, model names, types, slow and oversized connections), each sent once, while a thread
probes /healthz every 50 ms; it prints status, time and the start of each answer, and the
probe's median and worst latency. Loopback only: it refuses any other address. The connection
attacks wait out the server's --header-timeout and --body-timeout (10 s and 30 s by default).
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx

COVARIATE_MODEL = "random/chronos-2"


def report(label: str, status: object, seconds: float, text: str) -> None:
    text = text if len(text) < 160 else text[:157] + "..."
    print(f"{label:<58} {status}  {seconds * 1000:8.1f} ms  {text}")


class Attacker:
    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise SystemExit(f"{url}: loopback addresses only")
        self.url = url.rstrip("/")
        self.port = parts.port or 80

    def post(self, label: str, body: Any, path: str = "/forecast", **kwargs: Any) -> None:
        start = time.perf_counter()
        if "content" in kwargs:
            r = httpx.post(self.url + path, timeout=120, **kwargs)
        else:
            r = httpx.post(self.url + path, json=body, timeout=120, **kwargs)
        report(label, r.status_code, time.perf_counter() - start, r.text)

    def raw(self, label: str, payload: bytes, wait: float = 60.0) -> None:
        """Send ``payload`` on a fresh connection and read until the server closes it."""
        start = time.perf_counter()
        data = b""
        with socket.create_connection(("127.0.0.1", self.port)) as s:
            s.settimeout(wait)
            try:
                s.sendall(payload)
                while chunk := s.recv(65536):
                    data += chunk
            except TimeoutError:
                data += b"<still open>"
            except ConnectionError as exc:
                data += f"<{type(exc).__name__}>".encode()
        first = data.split(b"\r\n", 1)[0].decode(errors="replace") or "<closed without an answer>"
        print(f"{label:<58} {first}  after {time.perf_counter() - start:.1f} s")


def covariates(n: int, length: int) -> dict[str, Any]:
    return {
        "model_name": COVARIATE_MODEL,
        "target": [1.0] * length,
        "horizon_hours": 4,
        "past_covariates": {f"c{i}": [0.5] * length for i in range(n)},
    }


def attacks(a: Attacker) -> list[tuple[str, Callable[[], None]]]:
    t0 = "2000-01-01T00:00:00"
    one = {"target": [1.0]}
    return [
        ("class 1: work sized by untrusted numbers", lambda: None),
        ("", lambda: a.post("horizon 2755369720 + start", {**one, "horizon_hours": 2755369720, "start": t0 + "Z"})),
        (
            "",
            lambda: a.post(
                "horizon 2^64-1 + freq_hours 1e-12", {**one, "horizon_hours": 2**64 - 1, "freq_hours": 1e-12}
            ),
        ),
        ("", lambda: a.post("horizon 10^7", {**one, "horizon_hours": 10**7, "start": t0})),
        (
            "",
            lambda: a.post(
                "batch of 100 x horizon 10^5",
                {"requests": [{"target": [1.0, 2.0], "horizon_hours": 10**5}] * 100},
                "/forecast/batch",
            ),
        ),
        ("", lambda: a.post("horizon 10000 (schema max) + start", {**one, "horizon_hours": 10000, "start": t0})),
        ("class 2: overflow", lambda: None),
        (
            "",
            lambda: a.post("start 9999-12-31T22:00 + 3 h", {**one, "horizon_hours": 3, "start": "9999-12-31T22:00:00"}),
        ),
        ("", lambda: a.post("freq_hours 1e300", {**one, "horizon_hours": 3, "start": t0, "freq_hours": 1e300})),
        ("class 3: covariates and cost", lambda: None),
        ("", lambda: a.post(f"600 covariates on {COVARIATE_MODEL}", covariates(600, 40))),
        ("", lambda: a.post(f"2000 covariates on {COVARIATE_MODEL}", covariates(2000, 4))),
        ("", lambda: a.post("20 covariates x 8192 points (over the GFLOP budget)", covariates(20, 8192))),
        ("", lambda: a.post("3 covariates x 512 points (allowed)", covariates(3, 512))),
        ("class 5: names", lambda: None),
        ("", lambda: a.post("'random/chronos-bolt-tiny ' (trailing spaces)", named("random/chronos-bolt-tiny   "))),
        ("", lambda: a.post("' random/chronos-bolt-tiny' (leading space)", named(" random/chronos-bolt-tiny"))),
        ("", lambda: a.post("a 10,000-character name", named("x" * 10000))),
        ("", lambda: many_names(a)),
        ("class 8: types and media", lambda: None),
        ("", lambda: a.post("horizon_hours true", {"city": "dongsi", "horizon_hours": True})),
        ("", lambda: a.post('horizon_hours "24"', {"city": "dongsi", "horizon_hours": "24"})),
        ("", lambda: a.post('target ["1"]', {"target": ["1"], "horizon_hours": 2})),
        (
            "",
            lambda: a.post(
                "content-type text/plain", None, content=b'{"city":"dongsi"}', headers={"content-type": "text/plain"}
            ),
        ),
        ("", lambda: a.post("city + target", {"city": "dongsi", "target": [1.0]})),
        ("class 6: connections", lambda: None),
        ("", lambda: a.raw("headers never finished (slowloris)", b"POST /forecast HTTP/1.1\r\nHost: x\r\n")),
        ("", lambda: a.raw("connection that sends nothing", b"")),
        (
            "",
            lambda: a.raw(
                "16 MB of headers", b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (16 << 20) + b"\r\n\r\n"
            ),
        ),
        (
            "",
            lambda: a.raw(
                "body announced 100 bytes, 10 sent",
                b"POST /forecast HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b'Content-Length: 100\r\n\r\n{"city": "',
            ),
        ),
    ]


def named(name: str) -> dict[str, Any]:
    return {"model_name": name, "target": [1.0, 2.0], "horizon_hours": 2}


def many_names(a: Attacker, n: int = 2000) -> None:
    before = len(httpx.get(a.url + "/metrics").text)
    start = time.perf_counter()
    codes: dict[int, int] = {}
    with httpx.Client(timeout=30) as client:
        for i in range(n):
            r = client.post(a.url + "/forecast", json=named(f"random/chronos-bolt-tiny-{i}"))
            codes[r.status_code] = codes.get(r.status_code, 0) + 1
    after = len(httpx.get(a.url + "/metrics").text)
    elapsed = time.perf_counter() - start
    print(f"{f'{n:,} distinct unknown names':<58} {codes}  {elapsed:.1f} s; /metrics {before} -> {after} bytes")


def main(url: str) -> None:
    a = Attacker(url)
    lags: list[float] = []
    stop = threading.Event()

    def probe() -> None:
        while not stop.is_set():
            start = time.perf_counter()
            httpx.get(a.url + "/healthz", timeout=300)
            lags.append(time.perf_counter() - start)
            time.sleep(0.05)

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        for heading, attack in attacks(a):
            if heading:
                print(heading)
            attack()
    finally:
        stop.set()
        prober.join()
    lags.sort()
    median, worst = lags[len(lags) // 2] * 1000, lags[-1] * 1000
    print(f"/healthz during all of the above: {len(lags)} probes, median {median:.1f} ms, max {worst:.1f} ms")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8000")
