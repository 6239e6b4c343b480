"""Placement by readiness: send a request where its model will be ready soonest.

ServerlessLLM's scheduler, simplified for chronoserve: with several engines (engine processes,
Ray replicas, or engines in one process), each request goes to the engine that would start it
first, estimated from that engine's own cost model from

- the *queue wait* (:attr:`Readiness.backlog`): the predicted seconds of the work queued and
  running there, over its workers;
- the *load estimate by tier* (:meth:`Readiness.ready_in`): 0 for a resident model, what is
  left of its load for one loading, and the predicted load from where its weights are
  (``host`` or ``disk``: :mod:`chronoserve.tiers`) otherwise.

ServerlessLLM adds the two (a GPU server loads and then runs). A chronoserve engine loads on
its own threads while its workers run other models' batches, so a request starts at the later
of the two: ``max(queue wait, load estimate)`` (:meth:`Readiness.start_in`). Equal estimates go
to the engine where the model already is (resident or loading, then in the host tier), then to
the least busy. So a request follows its model to the engine that holds it unless that engine is
so busy that a load elsewhere starts it sooner, and a burst for a model nobody holds loads it
once and queues behind that load (its requests batch together) until the queue there outgrows
the load. Between two views of an engine a router counts what it sent there itself
(:class:`Router`).

Pure: views are values an engine makes (:meth:`chronoserve.engine.Engine.readiness`) and a
router reads; no I/O, no threads.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: How a :class:`Router` may place: by readiness, or (to compare against) ignoring where models are.
PLACEMENTS = ("readiness", "round-robin", "random")
#: Load estimates charged on top of a start where the model is not, while it is resident elsewhere
#: (:func:`rank`): the margin by which a queue must outlast a load before the model is copied.
SPILL = 3.0
#: Starts this close to the soonest are equal (relative, and seconds): load estimates learned on a
#: loaded machine were seen 30-60 % apart for the same load.
SAME = (0.5, 0.02)
#: Ties go to the engine where the model's weights are closest.
_TIER_RANK: Mapping[str, int] = {"resident": 0, "host": 1, "disk": 2, "hub": 3}


@dataclass(frozen=True, slots=True)
class Readiness:
    """What a router knows of one engine: a snapshot (it pickles, and crosses processes as a dict)."""

    backlog: float
    """Seconds until a worker is free for new work: predicted work queued and running, over the workers."""
    models: Mapping[str, float] = field(default_factory=dict)
    """Seconds until each model it knows of is ready to run (0: resident)."""
    tiers: Mapping[str, str] = field(default_factory=dict)
    """Where each model's weights are there (``resident``, ``host``, ``disk``, ``hub``)."""
    new_model: float = 0.0
    """Seconds it predicts to load a model it has never seen (from disk)."""
    per_request: float = 0.0
    """Seconds of worker time a request costs there, on average (what one more adds to ``backlog``)."""
    workers: int = 1

    def ready_in(self, model: str) -> float:
        """Seconds until ``model`` is ready to run there, the queue aside."""
        return self.models.get(model, self.new_model)

    def start_in(self, model: str) -> float:
        """Seconds until a request for ``model`` would start there: the later of the queue wait and
        the load estimate by tier (loads run beside the workers)."""
        return max(self.backlog, self.ready_in(model))

    def routed(self, model: str) -> Readiness:
        """This view once one more request for ``model`` was sent there: the model is on its way
        (resident, or loading there now) and one more request's work is queued."""
        models, tiers = dict(self.models), dict(self.tiers)
        if model:
            models[model] = self.ready_in(model)
            tiers[model] = "resident"
        return Readiness(
            backlog=self.backlog + self.per_request / self.workers,
            models=models,
            tiers=tiers,
            new_model=self.new_model,
            per_request=self.per_request,
            workers=self.workers,
        )

    def after(self, seconds: float) -> Readiness:
        """This view ``seconds`` later, nothing more sent there: the queued and running work has
        gone down by that much (a router's view between two reports ages so, rather than keep a
        batch that has since finished)."""
        if seconds <= 0.0 or self.backlog == 0.0:
            return self
        return dataclasses.replace(self, backlog=max(0.0, self.backlog - seconds))

    def to_dict(self) -> dict[str, object]:
        return {
            "backlog": self.backlog,
            "models": dict(self.models),
            "tiers": dict(self.tiers),
            "new_model": self.new_model,
            "per_request": self.per_request,
            "workers": self.workers,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Readiness:
        return cls(
            backlog=float(data.get("backlog", 0.0)),
            models={str(k): float(v) for k, v in dict(data.get("models", {})).items()},
            tiers={str(k): str(v) for k, v in dict(data.get("tiers", {})).items()},
            new_model=float(data.get("new_model", 0.0)),
            per_request=float(data.get("per_request", 0.0)),
            workers=max(1, int(data.get("workers", 1))),
        )


def place(model: str, views: Sequence[Readiness], first: int = 0, spill: float = SPILL) -> int:
    """The index of the engine where a request for ``model`` would start soonest (:func:`rank`'s first)."""
    return rank(model, views, first, spill)[0]


def rank(model: str, views: Sequence[Readiness], first: int = 0, spill: float = SPILL) -> list[int]:
    """The engines' indices, from where a request for ``model`` would start soonest to where latest.

    While ``model`` is resident (or loading) on some engine, an engine without it is charged
    ``spill`` times its load estimate on top of its start: the load there also pushes out
    another model, whose next request then pays a load in turn. So a request leaves its model's
    engine only once the queue there outlasts a load elsewhere by that margin (hysteresis), and
    models stay where they are instead of being copied back and forth under load.

    Where the soonest start needs a load, the starts of the other engines that need one within
    :data:`SAME` of it (50 %, or 20 ms) are taken as equal: they are load estimates, learned per
    engine, and differ by their estimators' noise. Among equal starts the request goes to the
    engine where the model is (resident or loading), then to the one holding the fewest models
    (a load there pushes out the least: two models taking turns on one engine, each evicting the
    other, while another engine idles, is what a tie broken by a hair of estimate or by the host
    tier alone gives), then to the one where its weights are closest (host, then disk), then to
    the one with the least backlog, then to the first at or after ``first`` (a router rotates
    it, so ties spread instead of piling on engine 0). The other engines follow by start.
    """
    if not views:
        raise ValueError("no engine to place a request on")
    n = len(views)
    held = any(view.tiers.get(model) == "resident" for view in views)

    def start(i: int) -> float:
        view = views[i]
        at = view.start_in(model)
        if held and view.tiers.get(model, "disk") != "resident":  # a second copy costs a load, and
            at += spill * view.ready_in(model)  # pushes another model out
        return at

    def ties(i: int) -> tuple[int, int, int, float, int]:
        view = views[i]
        tier = view.tiers.get(model, "disk")
        there = tier == "resident"
        crowd = 0 if there else sum(1 for t in view.tiers.values() if t == "resident")
        return int(not there), crowd, _TIER_RANK.get(tier, len(_TIER_RANK)), view.backlog, (i - first) % n

    starts = [start(i) for i in range(n)]
    order = sorted(range(n), key=lambda i: (starts[i], ties(i)))
    if views[order[0]].tiers.get(model) == "resident":
        return order  # where the model is, unless its queue outlasts the margin: exactly as estimated
    # The model must load wherever it goes: loads estimated within SAME of the soonest are equal.
    loading = [i for i in order if views[i].tiers.get(model) != "resident"]
    equal = [i for i in loading if starts[i] <= starts[order[0]] * (1.0 + SAME[0]) + SAME[1]]
    return sorted(equal, key=ties) + [i for i in order if i not in equal]


class Router:
    """Places requests on engines whose views it is given from time to time.

    Between views it keeps its own account of what it sent (the view of an engine it sent a
    request for ``m`` to says ``m`` is on its way there, and its backlog grows by one request),
    so placements stay right under a burst. A new view of an engine replaces that account.
    Given the time (``now``, seconds on any one clock), it also ages each view by the time since
    it was last brought up to date (:meth:`Readiness.after`): on a loaded machine views come late,
    and the work counted in a late one has since drained; and a view said to be asked for at some
    time gets back what was placed there since (:meth:`update`), which the engine had not seen.
    ``placement`` ``"round-robin"`` or ``"random"`` (seeded with ``seed``) ignore the views: they
    are there to compare against.
    """

    def __init__(self, engines: int, placement: str = "readiness", seed: int = 0) -> None:
        if engines < 1:
            raise ValueError(f"a router needs at least one engine, not {engines}")
        if placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {', '.join(PLACEMENTS)}, not {placement!r}")
        self.placement = placement
        self.views: list[Readiness] = [Readiness(backlog=0.0) for _ in range(engines)]
        self._at: list[float | None] = [None] * engines
        self._sent: list[list[tuple[float, str]]] = [[] for _ in range(engines)]
        self._next = 0
        self._random = random.Random(seed)
        self.placed = [0] * engines
        """Requests placed on each engine."""

    def update(self, engine: int, view: Readiness, now: float | None = None, asked: float | None = None) -> None:
        """The engine's latest view, received at ``now``: it replaces what was counted since the
        last one. With ``asked`` (when the view was asked for, on the clock of ``now`` and of
        :meth:`place`), what was placed there since is counted on it again: the engine had not
        seen those requests when it answered (a late view must not forget them)."""
        since = [(at, model) for at, model in self._sent[engine] if asked is not None and at >= asked]
        self._sent[engine] = since
        for _, model in since:
            view = view.routed(model)
        self.views[engine] = view
        self._at[engine] = now

    def place(self, model: str, among: Sequence[int] | None = None, now: float | None = None) -> int:
        """Choose the engine for a request for ``model`` (among the engines ``among``, default all),
        and count it there; with ``now``, each view first aged to it."""
        candidates = range(len(self.views)) if among is None else among
        if not candidates:
            raise ValueError("no engine to place a request on")
        if self.placement == "random":  # the placements that ignore models, to compare against
            i = candidates[self._random.randrange(len(candidates))]
        elif self.placement == "round-robin":
            i = candidates[self._next % len(candidates)]
        else:
            if now is not None:
                for j in candidates:
                    at = self._at[j]
                    if at is not None and now > at:
                        self.views[j], self._at[j] = self.views[j].after(now - at), now
            i = candidates[place(model, [self.views[j] for j in candidates], self._next % len(candidates))]
            self.views[i] = self.views[i].routed(model)
            if now is not None:
                self._sent[i].append((now, model))
        self._next = (self._next + 1) % len(self.views)
        self.placed[i] += 1
        return i


__all__ = ["PLACEMENTS", "SPILL", "Readiness", "Router", "place", "rank"]
