"""The host tier: evicted models' weights kept in host memory, within a byte budget.

Residency has tiers, fastest to reload first (:data:`~chronoserve.models.base.TIERS`):

- ``resident``: built and ready to run (the model pool, bounded by the policy's
  ``max_resident`` and ``memory_budget``);
- ``host``: the weights of an evicted model, kept by the engine here (bounded by the
  engine's ``host_budget``, ``--host-cache-budget``): a load from them skips the disk and
  the work done at the first load (for Chronos: reading and checking the checkpoint, for
  ONNX hashing the weights and the parity probe);
- ``disk``: a local checkpoint (the page cache is the operating system's business);
- ``hub``: a download first.

An eviction demotes a model to ``host`` (what the loader's
:meth:`~chronoserve.models.base.ModelLoader.offload` keeps of it); the host tier, when full,
drops the copies demoted longest ago first (down to ``disk``). Bookkeeping only: the engine
calls the loader and moves the copies.
"""

from __future__ import annotations

from collections import OrderedDict

from .models.base import HostCopy


class HostTier:
    """Copies of evicted models' weights, at most ``budget`` bytes of them (None or 0: no host tier)."""

    def __init__(self, budget: int | None = None) -> None:
        if budget is not None and budget < 0:
            raise ValueError(f"the host tier's budget must be >= 0 bytes, not {budget}")
        self.budget = budget or 0
        self._copies: OrderedDict[str, HostCopy] = OrderedDict()
        self.nbytes = 0
        """Bytes held now."""

    @property
    def enabled(self) -> bool:
        return self.budget > 0

    def __contains__(self, model: object) -> bool:
        return model in self._copies

    def __len__(self) -> int:
        return len(self._copies)

    def models(self) -> tuple[str, ...]:
        """The models held, demoted longest ago first."""
        return tuple(self._copies)

    def put(self, copy: HostCopy) -> list[str]:
        """Keep ``copy`` (replacing an older copy of its model); returns the models dropped to make
        room, oldest first (``copy``'s own model if it is larger than the whole budget)."""
        if copy.model in self._copies:
            self.nbytes -= self._copies.pop(copy.model).nbytes
        if copy.nbytes > self.budget:
            return [copy.model]
        dropped = []
        while self.nbytes + copy.nbytes > self.budget:
            model, old = self._copies.popitem(last=False)
            self.nbytes -= old.nbytes
            dropped.append(model)
        self._copies[copy.model] = copy
        self.nbytes += copy.nbytes
        return dropped

    def take(self, model: str) -> HostCopy | None:
        """Remove and return ``model``'s copy (it is being promoted), or None."""
        copy = self._copies.pop(model, None)
        if copy is not None:
            self.nbytes -= copy.nbytes
        return copy

    def clear(self) -> None:
        self._copies.clear()
        self.nbytes = 0


__all__ = ["HostTier"]
