"""A background sampler of system and process load: :class:`SystemSampler`.

psutil's ``cpu_percent(interval=None)`` measures the load *since the previous call*, so its
very first call returns a meaningless 0.0; since psutil 5.9.6 that state is kept per
thread. The sampler therefore primes every such counter on its own thread and drops that
reading, and only then starts recording. Values the machine does not expose are None (an
empty CSV cell), never 0.
"""

from __future__ import annotations

import importlib
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from .logger import csv_cell
from .sensors import SENSOR_FIELDS, Sensors

#: Columns every sample has, in CSV order.
BASE_FIELDS: tuple[str, ...] = (
    "time_s",
    "cpu_percent",
    "cpu_user_percent",
    "cpu_system_percent",
    "mem_used_bytes",
    "mem_available_bytes",
    "proc_cpu_percent",
    "proc_rss_bytes",
)

#: The least time between two samples for a meaningful percentage (psutil's advice: 0.1 s).
MIN_INTERVAL_S = 0.1

Sample = dict[str, float | int | None]


class SystemSampler:
    """Samples CPU, memory and (optionally) per-core load and sensors every ``interval_s``.

    ``with SystemSampler("samples.csv", per_core=True, sensors=True) as sampler: ...`` then
    ``sampler.samples`` (a list of dicts, see :attr:`fields`) and ``sampler.peak_rss_bytes``.

    - ``pid``: the process whose CPU and RSS are recorded (default: this one).
      ``proc_cpu_percent`` is in percent of one core, so it can reach ``100 * cores``.
    - ``per_core``: adds ``cpu0_percent`` .. ``cpuN_percent``.
    - ``sensors``: adds ``temp_c``, ``freq_mhz``, ``throttled``, ``energy_uj`` (see
      :mod:`chronoserve.perf.sensors`); pass a :class:`~chronoserve.perf.sensors.Sensors`
      (or anything with ``read()``) to choose the sources.
    - ``t0``: the monotonic time ``time_s`` counts from (default: :meth:`start`), so the
      samples share a time base with a :class:`~chronoserve.perf.CsvMetricsLogger`.
    - ``psutil_module`` and ``clock`` are for tests.

    :meth:`stop` takes one last sample if at least :data:`MIN_INTERVAL_S` passed since the
    previous one (so a run shorter than the interval still has a reading), joins the thread and
    closes the CSV. It is idempotent.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None,
        interval_s: float = 1.0,
        per_core: bool = False,
        sensors: bool | Any = False,
        pid: int | None = None,
        *,
        t0: float | None = None,
        psutil_module: Any = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not interval_s >= MIN_INTERVAL_S:
            raise ValueError(f"interval_s must be at least {MIN_INTERVAL_S} s, got {interval_s}")
        if psutil_module is None:
            psutil_module = importlib.import_module("psutil")  # no type stubs: used as Any
        self._ps = psutil_module
        self.path = Path(path) if path is not None else None
        self.interval_s = float(interval_s)
        self.per_core = per_core
        self.pid = os.getpid() if pid is None else pid
        self._clock = clock
        self.t0 = t0
        if sensors is True:
            sensors = Sensors(psutil_module=psutil_module)
        self.sensors: Any = sensors or None
        self.cores = int(self._ps.cpu_count(logical=True) or 1) if per_core else 0
        self.fields: tuple[str, ...] = (
            BASE_FIELDS
            + tuple(f"cpu{i}_percent" for i in range(self.cores))
            + (SENSOR_FIELDS if self.sensors is not None else ())
        )
        self.samples: list[Sample] = []
        self._process: Any = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._handle: IO[str] | None = None
        self._last = 0.0
        self._primed = False
        self.error: BaseException | None = None
        """The exception that ended the sampler thread early, if any."""

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> SystemSampler:
        if self._thread is not None:
            raise RuntimeError("this sampler was already started")
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = self.path.open("w", encoding="utf-8", newline="")
            self._handle.write(",".join(self.fields) + "\n")
            self._handle.flush()
        primed = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(primed,), name="chronoserve-sampler", daemon=True)
        self._thread.start()
        primed.wait()  # the baseline is taken before the caller's work starts
        return self

    def stop(self) -> None:
        if self._thread is None or self._stop.is_set():
            return
        self._stop.set()
        self._thread.join()
        with self._lock:
            if self._handle is not None:
                self._handle.close()
                self._handle = None

    def close(self) -> None:
        """The same as :meth:`stop` (so a sampler closes like a logger)."""
        self.stop()

    def __enter__(self) -> SystemSampler:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- sampling ------------------------------------------------------------------------------

    def _run(self, primed: threading.Event) -> None:
        try:
            self.prime()
        finally:
            primed.set()
        try:
            while not self._stop.wait(max(0.0, self._last + self.interval_s - self._clock())):
                self.sample()
            if self._clock() - self._last >= MIN_INTERVAL_S:
                self.sample()
        except BaseException as exc:  # a sampler must never take the measured run down
            self.error = exc

    def prime(self) -> None:
        """Take (and drop) the first reading of every "since the last call" counter, on this thread."""
        now = self._clock()
        if self.t0 is None:
            self.t0 = now
        self._process = self._ps.Process(self.pid)
        self._ps.cpu_percent(interval=None)
        self._ps.cpu_times_percent(interval=None)
        if self.per_core:
            self._ps.cpu_percent(interval=None, percpu=True)
        self._process.cpu_percent(interval=None)
        self._last = now
        self._primed = True

    def sample(self) -> Sample:
        """Take one sample now, record it and return it. Call :meth:`prime` first (on the same thread)."""
        if not self._primed:
            raise RuntimeError("prime() first: the first reading of a CPU percentage is meaningless")
        now = self._clock()
        assert self.t0 is not None
        times = self._ps.cpu_times_percent(interval=None)
        memory = self._ps.virtual_memory()
        row: Sample = {
            "time_s": now - self.t0,
            "cpu_percent": float(self._ps.cpu_percent(interval=None)),
            "cpu_user_percent": _field(times, "user"),
            "cpu_system_percent": _field(times, "system"),
            "mem_used_bytes": int(memory.used),
            "mem_available_bytes": int(memory.available),
            "proc_cpu_percent": None,
            "proc_rss_bytes": None,
        }
        try:
            row["proc_cpu_percent"] = float(self._process.cpu_percent(interval=None))
            row["proc_rss_bytes"] = int(self._process.memory_info().rss)
        except Exception:  # the process ended (a pid that is not ours): unavailable, not 0
            pass
        if self.per_core:
            per_core = list(self._ps.cpu_percent(interval=None, percpu=True))
            for i in range(self.cores):
                row[f"cpu{i}_percent"] = float(per_core[i]) if i < len(per_core) else None
        if self.sensors is not None:
            readings = self.sensors.read()
            for name in SENSOR_FIELDS:
                row[name] = readings.get(name)
        self._last = now
        with self._lock:
            self.samples.append(row)
            if self._handle is not None:
                self._handle.write(",".join(str(csv_cell(row.get(f))) for f in self.fields) + "\n")
                self._handle.flush()
        return row

    # -- results -------------------------------------------------------------------------------

    @property
    def peak_rss_bytes(self) -> int | None:
        """The largest ``proc_rss_bytes`` sampled (Linux has no peak RSS counter); None without samples."""
        values = [int(v) for v in self.column("proc_rss_bytes") if v is not None]
        return max(values) if values else None

    def column(self, name: str) -> list[float | int | None]:
        """One field of every sample, in order."""
        if name not in self.fields:
            raise KeyError(f"{name!r} is not a sampler field; the fields are {list(self.fields)}")
        with self._lock:
            return [s.get(name) for s in self.samples]


def _field(values: Any, name: str) -> float | None:
    value = getattr(values, name, None)
    return float(value) if value is not None else None


def core_fields(cores: Sequence[int]) -> list[str]:
    """The per-core column names of ``cores``."""
    return [f"cpu{i}_percent" for i in cores]
