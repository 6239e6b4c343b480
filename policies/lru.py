"""``lru``: keep at most K models resident (and at most a byte budget); run each request alone.

Residency rules, shared with ``batched``:

- Models are served in the order of their oldest waiting request, so no model starves.
- A model that is not resident is loaded when it fits under ``max_resident`` and
  ``memory_budget``. To make room, idle resident models are evicted: first those nobody is
  waiting for, then those whose oldest waiting request is younger than the one that needs
  the room; among them, by ``eviction``: least recently used first (``lru``), or least
  expected loss first (``gdsf``: requests received x reload time by tier / bytes, see
  :mod:`chronoserve.policies.eviction`). A model that is loading or running a batch is
  never evicted.
- A model larger than the whole budget can never be loaded: its requests fail at once.
"""

from __future__ import annotations

from collections.abc import Sequence

from chronoserve._units import format_bytes, parse_bytes
from chronoserve.policy import (
    Decision,
    Dispatch,
    Evict,
    Fail,
    Load,
    ModelState,
    Policy,
    QueuedRequest,
    SchedulerState,
    WakeAt,
)

from .eviction import eviction_order


class LRUPolicy(Policy):
    name = "lru"

    def __init__(self, max_resident: int = 3, memory_budget: int | str | None = None, eviction: str = "lru") -> None:
        if isinstance(max_resident, bool) or not isinstance(max_resident, int) or max_resident < 1:
            raise ValueError(f"max_resident must be an integer >= 1, got {max_resident!r}")
        self.max_resident = max_resident
        self.memory_budget = None if memory_budget is None else parse_bytes(memory_budget)
        self.eviction = eviction_order(eviction)

    def describe(self) -> dict[str, object]:
        out: dict[str, object] = {
            "name": self.name,
            "max_resident": self.max_resident,
            "memory_budget": self.memory_budget,
            "eviction": self.eviction.name,
        }
        out.update(self.eviction.describe())
        return out

    # -- batch forming: overridden by ``batched`` -------------------------------------------

    def select_batches(
        self, queue: Sequence[QueuedRequest], now: float, slots: int, draining: bool
    ) -> tuple[list[tuple[int, ...]], float | None]:
        """Pick at most ``slots`` batches from one model's queue; return them and when to look again."""
        return [(r.seq,) for r in queue[:slots]], None

    def serve_order(
        self, state: SchedulerState, now: float, decisions: list[Decision]
    ) -> dict[str, Sequence[QueuedRequest]]:
        """The queues to serve, in the order to serve them (``decisions`` may gain refusals first).

        Here: every queue, the model whose oldest request has waited longest first.
        """
        order = sorted(state.queues, key=lambda m: state.queues[m][0].arrival)
        return {model: state.queues[model] for model in order}

    def model_batches(
        self, model: str, queue: Sequence[QueuedRequest], now: float, slots: int, state: SchedulerState
    ) -> tuple[list[tuple[int, ...]], float | None]:
        """The batches to dispatch from a ready model's queue (:meth:`select_batches` by default)."""
        return self.select_batches(queue, now, slots, state.draining)

    # -- the decision ------------------------------------------------------------------------

    def decide(self, state: SchedulerState, now: float) -> Sequence[Decision]:
        self.eviction.observe(state)
        decisions: list[Decision] = []
        models: dict[str, ModelState] = dict(state.models)
        in_use: set[str] = set()  # dispatched to in this round: not evictable
        free = state.free_slots
        wake: float | None = None
        for model, queue in self.serve_order(state, now, decisions).items():
            resident = models.get(model)
            if resident is None:  # (the first request in serve order stands for the queue)
                decisions.extend(self._make_room_and_load(model, state, models, in_use, queue[0].arrival))
                continue
            if resident.status != "ready" or free <= 0:
                continue
            batches, when = self.model_batches(model, queue, now, free, state)
            for seqs in batches:
                decisions.append(Dispatch(model, seqs))
            free -= len(batches)
            if batches:
                in_use.add(model)
            if when is not None:
                wake = when if wake is None else min(wake, when)
        if wake is not None:
            decisions.append(WakeAt(wake))
        return decisions

    def _make_room_and_load(
        self,
        model: str,
        state: SchedulerState,
        models: dict[str, ModelState],
        in_use: set[str],
        oldest: float,
    ) -> list[Decision]:
        need = state.model_sizes.get(model, 0)
        budget = self.memory_budget
        if budget is not None and need > budget:
            seqs = tuple(r.seq for r in state.queues[model])
            return [
                Fail(
                    seqs,
                    f"model {model!r} needs about {format_bytes(need)}, "
                    f"more than the memory budget of {format_bytes(budget)}",
                )
            ]

        def fits() -> bool:
            if len(models) + 1 > self.max_resident:
                return False
            return budget is None or sum(m.nbytes for m in models.values()) + need <= budget

        decisions: list[Decision] = []
        evicted: dict[str, ModelState] = {}
        while not fits():
            victim = self._victim(models, state, in_use, oldest)
            if victim is None:
                # Not enough room yet: a running batch or a load will finish and wake us.
                models.update(evicted)
                return []
            evicted[victim] = models.pop(victim)
            decisions.append(Evict(victim))
        for victim in evicted:
            self.eviction.evicted(victim)
        models[model] = ModelState(model, "loading", need, 0.0, 0)
        decisions.append(Load(model))
        return decisions

    def _victim(
        self, models: dict[str, ModelState], state: SchedulerState, in_use: set[str], oldest: float
    ) -> str | None:
        idle = [m for m in models.values() if not m.busy and m.name not in in_use]
        unwanted = [m for m in idle if m.name not in state.queues]
        if unwanted:
            return self.eviction.victim(unwanted, state)
        # Models with waiting requests younger than ours may give way (FIFO across models).
        younger = [m for m in idle if state.queues[m.name][0].arrival > oldest]
        if younger:
            return self.eviction.victim(younger, state)
        return None
