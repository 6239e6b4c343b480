"""What front ends may read of an engine: frozen snapshots, never its internals.

Every front end (the in-process API, HTTP, replay, eval, edge-bench, and later other
processes and Ray replicas) reads the engine through these types: :meth:`Engine.stats`
gives an :class:`EngineStats`, :meth:`Engine.resident` a :class:`ModelInfo` per model, and
:meth:`Engine.load_failures` a :class:`~chronoserve.pool.LoadFailure` per model whose last
load failed. They are values: holding one never holds the engine's state, and they pickle.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """A resident or loading model. Times are on the engine's clock (``Engine.clock``)."""

    name: str
    family: str
    random_weights: bool
    status: Literal["loading", "ready"]
    nbytes: int
    """Measured once ready; the estimate while loading."""
    load_seconds: float | None
    """How long its load took (None while it loads)."""
    loaded_at: float | None
    last_used: float
    running_batches: int
    backend: str | None = None
    """What runs it (``torch``, ``onnx``: after a fallback, the one that actually serves); None while it loads."""
    dtype: str | None = None
    """Its weights' dtype as served (``float32``, ``bfloat16``, ``int8``); None while it loads."""
    loaded_from: str | None = None
    """The tier its load came from (``host``, ``disk``, ``hub``: see :mod:`chronoserve.tiers`); None while it loads."""


@dataclass(frozen=True, slots=True)
class EngineStats:
    """Counters since the engine started, and its state now."""

    submitted: int
    completed: int
    failed: int
    cancelled: int
    rejected_queue_full: int
    batches: int
    batched_requests: int
    queued: int
    running_batches: int
    free_slots: int
    loads: int
    load_failures: int
    evictions: int
    resident: tuple[str, ...]
    """Models ready to serve, by name."""
    resident_bytes: int
    policy: Mapping[str, object]
    """The policy's ``describe()``."""
    workers: int
    prefetch: int
    torch_threads: int
    host_models: tuple[str, ...] = ()
    """Models whose weights the host tier holds (evicted, not resident), demoted longest ago first."""
    host_bytes: int = 0
    host_budget: int = 0
    """The host tier's byte budget (0: no host tier)."""
    import_seconds: float | None = None
    """How long the model loader's imports took when the engine started (None: not yet run)."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (for reports)."""
        out = asdict(self)
        out["resident"] = list(self.resident)
        out["host_models"] = list(self.host_models)
        out["policy"] = dict(self.policy)
        return out
