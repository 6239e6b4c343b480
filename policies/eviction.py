"""Which resident model to evict: least recently used (``lru``), or least expected loss (``gdsf``).

The residency rules (:mod:`chronoserve.policies.lru`) decide *whether* a model must go and
*which ones may* (idle ones; those nobody waits for first). An eviction order picks among them:

- ``lru``: the one whose last batch finished longest ago.
- ``gdsf``: Greedy-Dual-Size-Frequency (Cherkasova, HP Labs 1998; the web caches' policy that
  ServerlessLLM-style tiered stores borrow): each model has a priority
  ``H = L + frequency x reload cost / size`` and the lowest goes. ``frequency`` counts the
  requests it received; ``reload cost`` is the cost model's predicted load time from the tier
  an eviction would leave it in (``host`` when it fits the engine's host tier, else ``disk``),
  so a model that reloads cheaply, is large, or is rarely asked for goes first. ``L`` (the
  inflation) becomes the evicted model's ``H``: priorities set long ago fall behind new ones, so
  a model once popular ages out without any timer. Without a cost model (hand-built states)
  every reload costs 1: GDSF by frequency and size.

Pure: state lives in the order (counts, priorities) and changes only in :meth:`observe` and
:meth:`evicted`, both called from ``decide``.
"""

from __future__ import annotations

from collections.abc import Sequence

from chronoserve.policy import ModelState, SchedulerState

EVICTIONS = ("lru", "gdsf")
#: Sizes in megabytes (so priorities read as seconds per megabyte); never below one kilobyte.
_MB = 1e6
_MIN_SIZE = 1e-3
#: A reload never costs less than a millisecond (a cost model that has only seen instant loads
#: would otherwise make every priority equal, and GDSF would forget frequency and size).
_MIN_COST = 1e-3


class EvictionOrder:
    """The base: least recently used. Subclasses override :meth:`victim` (and may :meth:`observe`)."""

    name = "lru"

    def observe(self, state: SchedulerState) -> None:
        """Called once per ``decide``, before any :meth:`victim`: learn what arrived."""

    def victim(self, candidates: Sequence[ModelState], state: SchedulerState) -> str:
        """The model to evict among ``candidates`` (never empty)."""
        return min(candidates, key=lambda m: m.last_used).name

    def evicted(self, model: str) -> None:
        """``model`` is being evicted."""

    def describe(self) -> dict[str, object]:
        return {}


class GDSF(EvictionOrder):
    """Greedy-Dual-Size-Frequency with reload costs from the cost model, by tier (see the module)."""

    name = "gdsf"

    def __init__(self) -> None:
        self.inflation = 0.0
        """``L``: the priority of the last model evicted."""
        self.frequency: dict[str, int] = {}
        """Requests each model received (counted as they arrive in its queue)."""
        self.priority: dict[str, float] = {}
        """``H`` of each model, set when it was last asked for."""
        self._last_seq: dict[str, int] = {}

    def observe(self, state: SchedulerState) -> None:
        for model, queue in state.queues.items():
            last = self._last_seq.get(model, -1)
            new = 0
            for i in range(len(queue) - 1, -1, -1):  # newest first: only what arrived since the last look
                if queue[i].seq <= last:
                    break
                new += 1
            if new:
                self._last_seq[model] = queue[len(queue) - 1].seq
                self.frequency[model] = self.frequency.get(model, 0) + new
                self.priority[model] = self.inflation + self.frequency[model] * self.value(model, state)

    def value(self, model: str, state: SchedulerState) -> float:
        """Reload cost per megabyte: what keeping ``model`` saves per byte it holds."""
        size = state.model_sizes.get(model, 0)
        if state.costs is None:
            cost = 1.0
        else:
            tier = "host" if 0 < size <= state.host_budget else "disk"
            cost = max(_MIN_COST, state.costs.load_seconds(model, size, tier))
        return cost / max(size / _MB, _MIN_SIZE)

    def victim(self, candidates: Sequence[ModelState], state: SchedulerState) -> str:
        def key(m: ModelState) -> tuple[float, float]:
            return self.priority.get(m.name, self.inflation), m.last_used

        return min(candidates, key=key).name

    def evicted(self, model: str) -> None:
        self.inflation = max(self.inflation, self.priority.get(model, self.inflation))

    def describe(self) -> dict[str, object]:
        return {"inflation": self.inflation}


def eviction_order(name: str) -> EvictionOrder:
    """The eviction order called ``name`` (``lru`` or ``gdsf``)."""
    if name == "lru":
        return EvictionOrder()
    if name == "gdsf":
        return GDSF()
    raise ValueError(f"eviction must be one of {', '.join(EVICTIONS)}, got {name!r}")


__all__ = ["EVICTIONS", "GDSF", "EvictionOrder", "eviction_order"]
