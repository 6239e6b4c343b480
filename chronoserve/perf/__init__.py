"""Performance logging shared by ``eval --perf``, ``replay --system-stats`` and ``edge-bench``.

- :class:`CsvMetricsLogger`: per-batch rows (``time_s``, :data:`BATCH_FIELDS`, extras),
  thread-safe, flushed per row, kept in memory too.
- :class:`SystemSampler`: a background thread sampling CPU (total, user, system, per
  core), memory, the process's CPU and RSS, and optionally temperature, clock frequency,
  throttling and energy; the meaningless first psutil reading is primed and dropped.
- :class:`BatchRecorder`: an engine observer writing one logger row per engine batch.
- :class:`Sensors`: where temperature, frequency, throttling and energy come from.

Unavailable values are None (an empty CSV cell), never 0. Importing this package imports
neither torch nor matplotlib.
"""

from __future__ import annotations

from .logger import BATCH_FIELDS, CsvMetricsLogger, read_rows
from .recorder import PREDICTION_FIELDS, BatchRecorder, PredictionRecorder
from .sampler import BASE_FIELDS, MIN_INTERVAL_S, SystemSampler
from .sensors import SENSOR_FIELDS, Sensors

__all__ = [
    "BASE_FIELDS",
    "BATCH_FIELDS",
    "MIN_INTERVAL_S",
    "SENSOR_FIELDS",
    "BatchRecorder",
    "PREDICTION_FIELDS",
    "PredictionRecorder",
    "CsvMetricsLogger",
    "Sensors",
    "SystemSampler",
    "read_rows",
]
