"""The model pool: which models are resident or loading, their sizes, use and load history."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .models.base import ModelBackend, ModelSpec
from .policy import ModelState
from .residency import Loaded


@dataclass
class PoolEntry:
    spec: ModelSpec
    status: Literal["loading", "ready"]
    load_started: float
    backend: ModelBackend | None = None
    nbytes: int = 0
    last_used: float = 0.0
    running: int = 0
    load_finished: float | None = None
    previous_load: float | None = None
    """How long the model's previous load took (it was evicted since), while it loads again."""
    load_ran: float | None = None
    """When the load itself began on a load thread (after any wait behind imports or other loads)."""
    tier: str | None = None
    """The tier it was loaded from (``host``, ``disk``, ``hub``); None while it loads."""

    @property
    def load_seconds(self) -> float | None:
        """How long the load itself ran (not the wait before it)."""
        if self.load_finished is None:
            return None
        return self.load_finished - (self.load_ran if self.load_ran is not None else self.load_started)

    def state(self) -> ModelState:
        measured = self.load_seconds if self.load_seconds is not None else self.previous_load
        return ModelState(self.spec.name, self.status, self.nbytes, self.last_used, self.running, measured)


@dataclass(frozen=True)
class LoadFailure:
    """A model whose last load failed: the engine refuses its requests until ``retry_at``.

    ``failures`` counts consecutive failures; the wait doubles with each (capped), and a
    successful load forgets them.
    """

    model: str
    error: str
    failures: int
    failed_at: float
    retry_at: float
    permanent: bool = False
    """No retry can help until the operator changes something (:attr:`ModelLoadError.permanent`)."""


@dataclass(frozen=True)
class LoadRecord:
    """A finished load, kept to tell requests that waited for it how long they waited."""

    model: str
    started: float
    """When the load itself began (requests that waited for it waited on it from then, or from their
    arrival; a wait before, for the engine's one-time imports, is not the load's)."""
    finished: float
    seconds: float = 0.0
    """How long the load itself ran."""


class ModelPool:
    """Bookkeeping only: the engine decides when to load and evict (as its policy says)."""

    def __init__(self) -> None:
        self.entries: dict[str, PoolEntry] = {}
        self.last_load: dict[str, LoadRecord] = {}
        self.failed: dict[str, LoadFailure] = {}
        self.loads = 0
        self.evictions = 0
        self.load_failures = 0

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def get(self, name: str) -> PoolEntry | None:
        return self.entries.get(name)

    def begin_load(self, spec: ModelSpec, now: float) -> PoolEntry:
        last = self.last_load.get(spec.name)
        entry = PoolEntry(spec=spec, status="loading", load_started=now, nbytes=spec.est_nbytes)
        entry.previous_load = None if last is None else last.seconds
        self.entries[spec.name] = entry
        return entry

    def finish_load(self, name: str, loaded: Loaded | ModelBackend, now: float) -> PoolEntry:
        """``name`` is resident: ``loaded`` (or, in hand-built pools, just a backend loaded by ``now``)."""
        entry = self.entries[name]
        if not isinstance(loaded, Loaded):
            loaded = Loaded(loaded, "disk", entry.load_started, now)
        entry.status = "ready"
        entry.backend = loaded.backend
        entry.nbytes = loaded.backend.nbytes
        entry.load_ran = loaded.started
        entry.tier = loaded.tier
        entry.load_finished = now
        entry.last_used = now
        self.loads += 1
        self.last_load[name] = LoadRecord(name, loaded.started, now, loaded.seconds)
        self.failed.pop(name, None)
        return entry

    def fail_load(
        self, name: str, error: str, now: float, backoff: float, cap: float, permanent: bool = False
    ) -> LoadFailure:
        """Record a failed load; the next try waits ``backoff * 2**(failures - 1)``, at most ``cap``."""
        self.entries.pop(name, None)
        self.load_failures += 1
        previous = self.failed.get(name)
        failures = 1 if previous is None else previous.failures + 1
        wait = min(cap, backoff * 2.0 ** min(failures - 1, 30))
        failure = LoadFailure(name, error, failures, now, now + wait, permanent)
        self.failed[name] = failure
        return failure

    def remove(self, name: str) -> PoolEntry:
        self.evictions += 1
        return self.entries.pop(name)

    def states(self) -> dict[str, ModelState]:
        return {name: entry.state() for name, entry in self.entries.items()}

    def resident_bytes(self) -> int:
        return sum(e.nbytes for e in self.entries.values() if e.status == "ready")
