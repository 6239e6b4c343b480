"""The policy interface: what a scheduling policy sees and what it may decide.

A policy is pure decision logic. The engine calls :meth:`Policy.decide` with a frozen
:class:`SchedulerState` and the current time whenever something changes (a request
arrives, a batch or a load finishes, a timer the policy asked for fires) and carries out
the returned decisions in order. A policy does no I/O, starts no threads, never awaits
and never imports torch, so it is unit-tested by building states by hand.

Decisions:

- :class:`Load` a model (it becomes resident once loaded; the engine never loads one model
  twice at once),
- :class:`Evict` a resident model (the engine refuses to evict one that is loading or
  running a batch),
- :class:`Dispatch` some queued requests of one model as a batch on a free worker
  (``ephemeral=True``: load a private copy for this batch and drop it after, as the
  ``naive`` policy does),
- :class:`Fail` requests with a reason (for example a model that can never fit),
- :class:`Shed` requests whose deadline cannot be met (they fail at once with
  :class:`~chronoserve.errors.DeadlineUnmeetable`; the engine itself fails a queued request
  whose deadline passed, with :class:`~chronoserve.errors.DeadlineExpired`, before asking),
- :class:`WakeAt` a time: call ``decide`` again then, even if nothing else happens.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal, Protocol, overload


@dataclass(frozen=True, slots=True)
class QueuedRequest:
    """A request waiting in its model's queue, as a policy sees it."""

    seq: int
    """Engine-wide sequence number; decisions name requests by it."""
    model: str
    arrival: float
    """When the request was accepted, on the engine's clock."""
    horizon: int
    context_length: int
    """Points of history the model will read (after truncation)."""
    key: Hashable
    """Batch key: requests may share a batch only when their keys are equal."""
    deadline: float | None = None
    """When its answer is wanted, on the engine's clock: arrival + ``ForecastRequest.deadline`` (a budget)."""
    gflop: float = 0.0
    """Its estimated work (:func:`chronoserve.limits.estimate_gflop`): what a batch of it costs."""
    rows: int = 1
    """Its series rows: the target and, for Chronos-2, each covariate."""
    priority: int | None = None
    """Its class: 1 is the highest (as in Triton); None is the default class, below every numbered one."""
    tokens_in: int = 0
    """Tokens one of its rows makes the model read (:func:`chronoserve.costs.tokens`)."""
    tokens_out: int = 0
    """Tokens one of its rows makes the model produce."""
    steps: int = 1
    """Sequential passes it needs (Chronos-T5: one per horizon step)."""


@dataclass(frozen=True, slots=True)
class ModelState:
    """A model that is resident or being loaded."""

    name: str
    status: Literal["loading", "ready"]
    nbytes: int
    """Measured size once ready; the estimate while loading."""
    last_used: float
    """When a batch on it last finished (or when it finished loading)."""
    running: int
    """Batches running on it now."""
    load_seconds: float | None = None
    """How long its last load took, measured (None while it loads for the first time)."""

    @property
    def busy(self) -> bool:
        return self.status == "loading" or self.running > 0


@dataclass(frozen=True, slots=True)
class RunningBatch:
    model: str
    size: int
    started: float
    """When it was dispatched."""
    ephemeral: bool = False
    predicted: float | None = field(default=None, compare=False)
    """Seconds the cost model predicted it takes on a worker (None in hand-built states)."""
    running_since: float | None = field(default=None, compare=False)
    """When a worker began it; None while it waits for one (the engine's prefetch slot)."""

    @property
    def expected_end(self) -> float | None:
        """When it should finish, if it is on a worker and has a prediction."""
        if self.running_since is None or self.predicted is None:
            return None
        return self.running_since + self.predicted


class QueueView(Sequence[QueuedRequest]):
    """A read-only view of one of the engine's queues, handed to ``decide`` without a copy.

    Indexing, slicing (a copy of the slice only), ``len`` and iteration; it reflects the
    queue as it is while ``decide`` runs (the engine changes no queue meanwhile), so a policy
    must not keep it past the call (copy what it needs: ``tuple(view[:n])``).
    """

    __slots__ = ("_items",)

    def __init__(self, items: list[QueuedRequest]) -> None:
        self._items = items

    @overload
    def __getitem__(self, index: int) -> QueuedRequest: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[QueuedRequest]: ...

    def __getitem__(self, index: int | slice) -> QueuedRequest | Sequence[QueuedRequest]:
        if isinstance(index, slice):
            return tuple(self._items[index])
        return self._items[index]

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[QueuedRequest]:
        return iter(self._items)

    def __repr__(self) -> str:
        return f"QueueView({len(self._items)} requests)"


@dataclass(frozen=True, slots=True)
class SchedulerState:
    """A snapshot of the engine, taken just before ``decide`` is called."""

    queues: Mapping[str, Sequence[QueuedRequest]]
    """Per model, waiting requests in arrival order. Models with an empty queue are absent.
    From the engine these are :class:`QueueView`s: valid during ``decide`` only."""
    models: Mapping[str, ModelState]
    """Resident and loading models."""
    running: Sequence[RunningBatch]
    free_slots: int
    """Batch slots free now: at most this many batches can be dispatched. The engine has
    ``workers + prefetch`` slots (a batch in a slot is running or next in a worker's queue),
    so a worker's next batch is ready when it finishes one."""
    model_sizes: Mapping[str, int]
    """Estimated bytes of every model named in ``queues`` or ``models``."""
    draining: bool = False
    """The engine is closing: run what is queued now rather than wait for fuller batches."""
    costs: CostEstimates | None = None
    """The cost model's predictions (None in states built without one)."""
    workers: int = 0
    """Batches that run at once (the engine's workers); 0: not known (hand-built states)."""
    tiers: Mapping[str, str] = field(default_factory=dict)
    """Where the weights of every model in ``model_sizes`` are: ``resident`` (in ``models``),
    ``host``, ``disk`` or ``hub`` (see :mod:`chronoserve.tiers`); absent: not known (``disk``)."""
    host_budget: int = 0
    """The engine's host tier, in bytes: an evicted model up to this size is demoted there, not dropped."""

    @property
    def free_workers(self) -> int:
        """The old name of :attr:`free_slots` (slots are not workers: there are ``workers + prefetch``)."""
        return self.free_slots


@dataclass(frozen=True, slots=True)
class Load:
    model: str


@dataclass(frozen=True, slots=True)
class Evict:
    model: str


@dataclass(frozen=True, slots=True)
class Dispatch:
    model: str
    requests: tuple[int, ...]
    """Sequence numbers, all queued for ``model`` and sharing one batch key."""
    ephemeral: bool = False


@dataclass(frozen=True, slots=True)
class Fail:
    requests: tuple[int, ...]
    reason: str


@dataclass(frozen=True, slots=True)
class Shed:
    """Refuse queued requests whose deadline cannot be met."""

    requests: tuple[int, ...]
    predicted: float | None = None
    """When their answers were predicted to come (engine clock), if known: the client is told."""


@dataclass(frozen=True, slots=True)
class WakeAt:
    time: float


Decision = Load | Evict | Dispatch | Fail | Shed | WakeAt
#: The decision types, for ``isinstance`` checks.
DECISIONS: tuple[type, ...] = (Load, Evict, Dispatch, Fail, Shed, WakeAt)


class CostEstimates(Protocol):
    """What the engine's cost model predicts, as a policy may ask it (``SchedulerState.costs``).

    Backed by :class:`chronoserve.costs.CostModel`, learned from every batch and load; valid
    during ``decide`` only, like the queues.
    """

    def batch_seconds(self, model: str, requests: Sequence[QueuedRequest]) -> float:
        """How long a batch of ``requests`` on ``model`` would take if dispatched now."""
        ...

    def load_seconds(self, model: str, nbytes: int, tier: str | None = None) -> float:
        """How long loading ``model`` (``nbytes``) from ``tier`` would take (``host``, ``disk``,
        ``hub``; None: from where its weights are now)."""
        ...


class SchedulingPolicy(Protocol):
    """What the engine needs of a policy; :func:`chronoserve.plugins.validate_policy` checks all of it
    when a policy is loaded, so a plugin that lacks a part fails at start-up, naming the part."""

    name: str

    def decide(self, state: SchedulerState, now: float) -> Sequence[Decision]: ...

    def describe(self) -> Mapping[str, object]: ...


class Policy:
    """Base class of scheduling policies: implements :class:`SchedulingPolicy` but ``decide``.

    Subclassing it is optional (the validator checks the shape). Set :attr:`name` and implement
    :meth:`decide`. Options are constructor keyword arguments; the engine passes
    ``policy_options`` to the constructor.
    """

    name: ClassVar[str] = "policy"

    def decide(self, state: SchedulerState, now: float) -> Sequence[Decision]:
        """Return the decisions to carry out now, in order."""
        raise NotImplementedError

    def describe(self) -> dict[str, object]:
        """The policy's settings, for reports. Override to list your options."""
        return {"name": self.name}
