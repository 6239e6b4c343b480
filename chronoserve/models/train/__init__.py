"""Train a small Chronos-2 from random initialisation on the Beijing PM2.5 training span.

Random weights have no skill, so ``chronoserve models train`` fits a small Chronos-2 on the
hourly PM2.5 readings of 2013-03-01 to 2016-06-30 23:00 (:data:`TRAIN_START` to
:data:`TRAIN_END`) through upstream ``Chronos2Pipeline.fit``, and writes an ordinary local
checkpoint (``config.json`` + ``model.safetensors``) plus ``training.json`` (every setting,
the data span, losses, wall time, versions and the weights' sha256).

- **The evaluation span is never seen.** July to December 2016 (from :data:`EVAL_START`) is
  where ``chronoserve eval`` scores models. :func:`load_sites` refuses an ``end`` at or after
  it, keeps only the rows of the span from each file it reads, and checks the rows it returns;
  :func:`train` checks again what reaches ``fit``.
- **Covariates.** ``Chronos2Dataset`` in TRAIN mode never chooses which covariates are past-only
  or known-future: each input carries its own split (``n_future_covariates``, the last rows of
  ``context``), and only its known-future rows get their horizon values. So every site enters
  ``fit`` in three forms (:data:`VARIANTS`): PM2.5 alone, PM2.5 with the three weather series
  as past-only covariates, and with them as known-future covariates. Batches draw inputs
  uniformly, so the model learns to forecast without covariates, with past weather only (the
  serving and eval default), and with the real future weather (the study's optimistic case).
- **Reproducible.** The architecture's random init is seeded (as in
  :func:`chronoserve.models.materialize`), the Trainer gets ``seed`` and ``data_seed``, the
  Python, numpy and torch generators are seeded, and torch runs with deterministic algorithms
  and a fixed thread count: the same settings and data give identical weights on one CPU.

The modules:

- :mod:`~chronoserve.models.train.settings`: the spans, :class:`TrainSettings`, :class:`TrainingError`;
- :mod:`~chronoserve.models.train.data`: reading the sites (through :func:`chronoserve.data.read_series`,
  the one reader of the CSV format) and the inputs handed to ``fit``;
- :mod:`~chronoserve.models.train.run`: the model, determinism, progress, and :func:`train`;
- :mod:`~chronoserve.models.train.checkpoint`: the checkpoint directory and ``training.json``;
- :mod:`~chronoserve.models.train.scoring`: :func:`score_span` on a held-out slice;
- :mod:`~chronoserve.models.train.plots`: :func:`plot_loss`.

Heavy imports (torch, transformers, chronos) happen inside the functions that need them.
"""

from __future__ import annotations

from chronoserve.data import TARGET, TIMESTAMP

from .checkpoint import TRAINING_FILE, read_training_record, sha256_file, training_record, write_checkpoint
from .data import (
    COVARIATES,
    SiteData,
    check_inputs_in_span,
    load_sites,
    prepared_input,
    read_site,
    site_files,
    training_inputs,
    validation_inputs,
)
from .plots import plot_loss
from .run import (
    LossLog,
    TrainResult,
    deterministic,
    model_config,
    num_parameters,
    progress_callback,
    random_pipeline,
    train,
)
from .scoring import score_span
from .settings import (
    EVAL_START,
    SEASON,
    TRAIN_END,
    TRAIN_START,
    VALIDATION_START,
    VARIANTS,
    TrainingError,
    TrainSettings,
    check_span,
    settings_from_record,
    with_settings,
)

__all__ = [
    "COVARIATES",
    "EVAL_START",
    "SEASON",
    "TARGET",
    "TIMESTAMP",
    "TRAINING_FILE",
    "TRAIN_END",
    "TRAIN_START",
    "VALIDATION_START",
    "VARIANTS",
    "LossLog",
    "SiteData",
    "TrainResult",
    "TrainSettings",
    "TrainingError",
    "check_inputs_in_span",
    "check_span",
    "deterministic",
    "load_sites",
    "model_config",
    "num_parameters",
    "plot_loss",
    "prepared_input",
    "progress_callback",
    "random_pipeline",
    "read_site",
    "read_training_record",
    "score_span",
    "settings_from_record",
    "sha256_file",
    "site_files",
    "train",
    "training_inputs",
    "training_record",
    "validation_inputs",
    "with_settings",
    "write_checkpoint",
]
