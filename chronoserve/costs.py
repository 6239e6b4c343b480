"""An online model of what work costs: a batch's latency and a model load's time, learned as they finish.

The first piece of "the scheduler knows what work costs" (OASIS; Zhao & Georgantas, MAIoT '25,
see ../shared/docs/scheduling-notes.md §1): a linear model over a batch's features, learned by
recursive least squares with a forgetting factor (the paper's best online learner: MSE 0.347 on
models never seen in training, against 0.431 for SGD and 0.548 offline), with the co-located
load tracked over each batch's lifetime (:class:`Colocation`), as their dynamic variant does.

Features of a batch (:class:`BatchFeatures`): its estimated GFLOP (``2 x parameters x tokens x
rows``, :func:`chronoserve.limits.estimate_gflop`, which carries the model's size, the rows,
the context and the output patches), the same scaled by the co-located load (other batches
running beside it, averaged over its run), and its rows. Latency = theta . [1, gflop,
gflop x concurrency, rows]. Each model has its own estimator; a model never seen starts from
a shared estimator fitted on every model's batches, so its first predictions come from its
size alone and improve with its own batches.

Everything here is pure: no I/O, no threads, no clock of its own (times are arguments), so
the engine feeds it and policies may read it, and the tests drive it with made-up numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

Vector = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class BatchFeatures:
    """What a batch's latency is predicted from."""

    model: str
    gflop: float
    """Estimated work: :func:`chronoserve.limits.estimate_gflop` summed over the batch's requests."""
    rows: int
    """Series rows: targets plus Chronos-2's covariate rows."""
    concurrency: float = 0.0
    """Other batches running beside it, on average over its run (predicted: see :class:`Colocation`)."""

    def vector(self) -> Vector:
        return np.array([1.0, self.gflop, self.gflop * self.concurrency, float(self.rows)])


@dataclass(frozen=True, slots=True)
class BatchCost:
    """What one finished batch cost, against what was predicted when it was dispatched
    (the engine's ``batch_cost`` event)."""

    features: BatchFeatures
    """What the model learned from: the co-located load is the one the batch really met."""
    expected_concurrency: float
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
        self.count += 1
        return error

    def copy(self) -> RecursiveLeastSquares:
        other = RecursiveLeastSquares(len(self.theta), self.forgetting)
        other.theta, other.P, other.count = self.theta.copy(), self.P.copy(), self.count
        return other


@dataclass
class Colocation:
    """How many other batches ran beside each batch, averaged over its run, and a prediction of it.

    A batch's run is the interval a worker spent on it (from the model's start to its end, not
    the time it waited for a worker). When a batch finishes, :meth:`finished` integrates its
    overlap with every batch that ran beside it: those finished meanwhile (kept here while they
    can still overlap a running one) and those still running (their start is known). The mean
    number of neighbours feeds an EWMA (``alpha``), the paper's dynamic variant (α in
    {1/3, 1/2, 2/3}); :meth:`predict` blends it with the neighbours a batch starting now would
    have.
    """

    alpha: float = 0.5
    ewma: float = 0.0
    _done: list[tuple[float, float]] = field(default_factory=list)
    """Runs of finished batches that may still overlap a running one."""

    def finished(self, start: float, end: float, running: Iterable[float]) -> float:
        """The mean number of neighbours of the batch that ran over ``[start, end]``.

        ``running``: the start times of the batches still running (those that have started).
        """
        starts = list(running)
        duration = end - start
        overlap = sum(max(0.0, min(e, end) - max(s, start)) for s, e in self._done)
        overlap += sum(max(0.0, end - max(s, start)) for s in starts if s < end)
        mean = overlap / duration if duration > 0 else float(len(starts))
        self._done.append((start, end))
        horizon = min(starts, default=end)  # batches yet to finish run from here on
        self._done = [(s, e) for s, e in self._done if e > horizon]
        self.ewma = self.alpha * mean + (1.0 - self.alpha) * self.ewma
        return mean

    def predict(self, neighbours: int) -> float:
        """The neighbours a batch starting now should expect: ``neighbours`` (those it would start
        beside) blended with what finished batches met."""
        return self.alpha * neighbours + (1.0 - self.alpha) * self.ewma


class CostView:
    """A policy's read-only window on a :class:`CostModel` (``SchedulerState.costs``).

    ``neighbours()`` says how many batches one dispatched now would run beside (the engine's
    running batches, at most its other workers).
    """

    __slots__ = ("_colocation", "_model", "_neighbours")

    def __init__(self, model: CostModel, colocation: Colocation, neighbours: Callable[[], int]) -> None:
        self._model = model
        self._colocation = colocation
        self._neighbours = neighbours

    def concurrency(self) -> float:
        """The co-located load a batch dispatched now is predicted to meet."""
        return self._colocation.predict(self._neighbours())

    def batch_seconds(self, model: str, requests: Sequence[Any]) -> float:
        gflop = sum(r.gflop for r in requests)
        rows = sum(r.rows for r in requests)
        return self._model.predict_batch(BatchFeatures(model, gflop, rows, self.concurrency()))

    def load_seconds(self, model: str, nbytes: int) -> float:
        return self._model.predict_load(model, nbytes)


class CostModel:
    """Batch latency and load time, per model, learned online; see the module's docstring."""

    FEATURES = 4
    #: How much less sure a new model's estimator is than the shared one it starts from.
    INFLATION = 100.0

    def __init__(self, forgetting: float = 0.98) -> None:
        self.forgetting = forgetting
        self.shared = RecursiveLeastSquares(self.FEATURES, forgetting)
        self.models: dict[str, RecursiveLeastSquares] = {}
        self.loads: dict[str, RecursiveLeastSquares] = {}
        self.shared_loads = RecursiveLeastSquares(2, forgetting)

    def _for(self, model: str) -> RecursiveLeastSquares:
        estimator = self.models.get(model)
        if estimator is None:  # never seen: start from what every model taught the shared one,
            estimator = self.shared.copy()  # but less sure of it (covariance inflated), so the
            estimator.P = estimator.P * self.INFLATION  # model's own batches move it quickly
            estimator.count = 0
            self.models[model] = estimator
        return estimator

    def predict_batch(self, features: BatchFeatures) -> float:
        """Seconds; never below zero."""
        estimator = self.models.get(features.model, self.shared)
        return max(0.0, estimator.predict(features.vector()))

    def observe_batch(self, features: BatchFeatures, seconds: float) -> float:
        """Learn from a finished batch; returns the relative error of the prediction made before it."""
        predicted = self.predict_batch(features)
        x = features.vector()
        self._for(features.model).update(x, seconds)
        self.shared.update(x, seconds)
        return (predicted - seconds) / seconds if seconds > 0 else 0.0

    def predict_load(self, model: str, nbytes: int) -> float:
        estimator = self.loads.get(model, self.shared_loads)
        return max(0.0, estimator.predict(np.array([1.0, nbytes / 1e9])))

    def observe_load(self, model: str, nbytes: int, seconds: float) -> None:
        x = np.array([1.0, nbytes / 1e9])
        if model not in self.loads:
            self.loads[model] = self.shared_loads.copy()
        self.loads[model].update(x, seconds)
        self.shared_loads.update(x, seconds)
