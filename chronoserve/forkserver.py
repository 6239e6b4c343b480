"""Worker processes that start in a fraction of a second: forked from a process that has already
imported torch, transformers and chronos.

Those imports take 3-8 s, so a fresh interpreter (``multiprocessing``'s spawn, ``python -m``)
serves seconds after it was started. Workers fork instead from the standard library's
``multiprocessing`` fork server, preloaded with :mod:`chronoserve._zygote` (which imports all of
that once, keeps the process single-threaded and runs no torch work):

- :func:`worker_context`: the ``multiprocessing`` context to start workers from. The first
  call in a process decides, with a one-time probe (the fork server's first child reports its
  state): preloaded and single-threaded, workers fork from it; a fork server with more than one
  thread is refused (forking a process that has threads can deadlock the child, pytorch issue
  2245) with one warning, and workers start with ``spawn``, as where there is no fork server
  (Windows). :func:`zygote` is that decision and what the probe found.
- :func:`start_worker` / :func:`run_worker`: ``target(*args)`` in a worker process, which
  reports to its parent how it started (:class:`WorkerStart`: the method, the seconds from the
  parent's ``start()`` to the worker ready to run its target) and then what the target
  returned; :func:`started` tells the worker itself.

The fork server's threads are counted once, by the probe: nothing runs in it afterwards but the
loop that accepts fork requests.

The fork server is one per process (``multiprocessing.forkserver`` keeps it in a module global,
shared with any other user of the ``forkserver`` start method in the process): whoever starts
it first decides its preload. If it was started before chronoserve's first call, without
chronoserve's preload, a log line says so and workers still fork from it (importing torch
themselves). It lives as long as this process or its last worker, whichever ends later.

A worker forked from the fork server inherits the fork server's state, not its parent's; a
worker started here gets back what a spawned process would have had:

- the environment: the parent's, as at ``start()`` (a library that read a variable when the
  fork server imported it keeps what it read then, :attr:`WorkerStart.import_environment`:
  numpy's OpenBLAS keeps one thread, torch's pools are sized by ``torch.set_num_threads``);
- standard output and error: the parent's, as at ``start()`` (or files, when asked);
- signals: the fork server ignores SIGINT and catches SIGCHLD; the worker raises
  ``KeyboardInterrupt`` on SIGINT (unless its parent ignored SIGINT) and leaves SIGCHLD alone;
- its parent: its OS parent is the fork server; ``multiprocessing.parent_process()`` is the
  process that started it (what :func:`chronoserve.server.process.exit_with_parent` watches);
- exit handlers (``atexit``) run when its target returns, as at a spawned process's exit.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from types import ModuleType
from typing import TYPE_CHECKING, Any, Union

if TYPE_CHECKING:
    from multiprocessing.context import ForkServerContext, SpawnContext

logger = logging.getLogger("chronoserve.forkserver")

#: How a worker started: forked from the fork server, or a fresh interpreter.
FORK_SERVER = "fork-server"
SPAWN = "spawn"
#: The fork server's preload: imported there, in this order, before its first fork.
_ZYGOTE = "chronoserve._zygote"
PRELOAD = (_ZYGOTE,)
#: Seconds the probe waits for the fork server's first child: a guard against a hang, not a speed
#: (the preload takes 3-8 s, much longer on a loaded machine).
PROBE_TIMEOUT_SECONDS = 600.0

WorkerContext = Union["ForkServerContext", "SpawnContext"]


@dataclass(frozen=True)
class Zygote:
    """How this process's workers start, and what the probe found in the fork server."""

    method: str
    """:data:`FORK_SERVER` or :data:`SPAWN`."""
    reason: str
    """Why, in words (the line that was logged)."""
    pid: int | None = None
    """The fork server's pid (None without one)."""
    preloaded: bool = False
    """chronoserve's preload ran in the fork server (torch and the rest are imported there)."""
    threads: int | None = None
    """The fork server's OS threads at the probe (None where the system does not say)."""
    import_seconds: float | None = None
    """How long the preload's imports took."""
    missing: tuple[str, ...] = ()
    """Preloaded modules that failed to import, with their errors (workers import them themselves)."""


@dataclass(frozen=True)
class WorkerStart:
    """How a worker process started: what it reports to its parent, and :func:`started` returns in it."""

    method: str
    """:data:`FORK_SERVER` or :data:`SPAWN`."""
    seconds: float
    """From the parent's ``start()`` to the worker ready to run its target: an interpreter,
    the imports it was asked for and its arguments for a spawned worker, a fork and its
    arguments for a preloaded one."""
    zygote_pid: int | None = None
    """The fork server the worker forked from (None when spawned)."""
    preloaded: bool = False
    """torch, transformers and chronos were imported before the fork, in the fork server."""
    import_environment: dict[str, str | None] | None = None
    """For a preloaded worker: the environment variables that size thread pools at import
    (``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``, ...) as the fork server's imports saw them;
    setting them in the worker no longer resizes those pools."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Finished:
    """What a worker's target returned, and when (``time.time()`` in the worker)."""

    value: Any
    at: float


_lock = threading.Lock()
_decision: Zygote | None = None
_started: WorkerStart | None = None


def process_age() -> float:
    """Seconds since the operating system created this process (its fork, or its interpreter's start)."""
    psutil: Any = importlib.import_module("psutil")
    return max(0.0, time.time() - float(psutil.Process().create_time()))


def os_threads(pid: int | None = None) -> int | None:
    """The OS threads of process ``pid`` (this one by default); None where the system does not say."""
    try:
        return len(os.listdir(f"/proc/{pid or 'self'}/task"))
    except OSError:
        pass
    try:
        psutil: Any = importlib.import_module("psutil")  # no type stubs: used as Any (as in chronoserve.perf)
        return int(psutil.Process(pid).num_threads())
    except Exception:  # no psutil, no such process, no permission: unknown
        return None


def zygote(preload: Sequence[str] = PRELOAD) -> Zygote:
    """How this process's workers start: decided by the first call (which starts the fork server
    with ``preload`` and probes it, seconds), then the same answer."""
    global _decision
    with _lock:
        if _decision is None:
            _decision = _decide(tuple(preload))
            quiet = _decision.method == FORK_SERVER and _decision.preloaded and not _decision.missing
            logger.log(logging.INFO if quiet else logging.WARNING, "%s", _decision.reason)
        return _decision


def worker_context(preload: Sequence[str] = PRELOAD) -> WorkerContext:
    """The ``multiprocessing`` context whose processes start as :func:`zygote` decided."""
    if zygote(preload).method == FORK_SERVER:
        return multiprocessing.get_context("forkserver")
    return multiprocessing.get_context("spawn")


def started() -> WorkerStart | None:
    """In a worker of :func:`start_worker`: how it started; None in any other process."""
    return _started


def _decide(preload: tuple[str, ...]) -> Zygote:
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return Zygote(SPAWN, "no fork server on this platform: worker processes start with spawn")
    context = multiprocessing.get_context("forkserver")
    earlier = _fork_server_started()
    if not earlier:
        context.set_forkserver_preload(list(preload))
    try:
        found = _probe(context)
    except Exception as exc:
        return Zygote(SPAWN, f"the fork server started no process ({exc!r}): worker processes start with spawn")
    pid, threads = found["pid"], found["threads"]
    facts = {k: found[k] for k in ("preloaded", "threads", "import_seconds", "missing")}
    if threads is not None and threads > 1:
        reason = (
            f"refused the fork server (pid {pid}): it has {threads} threads, and forking a process with threads "
            "can deadlock the child (pytorch issue 2245); worker processes start with spawn"
        )
        return Zygote(SPAWN, reason, pid, **facts)
    if found["preloaded"]:
        reason = (
            f"worker processes fork from the fork server (pid {pid}, one thread), which imported torch, "
            f"transformers and chronos in {found['import_seconds']:.1f} s"
        )
        if found["missing"]:
            reason += f"; these failed to import there: {'; '.join(found['missing'])}"
    elif earlier:
        reason = (
            f"the multiprocessing fork server (pid {pid}) was started before chronoserve's, without its preload: "
            "worker processes fork from it and import torch themselves"
        )
    else:
        reason = (
            f"the fork server (pid {pid}) has not imported chronoserve's preload ({_ZYGOTE}; its preload: "
            f"{', '.join(preload) or 'none'}): worker processes fork from it and import torch themselves"
        )
    return Zygote(FORK_SERVER, reason, pid, **facts)


def _fork_server_started() -> bool:
    """Whether this process's ``multiprocessing`` fork server was started already (its preload then fixed)."""
    from multiprocessing import forkserver

    return getattr(getattr(forkserver, "_forkserver", None), "_forkserver_pid", None) is not None


def _probe(context: ForkServerContext) -> dict[str, Any]:
    """Start the fork server (if need be) and a trivial child of it that reports the fork server's state."""
    reader, writer = context.Pipe(duplex=False)
    process = context.Process(target=_report_zygote, args=(writer,), name="chronoserve-forkserver-probe", daemon=True)
    with reader:
        try:
            process.start()
        finally:
            writer.close()
        if not reader.poll(PROBE_TIMEOUT_SECONDS):
            process.kill()
            raise TimeoutError(f"no report from the fork server's first child in {PROBE_TIMEOUT_SECONDS:g} s")
        found: dict[str, Any] = reader.recv()
    process.join()
    return found


def _report_zygote(report: Connection) -> None:
    """In the fork server's child: the fork server's pid, threads (now) and preload."""
    server = os.getppid()
    module = _preloaded()
    counts = [n for n in (os_threads(server), module.THREADS if module else None) if n is not None]
    report.send(
        {
            "pid": server,
            "threads": max(counts) if counts else None,
            "preloaded": module is not None,
            "import_seconds": module.IMPORT_SECONDS if module else None,
            "missing": tuple(module.MISSING) if module else (),
        }
    )
    report.close()


def _preloaded() -> ModuleType | None:
    """In a fork server's child: :mod:`chronoserve._zygote`, if the fork server imported it (another pid)."""
    module = sys.modules.get(_ZYGOTE)
    return module if module is not None and os.getpid() != module.PID else None


# -- workers ----------------------------------------------------------------------------------


class Worker:
    """A started worker process, and what it reports: how it started, then what its target returned."""

    def __init__(self, process: BaseProcess, method: str, reports: Connection, started_at: float) -> None:
        self.process = process
        self.method = method
        self.reports = reports
        """The worker's reports (a connection to wait on, e.g. with ``multiprocessing.connection.wait``)."""
        self.started_at = started_at
        """``time.time()`` at the parent's ``start()``."""
        self._start: WorkerStart | None = None
        self._finished: Finished | None = None
        self._open = True

    @property
    def pid(self) -> int | None:
        return self.process.pid

    @property
    def reporting(self) -> bool:
        """Whether a report may still come (the worker has not closed its end, nor this one been closed)."""
        return self._open

    def startup(self, timeout: float | None = None) -> WorkerStart | None:
        """How the worker started, once it said so (waiting up to ``timeout`` seconds, None: until it
        does or ends); None if it has not (yet)."""
        self._receive(lambda: self._start is not None, timeout)
        return self._start

    def finished(self, timeout: float | None = None) -> Finished | None:
        """What the target returned, once it did (waiting as :meth:`startup`); None if it has not
        (yet), or the worker ended otherwise."""
        self._receive(lambda: self._finished is not None, timeout)
        return self._finished

    def stop(self, grace: float = 10.0) -> None:
        """Terminate the worker (SIGTERM), kill it if it is still there after ``grace`` seconds, reap it."""
        self.process.terminate()
        self.process.join(grace)
        if self.process.exitcode is None:
            self.process.kill()
            self.process.join()

    def close(self) -> None:
        """Stop listening to the worker's reports (the process itself is left alone)."""
        self.reports.close()
        self._open = False

    def _receive(self, done: Callable[[], bool], timeout: float | None) -> None:
        end = None if timeout is None else time.monotonic() + timeout
        while not done() and self._open:
            left = None if end is None else max(0.0, end - time.monotonic())
            try:
                if not self.reports.poll(left):
                    return
                kind, value = self.reports.recv()
            except (EOFError, OSError):  # the worker ended (or closed its end)
                self.close()
                return
            if kind == "start":
                self._start = value
            else:
                self._finished = value


def start_worker(
    target: Callable[..., Any],
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    name: str | None = None,
    stdout: str | os.PathLike[str] | None = None,
    stderr: str | os.PathLike[str] | None = None,
    imports: Sequence[str] = (),
    context: WorkerContext | None = None,
) -> Worker:
    """Start ``target(*args, **kwargs)`` in a worker process (from ``context``, by default
    :func:`worker_context`); everything passed must pickle, the target by reference.

    ``stdout``/``stderr``: a file the worker writes that stream to (``os.devnull`` to drop it),
    else the parent's. ``imports``: modules the worker imports before it reports its start, what
    it needs to serve (already there in a preloaded worker), so that its start-up time is the
    time until it is ready; none where the target must come first (a worker that pins itself to
    cores before any library starts a thread). The target's return value comes back
    (:meth:`Worker.finished`); an ``int`` is also the worker's exit status, as ``main()``'s
    under ``python -m``.
    """
    ctx = context if context is not None else worker_context()
    method = FORK_SERVER if ctx.get_start_method() == "forkserver" else SPAWN
    reports, writer = ctx.Pipe(duplex=False)
    entry = _Entry(target, args, kwargs or {}, method, writer, {1: stdout, 2: stderr}, imports)
    process = ctx.Process(target=entry, name=name)
    try:
        entry.started_at = time.time()
        process.start()
    except BaseException:
        reports.close()
        raise
    finally:
        writer.close()  # the worker holds the only one left: its end closes with it
    return Worker(process, method, reports, entry.started_at)


def run_worker(
    target: Callable[..., Any],
    args: Sequence[Any] = (),
    *,
    name: str | None = None,
    stdout: str | os.PathLike[str] | None = None,
    stderr: str | os.PathLike[str] | None = None,
    grace: float = 10.0,
) -> int:
    """Run ``target(*args)`` in a worker process (:func:`start_worker`) and wait for it; its exit status.

    If this process is interrupted meanwhile (Ctrl-C, or a signal handler that raises), the
    worker is stopped (:meth:`Worker.stop`) before the exception goes on.
    """
    worker = start_worker(target, args, name=name, stdout=stdout, stderr=stderr)
    try:
        worker.process.join()
    except BaseException:
        worker.stop(grace)
        raise
    finally:
        worker.close()
    code = worker.process.exitcode
    assert code is not None
    return code


class _InheritedFd:
    """A file descriptor of the parent, duplicated into the worker when the worker's arguments are
    pickled (sent over the fork server's socket, or inherited by a spawned process)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __reduce__(self) -> tuple[Any, ...]:
        from multiprocessing.reduction import DupFd

        return (_inherited, (DupFd(self.fd),))


def _inherited(dup: Any) -> _InheritedFd:
    return _InheritedFd(int(dup.detach()))


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


class _Entry:
    """What a worker process runs first: itself made as a spawned process would be, its start
    reported, then the target (whose return value is reported too)."""

    def __init__(
        self,
        target: Callable[..., Any],
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        method: str,
        report: Connection,
        files: Mapping[int, str | os.PathLike[str] | None],
        imports: Sequence[str],
    ) -> None:
        self.target = target
        self.imports = tuple(imports)
        self.args = tuple(args)
        self.kwargs = dict(kwargs)
        self.method = method
        self.report = report
        self.started_at = 0.0
        self.files = {fd: os.fspath(path) for fd, path in files.items() if path is not None}
        self.environ: dict[str, str] = {}
        self.streams: dict[int, _InheritedFd] = {}
        self.sigint_ignored = False
        if method == FORK_SERVER:  # what a spawned process would inherit from its parent now
            self.environ = dict(os.environ)
            self.streams = {fd: _InheritedFd(fd) for fd in (1, 2) if fd not in self.files and _is_open(fd)}
            self.sigint_ignored = signal.getsignal(signal.SIGINT) == signal.SIG_IGN

    def __call__(self) -> None:
        global _started
        preloaded = False
        environment = None
        if self.method == FORK_SERVER:
            self._as_if_spawned()
            module = _preloaded()
            preloaded = module is not None
            environment = dict(module.ENVIRONMENT) if module else None
        for fd, path in self.files.items():
            _write_to(fd, path)
        for name in self.imports:
            importlib.import_module(name)
        _started = WorkerStart(
            method=self.method,
            seconds=time.time() - self.started_at,
            zygote_pid=os.getppid() if self.method == FORK_SERVER else None,
            preloaded=preloaded,
            import_environment=environment,
        )
        self._send("start", _started)
        try:
            value = self.target(*self.args, **self.kwargs)
            self._send("done", Finished(value, time.time()))
        finally:
            self.report.close()
            if self.method == FORK_SERVER:
                atexit._run_exitfuncs()  # the fork server's children leave with os._exit
        if isinstance(value, int) and not isinstance(value, bool):
            raise SystemExit(value)

    def _as_if_spawned(self) -> None:
        os.environ.clear()
        os.environ.update(self.environ)
        signal.signal(signal.SIGINT, signal.SIG_IGN if self.sigint_ignored else signal.default_int_handler)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for fd, inherited in self.streams.items():
            _flush(fd)
            os.dup2(inherited.fd, fd)
            os.close(inherited.fd)

    def _send(self, kind: str, value: object) -> None:
        with contextlib.suppress(OSError):  # the parent stopped listening: nothing to tell
            self.report.send((kind, value))


def _flush(fd: int) -> None:
    stream = {1: sys.stdout, 2: sys.stderr}.get(fd)
    if stream is not None:
        with contextlib.suppress(Exception):
            stream.flush()


def _write_to(fd: int, path: str) -> None:
    _flush(fd)
    opened = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(opened, fd)
    os.close(opened)
