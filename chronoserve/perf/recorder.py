"""An engine observer that logs every finished batch: :class:`BatchRecorder`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

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
