"""``chronoserve serve --http-workers N``: N front-end processes, one engine process, this one watching.

This process binds the listening socket and starts (from the fork server of
:mod:`chronoserve.forkserver`, which has imported torch and the server already, so a process
starts, or restarts, in well under a second; with ``multiprocessing``'s spawn where the fork
server is refused or missing):

- the **engine process** (:mod:`.engine_process`): the models, the policy, the metrics, one
  engine that sees every request, so batching is whole and nothing is loaded twice;
- N **front-end processes** (:mod:`.frontend`) sharing the socket (the kernel spreads the
  connections): uvicorn, validation and answers, talking to the engine over ZeroMQ ``ipc://``
  in a directory only this user can open.

It logs how each process started and how long it took to be ready to run (the fork server or
spawn, seconds from its start), and restarts a process that dies (after a pause that doubles
while it keeps dying young, up to :data:`MAX_BACKOFF_SECONDS`); the front ends fail what the
dead engine held with 503 and answer 503 ``engine_unavailable`` until it is back. On SIGTERM
or SIGINT every process drains as the one-process server does (stop accepting, finish queued
work within ``--drain-timeout``, answer every open request) and this one exits 0 once they
all have. An engine process that cannot serve at all (its default model failed to load: it
exits with :data:`~.process.EXIT_FATAL`) is not restarted: every process stops and this one
exits 1. Each process drains too if this one dies, even by SIGKILL (``exit_with_parent``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing.connection
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

from ..engine import default_workers
from ..forkserver import FORK_SERVER, Worker, start_worker, worker_context
from .process import EXIT_FATAL
from .runtime import ServerSettings

logger = logging.getLogger("chronoserve.server")

#: A process that ran this long before it died is restarted at once; younger, after a pause.
HEALTHY_SECONDS = 30.0
MAX_BACKOFF_SECONDS = 30.0
#: Seconds beyond the drain timeout that the supervisor waits for its processes at shutdown.
SHUTDOWN_GRACE_SECONDS = 10.0


#: What each process imports before it reports itself ready to run (already imported in the fork server).
ENGINE_IMPORTS = ("torch", "chronos", "chronoserve.models.chronos", "chronoserve.server.engine_process")
FRONTEND_IMPORTS = ("chronoserve.server.frontend",)


@dataclass
class _Child:
    name: str
    start: Callable[[], Worker]
    worker: Worker | None = None
    started_at: float = 0.0
    failures: int = 0
    restart_at: float | None = None
    announced: bool = False

    @property
    def process(self) -> BaseProcess | None:
        return self.worker.process if self.worker is not None else None


def engine_settings(settings: ServerSettings, engines: int) -> ServerSettings:
    """``settings`` for each of ``engines`` engine processes: unless set, torch threads share the
    cores among every engine's workers (one engine: the engine's own default)."""
    e = settings.engine
    if engines == 1 or e.torch_threads is not None:
        return settings
    workers = e.workers or default_workers()
    threads = max(1, (os.cpu_count() or 1) // (workers * engines))
    return dataclasses.replace(settings, engine=e.with_options(torch_threads=threads))


def listening_socket(host: str, port: int) -> socket.socket:
    """A bound TCP socket the front ends share (each listens on it; the kernel spreads connections)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


class Supervisor:
    """Start, watch, restart and finally drain the engine process and the front-end processes."""

    def __init__(
        self, settings: ServerSettings, host: str, port: int, log_level: str, http_workers: int, engines: int = 1
    ) -> None:
        if http_workers < 1:
            raise ValueError(f"http_workers must be at least 1, not {http_workers}")
        if engines < 1:
            raise ValueError(f"engines must be at least 1, not {engines}")
        self.engines = engines
        self.settings = settings
        self.host = host
        self.port = port
        self.log_level = log_level
        self.http_workers = http_workers
        self._stopping = False
        self._fatal = False

    def run(self) -> int:
        """Serve until a signal; the exit status (0 after a drain)."""
        from .engine_process import engine_main
        from .frontend import frontend_main

        context = worker_context()  # the fork server, preloaded (probed once: seconds), or spawn
        sock = listening_socket(self.host, self.port)
        host, port = sock.getsockname()[:2]
        directory = tempfile.mkdtemp(prefix="chronoserve-")  # mode 0700: only this user reaches the engine
        addresses = [f"ipc://{os.path.join(directory, f'engine-{i}.ipc')}" for i in range(self.engines)]
        s, level = engine_settings(self.settings, self.engines), self.log_level

        def engine(i: int) -> Callable[[], Worker]:
            return lambda: start_worker(
                engine_main,
                (s, addresses[i], level, i),
                name=f"chronoserve-engine-{i}",
                imports=ENGINE_IMPORTS,
                context=context,
            )

        def frontend(i: int) -> Callable[[], Worker]:
            return lambda: start_worker(
                frontend_main,
                (s, addresses, [sock], level, i),
                name=f"chronoserve-http-{i}",
                imports=FRONTEND_IMPORTS,
                context=context,
            )

        engines = [_Child("engine" if self.engines == 1 else f"engine-{i}", engine(i)) for i in range(self.engines)]
        children = engines + [_Child(f"http-{i}", frontend(i)) for i in range(self.http_workers)]
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        logger.info(
            "serving on %s://%s:%d with %d front-end process(es) and %d engine process(es)",
            "https" if self.settings.ssl_certfile else "http",
            host,
            port,
            self.http_workers,
            self.engines,
        )
        try:
            for child in children:
                self._start(child)
            while not self._stopping:
                self._watch(children)
            status = self._shut_down(children)
            return 1 if self._fatal else status
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            sock.close()
            shutil.rmtree(directory, ignore_errors=True)

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        self._stopping = True

    def _start(self, child: _Child) -> None:
        if child.worker is not None:
            child.worker.close()
        child.worker = child.start()
        child.started_at = time.monotonic()
        child.restart_at = None
        child.announced = False
        how = "from the fork server" if child.worker.method == FORK_SERVER else "by spawn"
        logger.info("started the %s process (pid %s) %s", child.name, child.worker.pid, how)

    def _announce(self, child: _Child) -> None:
        """Log once how long the child took to be ready to run, when it has said so."""
        worker = child.worker
        if worker is None or child.announced:
            return
        start = worker.startup(timeout=0)
        if start is not None:
            when = f"{start.seconds:.2f} s after its start ({start.method})"
            logger.info("the %s process (pid %s) is up %s", child.name, worker.pid, when)
        child.announced = start is not None or not worker.reporting

    def _watch(self, children: list[_Child]) -> None:
        now = time.monotonic()
        for child in children:
            if child.restart_at is not None and now >= child.restart_at and not self._stopping:
                self._start(child)
        alive = [c.process.sentinel for c in children if c.process is not None and c.restart_at is None]
        reports = [c.worker.reports for c in children if c.worker is not None and not c.announced]
        multiprocessing.connection.wait([*alive, *reports], timeout=0.2)
        for child in children:
            self._announce(child)
        for child in children:
            process = child.process
            if process is None or child.restart_at is not None or process.is_alive() or self._stopping:
                continue
            lived = time.monotonic() - child.started_at
            if process.exitcode == EXIT_FATAL:  # it said why (its default model cannot load): no restart helps
                logger.error("the %s process cannot serve (it said why above); stopping the server", child.name)
                self._fatal = self._stopping = True
                return
            child.failures = 0 if lived >= HEALTHY_SECONDS else child.failures + 1
            pause = 0.0 if child.failures == 0 else min(MAX_BACKOFF_SECONDS, 0.5 * 2**child.failures)
            logger.error(
                "the %s process (pid %s) exited with %s after %.1f s; restarting it%s",
                child.name,
                process.pid,
                _status(process.exitcode),
                lived,
                f" in {pause:.1f} s" if pause else "",
            )
            child.restart_at = time.monotonic() + pause

    def _shut_down(self, children: list[_Child]) -> int:
        """Every process drains at once: the front ends answer what they hold, the engine runs its queue."""
        logger.info("draining: %d process(es)", len(children))
        running = [c.process for c in children if c.process is not None and c.process.is_alive()]
        for process in running:
            _signal(process, signal.SIGTERM)
        deadline = time.monotonic() + self.settings.drain_timeout + SHUTDOWN_GRACE_SECONDS
        status = 0
        for process in running:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                logger.error("the %s process did not stop in time: killed", process.name)
                process.kill()
                process.join()
                status = 1
            elif process.exitcode not in (0, -signal.SIGINT):
                logger.error("the %s process exited with %s while draining", process.name, _status(process.exitcode))
                status = 1
        logger.info("all processes stopped")
        return status


def _signal(process: BaseProcess, sig: int) -> None:
    if process.pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, sig)


def _status(code: Any) -> str:
    if isinstance(code, int) and code < 0:
        return f"signal {signal.Signals(-code).name}"
    return f"status {code}"
