"""What determines a training run: the spans, :class:`TrainSettings`, and their checks.

The training span is 2013-03-01 to 2016-06-30 23:00 (:data:`TRAIN_START` to :data:`TRAIN_END`);
July to December 2016 (from :data:`EVAL_START`) is the evaluation span, which training never
reads: :func:`check_span` refuses a span that reaches it. Errors are :class:`TrainingError`,
naming the setting by its CLI flag.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

#: The first hour of the data set.
TRAIN_START = datetime(2013, 3, 1, 0)
#: The first hour of the evaluation span (July to December 2016): never used for training.
EVAL_START = datetime(2016, 7, 1, 0)
#: The last hour a training run may read.
TRAIN_END = EVAL_START - timedelta(hours=1)
#: ``--validation`` holds out the last quarter of the training span (April to June 2016).
VALIDATION_START = datetime(2016, 4, 1, 0)

#: How each site enters ``fit`` (see :mod:`chronoserve.models.train`).
VARIANTS: tuple[str, ...] = ("none", "past", "future")
#: The hourly season of the scale in MASE and of the seasonal-naive baseline.
SEASON = 24


class TrainingError(ValueError):
    """Bad training settings or data; ``field`` names the setting (a CLI flag without ``--``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class TrainSettings:
    """Everything that determines a training run (recorded in ``training.json``)."""

    data: str
    """Directory of ``<site>.csv`` files (timestamp, relative_humidity, temperature, wind_speed, pm25)."""
    seed: int = 0
    steps: int = 3000
    batch_size: int = 64
    """Rows per batch, as upstream counts them: a site with covariates is 4 rows, alone 1. A step's
    time grows faster than this: on 2 cores 48 to 96 rows gave the most rows per second, 128 far fewer."""
    context_length: int = 512
    horizon: int = 48
    learning_rate: float = 1e-3
    start: datetime = TRAIN_START
    end: datetime = TRAIN_END
    validation: bool = False
    """Hold out ``validation_start``..``end``: train before it, score on it."""
    validation_start: datetime = VALIDATION_START
    d_model: int = 128
    d_ff: int = 256
    d_kv: int = 32
    num_layers: int = 3
    num_heads: int = 4
    dropout: float = 0.1
    variants: tuple[str, ...] = VARIANTS
    short_contexts: float = 0.5
    """About this share of training windows come from short pieces of the series, so the model
    also learns from contexts shorter than ``context_length`` (see
    :func:`~chronoserve.models.train.data.training_inputs`)."""
    torch_threads: int = 2
    device: str = "cpu"
    """Where ``fit`` runs. On a GPU, bf16 and tf32 stay off so the numbers match a CPU run's kind."""
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    lr_scheduler: str = "linear"
    sites: tuple[str, ...] | None = None
    """Site names (CSV stems) to use; None: every CSV in ``data``."""

    @property
    def train_end(self) -> datetime:
        """The last hour whose values reach ``fit``."""
        return self.validation_start - timedelta(hours=1) if self.validation else self.end

    def check(self) -> None:
        """Raise :class:`TrainingError` naming the first bad setting (by its CLI flag)."""
        for name, flag in _INT_FLAGS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise TrainingError(flag, f"must be a positive integer, got {value!r}")
        if self.seed < 0:
            raise TrainingError("seed", f"must be >= 0, got {self.seed}")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise TrainingError("lr", f"must be a positive number, got {self.learning_rate!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise TrainingError("dropout", f"must be in [0, 1), got {self.dropout!r}")
        if self.context_length % 16:
            raise TrainingError("context", f"must be a multiple of the patch size 16, got {self.context_length}")
        if self.horizon > 1024:
            raise TrainingError("horizon", f"must be at most 1024, got {self.horizon}")
        if not 0.0 <= self.short_contexts < 1.0:
            raise TrainingError("short-contexts", f"must be in [0, 1), got {self.short_contexts!r}")
        bad = [v for v in self.variants if v not in VARIANTS]
        if bad or not self.variants:
            raise TrainingError("variants", f"must be a non-empty subset of {VARIANTS}, got {self.variants!r}")
        check_span(self.start, self.end)
        if self.validation and not self.start < self.validation_start <= self.end:
            raise TrainingError(
                "validation", f"the held-out slice starts {self.validation_start}, outside {self.start}..{self.end}"
            )


#: Integer settings and the CLI flag (without ``--``) that sets each.
_INT_FLAGS: Mapping[str, str] = {
    "steps": "steps",
    "batch_size": "batch-size",
    "context_length": "context",
    "horizon": "horizon",
    "d_model": "d-model",
    "d_ff": "d-ff",
    "d_kv": "d-kv",
    "num_layers": "layers",
    "num_heads": "heads",
    "torch_threads": "threads",
}


def check_span(start: datetime, end: datetime) -> None:
    """Refuse a training span that reaches the evaluation span or is empty (errors name the flag)."""
    if end >= EVAL_START:
        raise TrainingError(
            "end",
            f"{end:%Y-%m-%d %H:%M} is in the evaluation span (from {EVAL_START:%Y-%m-%d %H:%M}), "
            f"which training never reads; the latest end is {TRAIN_END:%Y-%m-%d %H:%M}",
        )
    if start < TRAIN_START:
        raise TrainingError("start", f"{start:%Y-%m-%d %H:%M} is before the data set ({TRAIN_START:%Y-%m-%d})")
    if end <= start:
        raise TrainingError("end", f"{end:%Y-%m-%d %H:%M} is not after --start {start:%Y-%m-%d %H:%M}")


def with_settings(settings: TrainSettings, **changes: Any) -> TrainSettings:
    """``settings`` with ``changes`` (a typed ``dataclasses.replace``)."""
    return replace(settings, **changes)


def settings_from_record(record: Mapping[str, Any]) -> TrainSettings:
    """The :class:`TrainSettings` a ``training.json`` records (to re-run or compare)."""
    raw = dict(record["settings"])
    for key in ("start", "end", "validation_start"):
        raw[key] = datetime.fromisoformat(raw[key])
    raw["variants"] = tuple(raw["variants"])
    if raw.get("sites") is not None:
        raw["sites"] = tuple(raw["sites"])
    return TrainSettings(**raw)
