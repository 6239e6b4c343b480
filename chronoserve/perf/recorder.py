"""Engine observers that log every finished batch: :class:`BatchRecorder`, :class:`PredictionRecorder`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from chronoserve.costs import BatchCost
from chronoserve.events import EngineObserver

from .logger import CsvMetricsLogger

Labels = Callable[[str], Mapping[str, Any]]


class BatchRecorder(EngineObserver):
    """Writes one :class:`CsvMetricsLogger` row per batch the engine ran.

    ``engine = Engine(..., observers=[BatchRecorder(logger, labels=lambda model: {"series": "dongsi",
    "context_hours": 240, "horizon_hours": 24, "stride": 4})])``

    The engine supplies ``model``, ``batch_size`` and ``latency_s`` (the batch's inference
    time: pre- and post-processing and the model call, without queueing); ``labels(model)``
    supplies the other columns (series, context, horizon, stride, or any ``extra_fields`` of
    the logger). Columns neither gives stay empty. A batch that raised is not logged (its
    time is meaningless) but counted in :attr:`failed_batches`.
    """

    def __init__(self, logger: CsvMetricsLogger, labels: Labels | Mapping[str, Any] | None = None) -> None:
        self.logger = logger
        if labels is None:
            self._labels: Labels = lambda model: {}
        elif callable(labels):
            self._labels = labels
        else:
            fixed = dict(labels)
            self._labels = lambda model: fixed
        self.batches = 0
        self.failed_batches = 0

    def batch_finished(self, model: str, size: int, inference_seconds: float, ok: bool) -> None:
        if not ok:
            self.failed_batches += 1
            return
        self.batches += 1
        values = {**self._labels(model), "model": model, "batch_size": size, "latency_s": inference_seconds}
        self.logger.log(**values)


#: The columns a :class:`PredictionRecorder` adds to :data:`~chronoserve.perf.BATCH_FIELDS`
#: (``model`` and ``latency_s``, the batch's real inference time, come from those).
PREDICTION_FIELDS: tuple[str, ...] = (
    "gflop",
    "rows",
    "colocated",
    "expected_colocated",
    "predicted_s",
    "relative_error",
)


class PredictionRecorder(EngineObserver):
    """One row per batch: the cost model's prediction at dispatch and what the batch took.

    ``logger`` must have :data:`PREDICTION_FIELDS` as its ``extra_fields``. ``relative_error``
    is ``(predicted - actual) / actual``; ``colocated`` the co-located load the batch really met
    (passes per second of its neighbours, in hundreds), ``expected_colocated`` the one the
    prediction assumed at dispatch.
    ``serve --log-predictions PATH`` and ``replay --log-predictions`` write these.
    """

    def __init__(self, logger: CsvMetricsLogger) -> None:
        self.logger = logger

    def batch_cost(self, cost: BatchCost) -> None:
        f = cost.features
        self.logger.log(
            model=f.model,
            latency_s=cost.seconds,
            gflop=round(f.gflop, 6),
            rows=f.rows,
            colocated=round(f.colocated, 4),
            expected_colocated=round(cost.expected_colocated, 4),
            predicted_s=cost.predicted_seconds,
            relative_error=cost.relative_error,
        )
