"""An online model of what work costs: a batch's latency and a model load's time, learned as they finish.

The first piece of "the scheduler knows what work costs" (OASIS; Zhao & Georgantas, MAIoT '25,
see ../shared/docs/scheduling-notes.md §1): a linear model over a batch's features, learned by
recursive least squares with a forgetting factor (the paper's best online learner: MSE 0.347 on
models never seen in training, against 0.431 for SGD and 0.548 offline), with the co-located
load tracked over each batch's lifetime (:class:`Colocation`), as their dynamic variant does.

Features of a batch (:class:`BatchFeatures`, built by :func:`batch_features`): its work in
GFLOP as the model really runs it (``2 x parameters x rows x tokens``, with the batch padded to
its longest context, see :func:`tokens`), its rows, its sequential steps (Chronos-T5 decodes
one step per horizon step; the patch models run one pass), and the co-located load: how many
forward passes per second (in hundreds) the batches beside it ran, averaged over its run.

Why passes per second and not a count of neighbours: measured here (bench/costs.py), the same
batch ran 1.01-1.21x slower beside random Chronos-2 (long GEMMs that release the GIL) and
1.13-1.54x slower beside Chronos-T5-tiny (many short decoding steps, Python between them): on
a CPU, two workers interfere mostly through the interpreter lock, and a neighbour that
launches many short passes holds it most. Identical batches spread by 9 % alone and 21 %
beside "one neighbour" (p90); see docs/costs.md.

Latency = theta . [1, gflop, gflop x load, rows, steps, rows x steps, load, gflop^2 / 100].
Each model has its own estimator; a model never seen starts from a shared estimator fitted on
every model's batches, so its first predictions come from its size alone and improve with its
own batches.

Everything here is pure: no I/O, no threads, no clock of its own (times are arguments), so
the engine feeds it and policies may read it, and the tests drive it with made-up numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from .models.base import ModelSpec

Vector = npt.NDArray[np.float64]

#: Input patch length of the patch models (Chronos-Bolt, Chronos-2).
PATCH = 16
#: The tier a load is assumed to come from when none is named (see :mod:`chronoserve.tiers`).
DEFAULT_TIER = "disk"


def tokens(spec: ModelSpec, context: int, horizon: int) -> tuple[int, int, int]:
    """What one row of a request costs ``spec``'s model: (tokens read, tokens produced, sequential steps).

    - Chronos-Bolt: the context's patches and a register token in; one decoder step gives
      every horizon up to its prediction length, whatever the horizon asked.
    - Chronos-2: the context's patches and a register token, and one token per output patch.
    - Chronos-T5: one token per context point (and EOS) in; each horizon step decodes one token
      per sample, one step after the other.
    """
    if spec.family == "chronos-t5":
        samples = spec.extra.get("num_samples", 20)
        per_step = samples if isinstance(samples, int) and samples > 0 else 20
        return context + 1, horizon * per_step, horizon
    tokens_in = math.ceil(context / PATCH) + 1
    if spec.family == "chronos-bolt":
        return tokens_in, 1, 1
    return tokens_in, math.ceil(horizon / (spec.batch_patch or PATCH)), 1


@dataclass(frozen=True, slots=True)
class BatchFeatures:
    """What a batch's latency is predicted from."""

    model: str
    gflop: float
    """Its work as the model runs it: ``2 x parameters x rows x (longest tokens in + out)`` / 1e9."""
    rows: int
    """Series rows: targets plus Chronos-2's covariate rows."""
    colocated: float = 0.0
    """The co-located load: forward passes per second (in hundreds) of the batches beside it,
    averaged over its run (predicted at dispatch, measured when it ends: see :class:`Colocation`)."""
    steps: int = 1
    """Sequential passes: the longest horizon for Chronos-T5, 1 for the patch models."""

    def vector(self) -> Vector:
        g, c, n, s = self.gflop, self.colocated, float(self.rows), float(self.steps)
        return np.array([1.0, g, g * c, n, s, n * s, c, g * g / 100.0])

    def passes_per_second(self, seconds: float) -> float:
        """This batch's own load on its neighbours, had it run ``seconds``: passes per second / 100."""
        return self.steps / max(seconds, 1e-3) / 100.0


def batch_features(model: str, requests: Sequence[Any], params: int, colocated: float) -> BatchFeatures:
    """The features of a batch of ``requests`` (each with ``rows``, ``tokens_in``, ``tokens_out``
    and ``steps``, as :class:`~chronoserve.policy.QueuedRequest` has) on a model of ``params``
    parameters: the backends pad every row to the batch's longest context and horizon."""
    rows = sum(r.rows for r in requests)
    longest_in = max((r.tokens_in for r in requests), default=0)
    longest_out = max((r.tokens_out for r in requests), default=0)
    steps = max((r.steps for r in requests), default=1)
    gflop = 2.0 * params * rows * (longest_in + longest_out) / 1e9
    return BatchFeatures(model, gflop, rows, colocated, steps)


@dataclass(frozen=True, slots=True)
class BatchCost:
    """What one finished batch cost, against what was predicted when it was dispatched
    (the engine's ``batch_cost`` event)."""

    features: BatchFeatures
    """What the model learned from: the co-located load is the one the batch really met."""
    size: int
    """Its requests."""
    expected_colocated: float
    """The co-located load predicted at dispatch (what the prediction used)."""
    predicted_seconds: float
    seconds: float
    """Its inference time, measured."""

    @property
    def relative_error(self) -> float | None:
        """``(predicted - actual) / actual``; None for a batch that took no time."""
        return (self.predicted_seconds - self.seconds) / self.seconds if self.seconds > 0 else None


class RecursiveLeastSquares:
    """``y ~ theta . x``, updated one observation at a time; ``forgetting`` < 1 weighs recent ones more.

    The standard exponentially weighted RLS: with ``P`` the inverse of the weighted Gram
    matrix, each update costs O(d^2) (d = 4 here: a few microseconds).
    """

    def __init__(self, size: int, forgetting: float = 0.98, prior: float = 1e3, theta: Vector | None = None) -> None:
        if not 0.0 < forgetting <= 1.0:
            raise ValueError(f"forgetting must lie in (0, 1], got {forgetting}")
        self.forgetting = forgetting
        self.theta = np.zeros(size) if theta is None else np.array(theta, dtype=np.float64)
        self.prior = prior
        self.limit = prior * size  # the largest trace P may have (the prior's)
        self.P = np.eye(size) * prior
        self.count = 0

    def predict(self, x: Vector) -> float:
        return float(self.theta @ x)

    def update(self, x: Vector, y: float) -> float:
        """Learn from one observation; returns the error of the prediction made before it."""
        error = y - float(self.theta @ x)
        px = self.P @ x
        gain = px / (self.forgetting + float(x @ px))
        self.theta = self.theta + gain * error
        self.P = (self.P - np.outer(gain, px)) / self.forgetting
        self.P = (self.P + self.P.T) / 2.0  # keep it symmetric against rounding
        # Forgetting divides P by the factor at every update, also along directions the inputs
        # never move in (a feature that stays 0): there it grows without bound ("covariance
        # windup") until it overflows, after some 35,000 updates at 0.98. Bounding its trace by
        # the prior's keeps every direction at most as uncertain as at the start.
        trace = float(np.trace(self.P))
        if not np.isfinite(trace) or trace > self.limit:
            self.P = np.eye(len(self.theta)) * self.prior if not np.isfinite(trace) else self.P * (self.limit / trace)
        self.count += 1
        return error

    def copy(self) -> RecursiveLeastSquares:
        other = RecursiveLeastSquares(len(self.theta), self.forgetting, self.prior)
        other.theta, other.P, other.count = self.theta.copy(), self.P.copy(), self.count
        return other


@dataclass
class Colocation:
    """The load of the batches that ran beside each batch, averaged over its run, and a prediction of it.

    A batch's run is the interval a worker spent on it (from the model's start to its end, not
    the time it waited for a worker), and its load on the others is its forward passes per
    second (:meth:`BatchFeatures.passes_per_second`; predicted while it runs, measured once it
    ended). When a batch finishes, :meth:`finished` adds what it put on each batch still running
    to that batch's account, and settles its own: what finished neighbours put on it, plus what
    the ones still running did since they started. So each call costs O(batches running), however
    many short batches ran beside a long one. The mean feeds an EWMA (``alpha``), the paper's
    dynamic variant (α in {1/3, 1/2, 2/3}); :meth:`predict` blends it with the load a batch
    starting now would meet.
    """

    alpha: float = 0.5
    ewma: float = 0.0
    _met: dict[Hashable, float] = field(default_factory=dict)
    """Per running batch: load x seconds that finished neighbours put on it so far."""

    def finished(
        self, batch: Hashable, start: float, end: float, load: float, running: Mapping[Any, tuple[float, float]]
    ) -> float:
        """The mean co-located load met by ``batch``, which ran over ``[start, end]`` with ``load`` of its own.

        ``running``: (start, load) of each batch still running (those that have started).
        """
        duration = end - start
        met = self._met.pop(batch, 0.0)
        met += sum(w * max(0.0, end - max(s, start)) for s, w in running.values())
        for other, (s, _) in running.items():
            self._met[other] = self._met.get(other, 0.0) + load * max(0.0, end - max(s, start))
        self._met = {k: v for k, v in self._met.items() if k in running}  # failed batches never finish
        mean = met / duration if duration > 0 else sum(w for _, w in running.values())
        self.ewma = self.alpha * mean + (1.0 - self.alpha) * self.ewma
        return mean

    def predict(self, load_now: float) -> float:
        """The co-located load a batch starting now should expect: ``load_now`` (of the batches
        it would start beside) blended with what finished batches met."""
        return self.alpha * load_now + (1.0 - self.alpha) * self.ewma


class CostView:
    """A policy's read-only window on a :class:`CostModel` (``SchedulerState.costs``).

    ``neighbours()`` is the load of the batches one dispatched now would run beside (the
    engine's running batches, at most its other workers); ``params(model)`` a model's size.
    """

    __slots__ = ("_colocation", "_model", "_neighbours", "_params", "_tier")

    def __init__(
        self,
        model: CostModel,
        colocation: Colocation,
        neighbours: Callable[[], float],
        params: Callable[[str], int],
        tier: Callable[[str], str] | None = None,
    ) -> None:
        self._model = model
        self._colocation = colocation
        self._neighbours = neighbours
        self._params = params
        self._tier = tier

    def colocated(self) -> float:
        """The co-located load a batch dispatched now is predicted to meet."""
        return self._colocation.predict(self._neighbours())

    def features(self, model: str, requests: Sequence[Any]) -> BatchFeatures:
        """The features of a batch of ``requests`` dispatched now."""
        return batch_features(model, requests, self._params(model), self.colocated())

    def batch_seconds(self, model: str, requests: Sequence[Any]) -> float:
        return self._model.predict_batch(self.features(model, requests))

    def load_seconds(self, model: str, nbytes: int, tier: str | None = None) -> float:
        """How long loading ``model`` from ``tier`` would take (None: where its weights are now)."""
        if tier is None:
            tier = self._tier(model) if self._tier is not None else DEFAULT_TIER
        if tier == "resident":
            return 0.0
        return self._model.predict_load(model, nbytes, tier)


class CostModel:
    """Batch latency and load time, per model, learned online; see the module's docstring.

    Beside the per-model estimators, one factor for the whole machine (:attr:`machine`): how
    much slower (or faster) than learned every model runs now. When something else starts
    using the machine, every model slows at once; each model's estimator, fed only its own
    batches, would take about a hundred of them to follow (forgetting 0.98), while the factor
    learns from every batch of every model (a step of ``MACHINE_RATE`` on the log of the ratio,
    each batch's ratio clipped to ``exp(±MACHINE_CLIP)`` so one surprise moves it little). It
    learns only from models with ``MACHINE_AFTER`` batches behind them: a new model's errors are
    its own, not the machine's. The estimators learn latencies divided by the factor, so a
    change is followed once, by the factor, not by both.
    """

    FEATURES = 8
    #: How much less sure a new model's estimator is than the shared one it starts from.
    INFLATION = 100.0
    MACHINE_RATE = 0.1
    MACHINE_CLIP = 0.5
    MACHINE_AFTER = 10

    def __init__(self, forgetting: float = 0.98) -> None:
        self.forgetting = forgetting
        self.machine_log = 0.0
        """The log of :attr:`machine`."""
        self.shared = RecursiveLeastSquares(self.FEATURES, forgetting)
        self.models: dict[str, RecursiveLeastSquares] = {}
        self.loads: dict[tuple[str, str], RecursiveLeastSquares] = {}
        """Load time per (model, tier it loads from), each started from its tier's shared estimator."""
        self.shared_loads: dict[str, RecursiveLeastSquares] = {}
        """Load time per tier, over every model: [1, GB] -> seconds."""

    def _for(self, model: str) -> RecursiveLeastSquares:
        estimator = self.models.get(model)
        if estimator is None:  # never seen: start from what every model taught the shared one,
            estimator = self.shared.copy()  # but less sure of it (covariance inflated), so the
            estimator.P = estimator.P * self.INFLATION  # model's own batches move it quickly
            estimator.count = 0
            self.models[model] = estimator
        return estimator

    @property
    def machine(self) -> float:
        """How many times slower than its estimators predict the machine runs now (1.0: as learned)."""
        return math.exp(self.machine_log)

    def predict_batch(self, features: BatchFeatures) -> float:
        """Seconds; never below zero."""
        estimator = self.models.get(features.model, self.shared)
        return max(0.0, estimator.predict(features.vector())) * self.machine

    def observe_batch(self, features: BatchFeatures, seconds: float) -> float:
        """Learn from a finished batch; returns the relative error of the prediction made before it."""
        predicted = self.predict_batch(features)
        own = self.models.get(features.model)
        if predicted > 0 and seconds > 0 and own is not None and own.count >= self.MACHINE_AFTER:
            surprise = min(self.MACHINE_CLIP, max(-self.MACHINE_CLIP, math.log(seconds / predicted)))
            self.machine_log += self.MACHINE_RATE * surprise
        # The estimators learn the latency as it would be on the machine as learned: what the
        # factor explains is not learned twice (both would follow a step, then overshoot).
        x, y = features.vector(), seconds / self.machine
        self._for(features.model).update(x, y)
        self.shared.update(x, y)
        return (predicted - seconds) / seconds if seconds > 0 else 0.0

    def predict_load(self, model: str, nbytes: int, tier: str = DEFAULT_TIER) -> float:
        """Seconds to load ``model`` from ``tier``. A tier nothing has loaded from yet is predicted
        as a load from ``disk`` (the upper estimate: the faster tiers are not assumed faster
        before a load from them has shown it)."""
        estimator = self.loads.get((model, tier)) or self.shared_loads.get(tier)
        if estimator is None:  # nothing has loaded from this tier yet
            return 0.0 if tier == DEFAULT_TIER else self.predict_load(model, nbytes, DEFAULT_TIER)
        return max(0.0, estimator.predict(np.array([1.0, nbytes / 1e9])))

    def observe_load(self, model: str, nbytes: int, seconds: float, tier: str = DEFAULT_TIER) -> None:
        """Learn from a load of ``model`` (``nbytes``) from ``tier`` that took ``seconds``."""
        x = np.array([1.0, nbytes / 1e9])
        shared = self.shared_loads.get(tier)
        if shared is None:
            shared = self.shared_loads[tier] = RecursiveLeastSquares(2, self.forgetting)
        if (model, tier) not in self.loads:
            self.loads[(model, tier)] = shared.copy()
        self.loads[(model, tier)].update(x, seconds)
        shared.update(x, seconds)
