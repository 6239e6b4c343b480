"""Train a small Chronos-2 from random initialisation on the Beijing PM2.5 training span.

Random weights have no skill, so ``chronoserve models train`` fits a small Chronos-2 on the
hourly PM2.5 readings of 2013-03-01 to 2016-06-30 23:00 (:data:`TRAIN_START` to
:data:`TRAIN_END`) through upstream ``Chronos2Pipeline.fit``, and writes an ordinary local
checkpoint (``config.json`` + ``model.safetensors``) plus ``training.json`` (every setting,
the data span, losses, wall time, versions and the weights' sha256).

- **The evaluation span is never seen.** July to December 2016 (from :data:`EVAL_START`) is
  where ``chronoserve eval`` scores models. :func:`load_sites` refuses an ``end`` at or after
  it and checks the rows it returns; :func:`train` checks again what reaches ``fit``.
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

Heavy imports (torch, transformers, chronos) happen inside the functions that need them.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import math
import os
import platform
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import numpy.typing as npt

from chronoserve.models.catalog import CHRONOS_2_QUANTILES, chronos2_config
from chronoserve.models.materialize import CONFIG_FILE, MARKER_KEY, TRANSFORMERS_LOCK, WEIGHTS_FILE

FloatArray = npt.NDArray[np.float32]

#: The first hour of the data set.
TRAIN_START = datetime(2013, 3, 1, 0)
#: The first hour of the evaluation span (July to December 2016): never used for training.
EVAL_START = datetime(2016, 7, 1, 0)
#: The last hour a training run may read.
TRAIN_END = EVAL_START - timedelta(hours=1)
#: ``--validation`` holds out the last quarter of the training span (April to June 2016).
VALIDATION_START = datetime(2016, 4, 1, 0)

TARGET = "pm25"
COVARIATES: tuple[str, ...] = ("relative_humidity", "temperature", "wind_speed")
TIMESTAMP = "timestamp"
TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S"
#: How each site enters ``fit`` (see the module docstring).
VARIANTS: tuple[str, ...] = ("none", "past", "future")
TRAINING_FILE = "training.json"
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
    also learns from contexts shorter than ``context_length`` (see :func:`training_inputs`)."""
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


# -- data ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SiteData:
    """One site's hourly rows inside a span: ``values`` is ``(4, T)``, PM2.5 then the covariates."""

    name: str
    start: datetime
    """The hour of column 0."""
    values: FloatArray

    @property
    def hours(self) -> int:
        return int(self.values.shape[1])

    @property
    def end(self) -> datetime:
        """The hour of the last column."""
        return self.start + timedelta(hours=self.hours - 1)


def site_files(data_dir: str | os.PathLike[str], sites: Sequence[str] | None = None) -> list[Path]:
    """The ``<site>.csv`` files of ``data_dir`` (all, sorted, or the named ``sites``)."""
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise TrainingError("data", f"no such directory: {root}")
    if sites is None:
        files = sorted(root.glob("*.csv"))
        if not files:
            raise TrainingError("data", f"{root} holds no <site>.csv files")
        return files
    files = []
    for site in sites:
        path = root / f"{site}.csv"
        if not path.is_file():
            raise TrainingError("sites", f"no {path}")
        files.append(path)
    return files


def read_site(path: Path, start: datetime, end: datetime) -> SiteData:
    """The rows of ``path`` with ``start <= timestamp <= end``, checked to be consecutive hours.

    Empty cells are NaN. Rows after ``end`` are never converted. Raises :class:`TrainingError`
    (field ``data``) for a missing column, a bad cell or a gap in the hours.
    """
    columns = (TARGET, *COVARIATES)
    rows: list[list[float]] = []
    first: datetime | None = None
    previous: datetime | None = None
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in (TIMESTAMP, *columns) if c not in (reader.fieldnames or [])]
        if missing:
            raise TrainingError("data", f"{path} has no column(s) {missing} (columns: {reader.fieldnames})")
        for line, row in enumerate(reader, start=2):
            try:
                ts = datetime.strptime(row[TIMESTAMP], TIMESTAMP_FORMAT)
            except (TypeError, ValueError):
                raise TrainingError("data", f"{path}:{line}: bad timestamp {row[TIMESTAMP]!r}") from None
            if ts < start:
                continue
            if ts > end:
                break
            if previous is not None and ts - previous != timedelta(hours=1):
                raise TrainingError("data", f"{path}:{line}: {ts} does not follow {previous} by one hour")
            try:
                rows.append([float(row[c]) if (row[c] or "").strip() else math.nan for c in columns])
            except ValueError:
                raise TrainingError("data", f"{path}:{line}: a value is not a number: {row}") from None
            first = first or ts
            previous = ts
    if first is None or previous is None:
        raise TrainingError("data", f"{path} has no rows between {start} and {end}")
    if previous >= EVAL_START:  # never reached: ts > end >= ... is cut above; this is the guard
        raise TrainingError("end", f"{path}: a row at {previous} is in the evaluation span")
    values = np.asarray(rows, dtype=np.float32).T.copy()
    return SiteData(name=path.stem, start=first, values=values)


def load_sites(
    data_dir: str | os.PathLike[str], start: datetime, end: datetime, sites: Sequence[str] | None = None
) -> list[SiteData]:
    """Every site's rows in ``start``..``end`` (inclusive); ``end`` must be before :data:`EVAL_START`."""
    check_span(start, end)
    loaded = [read_site(path, start, end) for path in site_files(data_dir, sites)]
    for site in loaded:
        if site.end >= EVAL_START or site.start < start:
            raise TrainingError("end", f"site {site.name} has rows {site.start}..{site.end} outside the span")
    return loaded


def prepared_input(values: FloatArray, variant: str, horizon: int = 0) -> dict[str, Any]:
    """A ``PreparedInput`` for ``fit`` or ``predict``: PM2.5 with covariates as ``variant`` says.

    ``values`` is ``(4, T)`` (PM2.5, then :data:`COVARIATES`). ``none``: the target alone;
    ``past``: the covariates as past-only rows; ``future``: as known-future rows (the last rows,
    which ``Chronos2Dataset`` reads for the horizon). ``horizon`` sizes ``future_covariates``
    (``predict`` reads it; ``fit`` rebuilds it from the context and only needs its row count).
    """
    import torch

    rows = values[:1] if variant == "none" else values
    n_cov = rows.shape[0] - 1
    n_future = n_cov if variant == "future" else 0
    return {
        "context": torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32)),
        "future_covariates": torch.full((rows.shape[0], horizon), math.nan, dtype=torch.float32),
        "n_targets": 1,
        "n_covariates": n_cov,
        "n_future_covariates": n_future,
    }


def training_inputs(
    sites: Sequence[SiteData],
    variants: Sequence[str],
    *,
    short_fraction: float = 0.0,
    min_length: int = 0,
    max_length: int = 0,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """What ``fit`` trains on: each site once per variant, plus short pieces for short contexts.

    ``Chronos2Dataset`` cuts a training window at a uniform point of a uniformly drawn input and
    keeps the ``context_length`` hours before it, so whole multi-year series almost always give
    full-length contexts. With ``short_fraction > 0`` each site is also cut into consecutive
    pieces of ``min_length``..``max_length`` hours (lengths drawn from ``seed``), each piece in
    every variant; the whole series are repeated (the same tensors, no copy) so that about
    ``short_fraction`` of the draws land on a piece, whose context is shorter than
    ``max_length``. The order is fixed: whole series (sites by name, then variants), then pieces.
    """
    ordered = sorted(sites, key=lambda s: s.name)
    whole = [prepared_input(s.values, v) for s in ordered for v in variants]
    if short_fraction <= 0.0:
        return whole
    if not 0.0 < short_fraction < 1.0:
        raise TrainingError("short-contexts", f"must be in [0, 1), got {short_fraction!r}")
    if not 0 < min_length <= max_length:
        raise ValueError(f"piece lengths must satisfy 0 < min_length <= max_length, got {min_length}, {max_length}")
    rng = np.random.default_rng(seed)
    pieces: list[dict[str, Any]] = []
    for site in ordered:
        start = 0
        while start + min_length <= site.hours:
            length = int(rng.integers(min_length, max_length + 1))
            piece = site.values[:, start : start + length]
            start += length
            if piece.shape[1] >= min_length and np.isfinite(piece[0]).any():
                pieces.extend(prepared_input(piece, v) for v in variants)
    repeats = max(1, round(len(pieces) * (1.0 - short_fraction) / (short_fraction * len(whole))))
    return whole * repeats + pieces


def validation_inputs(
    sites: Sequence[SiteData], first: datetime, context_length: int, horizon: int, stride: int
) -> list[dict[str, Any]]:
    """Windows for ``fit``'s validation loss: per site, each ends ``horizon`` hours after a cut.

    Cuts are every ``stride`` hours from ``first``; upstream's VALIDATION mode scores the last
    ``horizon`` hours of each input from the ``context_length`` hours before them (past-only
    covariates, the serving default).
    """
    out = []
    for site in sites:
        offset = int((first - site.start) / timedelta(hours=1))
        for cut in range(max(offset, context_length), site.hours - horizon + 1, stride):
            out.append(prepared_input(site.values[:, cut - context_length : cut + horizon], "past"))
    if not out:
        raise TrainingError("validation", "the held-out slice is too short for one window")
    return out


# -- model ---------------------------------------------------------------------------------------


def model_config(settings: TrainSettings) -> Any:
    """The ``Chronos2CoreConfig`` of the model to train (the catalog's Chronos-2 layout, smaller)."""
    return chronos2_config(
        d_model=settings.d_model,
        d_kv=settings.d_kv,
        d_ff=settings.d_ff,
        num_layers=settings.num_layers,
        num_heads=settings.num_heads,
        context_length=settings.context_length,
        max_horizon=settings.horizon,
        quantiles=CHRONOS_2_QUANTILES,
        dropout=settings.dropout,
    )


def random_pipeline(settings: TrainSettings) -> Any:
    """A ``Chronos2Pipeline`` around a random-initialised model, deterministic from ``seed``."""
    import torch
    from chronos.chronos2 import Chronos2Model, Chronos2Pipeline

    config = model_config(settings)
    with TRANSFORMERS_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        model = Chronos2Model(config)
    return Chronos2Pipeline(model=model.to(settings.device))


def num_parameters(pipeline: Any) -> int:
    return int(sum(p.numel() for p in pipeline.model.parameters()))


# -- progress ------------------------------------------------------------------------------------


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60}m{seconds % 60:02d}s"


@dataclass
class LossLog:
    """The loss curve as the Trainer logs it: ``(step, loss)`` and ``(step, eval_loss)``."""

    train: list[tuple[int, float]] = field(default_factory=list)
    validation: list[tuple[int, float]] = field(default_factory=list)
    step_seconds: list[tuple[int, float]] = field(default_factory=list)
    """``(step, seconds since training began)`` at each log, for the per-step time."""


def progress_callback(total: int, log: LossLog, stream: TextIO | None) -> Any:
    """A ``TrainerCallback`` that records ``log`` and prints ``step, loss, elapsed, ETA`` lines."""
    from transformers.trainer_callback import TrainerCallback

    class _Progress(TrainerCallback):  # type: ignore[misc]
        def __init__(self) -> None:
            self.started = 0.0

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.started = time.perf_counter()
            if stream is not None:
                print(f"train: {total} steps", file=stream, flush=True)

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            step = int(state.global_step)
            logs = logs or {}
            elapsed = time.perf_counter() - self.started
            parts = [f"step {step}/{total}"]
            if "loss" in logs:
                log.train.append((step, float(logs["loss"])))
                log.step_seconds.append((step, elapsed))
                parts.append(f"loss {float(logs['loss']):.4f}")
            if "eval_loss" in logs:
                log.validation.append((step, float(logs["eval_loss"])))
                parts.append(f"validation loss {float(logs['eval_loss']):.4f}")
            if len(parts) == 1:
                return
            eta = elapsed / step * (total - step) if step else math.nan
            parts.append(f"elapsed {_duration(elapsed)}")
            if math.isfinite(eta):
                parts.append(f"eta {_duration(eta)}")
            if stream is not None:
                print("train: " + ", ".join(parts), file=stream, flush=True)

    return _Progress()


# -- determinism ---------------------------------------------------------------------------------


@contextlib.contextmanager
def deterministic(seed: int, threads: int) -> Iterator[None]:
    """Seed Python, numpy and torch; deterministic algorithms and ``threads`` torch threads.

    The previous thread count and deterministic-algorithms flag are restored on exit.
    """
    import torch

    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS, if CUDA runs
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(old_det, warn_only=old_warn)
        torch.set_num_threads(old_threads)


# -- training ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` wrote and measured."""

    out: Path
    record: dict[str, Any]
    pipeline: Any


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _log_every(steps: int) -> int:
    return max(1, min(50, steps // 30))


def _versions() -> dict[str, str]:
    import chronos
    import torch
    import transformers

    from chronoserve import __version__

    return {
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "transformers": str(transformers.__version__),
        "chronos-forecasting": str(getattr(chronos, "__version__", "unknown")),
        "numpy": np.__version__,
        "chronoserve": __version__,
    }


def train(
    settings: TrainSettings,
    out: str | os.PathLike[str],
    *,
    progress: TextIO | None = None,
    command: str | None = None,
    fit: Callable[..., Any] | None = None,
) -> TrainResult:
    """Train from random initialisation with ``settings`` and write the checkpoint to ``out``.

    ``out`` gets ``config.json`` (with a ``chronoserve`` marker: trained here, not random),
    ``model.safetensors`` and ``training.json``. ``out`` may be missing or empty; anything
    else raises :class:`TrainingError` (field ``out``). ``progress`` gets one line per
    logged step. ``command`` is recorded as the command that reproduced the run. ``fit``
    replaces ``Chronos2Pipeline.fit`` (tests use it to see the inputs).
    """
    settings.check()
    target = Path(out).expanduser().absolute()
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise TrainingError("out", f"{target} exists and is not an empty directory")
    sites = load_sites(settings.data, settings.start, settings.train_end, settings.sites)
    held_out: list[SiteData] = []
    if settings.validation:
        context_from = settings.validation_start - timedelta(hours=settings.context_length)
        held_out = load_sites(settings.data, max(settings.start, context_from), settings.end, settings.sites)
    inputs = training_inputs(
        sites,
        settings.variants,
        short_fraction=settings.short_contexts,
        min_length=SEASON + settings.horizon,
        max_length=settings.context_length + settings.horizon,
        seed=settings.seed,
    )
    check_inputs_in_span(sites, settings.train_end)

    def say(message: str) -> None:
        if progress is not None:
            print(message, file=progress, flush=True)

    say(
        f"train: {len(sites)} sites, {settings.start:%Y-%m-%d} to {settings.train_end:%Y-%m-%d %H:%M}, "
        f"{sum(s.hours for s in sites)} site-hours, variants {','.join(settings.variants)}"
    )

    started = time.perf_counter()
    log = LossLog()
    with deterministic(settings.seed, settings.torch_threads), tempfile.TemporaryDirectory() as tmp:
        base = random_pipeline(settings)
        n_params = num_parameters(base)
        say(f"train: Chronos-2 with {n_params:,} parameters, random init (seed {settings.seed})")
        kwargs = _fit_kwargs(settings, tmp, log, progress)
        val = None
        if held_out:
            val = validation_inputs(
                held_out, settings.validation_start, settings.context_length, settings.horizon, stride=24
            )
            kwargs["validation_inputs"] = val
            interval = max(1, settings.steps // 5)
            # Evaluate five times, keep the last weights (no best-checkpoint reload): a validation
            # run trains exactly like the full run, and its curve says whether to stop earlier.
            kwargs.update(eval_steps=interval, save_strategy="no", load_best_model_at_end=False)
        runner = fit if fit is not None else base.fit
        trained = runner(inputs, **kwargs)
        fit_seconds = time.perf_counter() - started
        record = _record(settings, sites, held_out, n_params, log, fit_seconds, len(inputs), len(val or []))
        record["command"] = command
        _write_checkpoint(trained, target, record)
    say(f"train: wrote {target} in {_duration(time.perf_counter() - started)}")
    return TrainResult(out=target, record=record, pipeline=trained)


def check_inputs_in_span(sites: Sequence[SiteData], last: datetime) -> None:
    """The guard on what reaches ``fit``: no site's rows end after ``last`` or in the eval span."""
    for site in sites:
        if site.end > last or site.end >= EVAL_START:
            raise TrainingError("end", f"site {site.name} reaches {site.end}, after {last}")


def _fit_kwargs(settings: TrainSettings, tmp: str, log: LossLog, progress: TextIO | None) -> dict[str, Any]:
    every = _log_every(settings.steps)
    return {
        "prediction_length": settings.horizon,
        "context_length": settings.context_length,
        "learning_rate": settings.learning_rate,
        "num_steps": settings.steps,
        "batch_size": settings.batch_size,
        "output_dir": tmp,
        "min_past": SEASON,
        "callbacks": [progress_callback(settings.steps, log, progress)],
        "remove_printer_callback": True,
        # extra TrainingArguments
        "seed": settings.seed,
        "data_seed": settings.seed,
        "logging_steps": every,
        "disable_tqdm": True,
        "weight_decay": settings.weight_decay,
        "warmup_steps": settings.warmup_ratio,  # transformers 5: a float < 1 is a ratio of the steps
        "lr_scheduler_type": settings.lr_scheduler,
        "save_total_limit": 1,
        **({} if settings.device == "cpu" else {"bf16": False, "tf32": False}),
    }


def _record(
    settings: TrainSettings,
    sites: Sequence[SiteData],
    held_out: Sequence[SiteData],
    n_params: int,
    log: LossLog,
    seconds: float,
    n_inputs: int,
    n_val: int,
) -> dict[str, Any]:
    settings_dict = {k: (v.isoformat(sep=" ") if isinstance(v, datetime) else v) for k, v in asdict(settings).items()}
    settings_dict["variants"] = list(settings.variants)
    if settings.sites is not None:
        settings_dict["sites"] = list(settings.sites)
    per_step = None
    if len(log.step_seconds) >= 2:
        (s0, t0), (s1, t1) = log.step_seconds[0], log.step_seconds[-1]
        per_step = (t1 - t0) / (s1 - s0) if s1 > s0 else None
    return {
        "model": "chronos-2 (small, trained from random initialisation by chronoserve models train)",
        "random_weights": False,
        "settings": settings_dict,
        "data": {
            "sites": [s.name for s in sorted(sites, key=lambda s: s.name)],
            "train_span": [f"{settings.start:%Y-%m-%d %H:%M}", f"{settings.train_end:%Y-%m-%d %H:%M}"],
            "site_hours": int(sum(s.hours for s in sites)),
            "observed_pm25_hours": int(sum(int(np.isfinite(s.values[0]).sum()) for s in sites)),
            "fit_inputs": n_inputs,
            "validation_span": (
                [f"{settings.validation_start:%Y-%m-%d %H:%M}", f"{settings.end:%Y-%m-%d %H:%M}"] if held_out else None
            ),
            "validation_windows": n_val or None,
            "evaluation_span_never_seen": [f"{EVAL_START:%Y-%m-%d %H:%M}", "2016-12-31 23:00"],
        },
        "parameters": n_params,
        "loss": {
            "final_train": log.train[-1][1] if log.train else None,
            "train_curve": [[s, round(v, 6)] for s, v in log.train],
            "validation": min((v for _, v in log.validation), default=None),
            "validation_curve": [[s, round(v, 6)] for s, v in log.validation],
        },
        "wall_seconds": round(seconds, 1),
        "seconds_per_step": round(per_step, 4) if per_step is not None else None,
        "cpu": {"torch_threads": settings.torch_threads, "os_cpus": os.cpu_count(), "machine": platform.machine()},
        "versions": _versions(),
    }


def _write_checkpoint(pipeline: Any, target: Path, record: dict[str, Any]) -> None:
    """``save_pretrained`` into a temporary sibling, add the marker and ``training.json``, rename."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        tmp.chmod(0o755)
        with TRANSFORMERS_LOCK:
            pipeline.save_pretrained(tmp)
        config_path = tmp / CONFIG_FILE
        config = json.loads(config_path.read_text(encoding="utf-8"))
        config[MARKER_KEY] = {
            "random_weights": False,
            "trained_by": "chronoserve models train",
            "seed": record["settings"]["seed"],
            "training": TRAINING_FILE,
        }
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        for extra in tmp.iterdir():  # keep only the checkpoint itself
            if extra.name not in (CONFIG_FILE, WEIGHTS_FILE):
                shutil.rmtree(extra) if extra.is_dir() else extra.unlink()
        record["weights_sha256"] = sha256_file(tmp / WEIGHTS_FILE)
        (tmp / TRAINING_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        for written in tmp.iterdir():  # readable like any checkpoint (safetensors writes 0600)
            written.chmod(0o644)
        if target.exists():
            target.rmdir()  # checked empty by train()
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def read_training_record(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """``training.json`` of the checkpoint at ``path``, or None."""
    try:
        data = json.loads((Path(path) / TRAINING_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# -- scoring on a held-out slice -----------------------------------------------------------------


def score_span(
    pipeline: Any,
    sites: Sequence[SiteData],
    first: datetime,
    *,
    horizon: int,
    context_length: int,
    stride: int = 24,
    variant: str = "past",
    batch_size: int = 256,
    only_first: int | None = None,
) -> dict[str, float]:
    """Mean WQL and MASE of ``pipeline`` and of seasonal naive on rolling windows from ``first``.

    For choosing settings on a held-out slice inside the training span (never on the
    evaluation span). Returns ``wql``, ``mase``, ``rmse`` for the model, the same for
    seasonal naive (``snaive_*``) and naive (``naive_*``), and the geometric means across sites
    of the ratios to seasonal naive (``rel_wql``, ``rel_mase``). ``only_first`` scores only the first
    hours of each ``horizon``-hour forecast.
    """
    from chronoserve.eval.baselines import naive, seasonal_naive
    from chronoserve.eval.metrics import mase, rmse, wql

    levels = list(CHRONOS_2_QUANTILES)
    per_site: dict[str, dict[str, list[float]]] = {}
    for site in sites:
        offset = int((first - site.start) / timedelta(hours=1))
        cuts = list(range(max(offset, context_length), site.hours - horizon + 1, stride))
        if not cuts:
            continue
        inputs = [prepared_input(site.values[:, c - context_length : c], variant, horizon) for c in cuts]
        if variant == "future":
            for item, c in zip(inputs, cuts, strict=True):
                item["future_covariates"][1:] = _torch_tensor(site.values[1:, c : c + horizon])
        preds = pipeline.predict(inputs, prediction_length=horizon, batch_size=batch_size)
        contexts = [_fill(site.values[0, c - context_length : c]) for c in cuts]
        baselines = {"snaive": seasonal_naive(contexts, horizon, levels), "naive": naive(contexts, horizon, levels)}
        scores: dict[str, list[float]] = {
            f"{who}{metric}": [] for who in ("", "snaive_", "naive_") for metric in ("wql", "mase", "rmse")
        }
        n = horizon if only_first is None else min(only_first, horizon)
        for k, c in enumerate(cuts):
            y = site.values[0, c : c + n].astype(np.float64)
            q = preds[k][0].numpy().T.astype(np.float64)[:n]  # (H, Q)
            history = site.values[0, :c]
            median = q[:, levels.index(0.5)]
            scores["wql"].append(wql(y, q, levels))
            scores["mase"].append(mase(y, median, history))
            scores["rmse"].append(rmse(y, median))
            for who, forecasts in baselines.items():
                scores[f"{who}_wql"].append(wql(y, forecasts[k].quantiles[:n], levels))
                scores[f"{who}_mase"].append(mase(y, forecasts[k].median[:n], history))
                scores[f"{who}_rmse"].append(rmse(y, forecasts[k].median[:n]))
        per_site[site.name] = scores
    means = {name: {k: float(np.nanmean(v)) for k, v in s.items()} for name, s in per_site.items()}
    out = {k: float(np.mean([m[k] for m in means.values()])) for k in next(iter(means.values()))}
    for metric in ("wql", "mase"):
        ratios = [m[metric] / m[f"snaive_{metric}"] for m in means.values()]
        out[f"rel_{metric}"] = float(np.exp(np.mean(np.log(ratios))))
    return out


def _fill(x: FloatArray) -> npt.NDArray[np.float64]:
    """Forward-fill NaN (then back-fill the start) for the seasonal-naive baseline."""
    from chronoserve.eval.baselines import fill_gaps

    return fill_gaps(x)


def _torch_tensor(x: FloatArray) -> Any:
    import torch

    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


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


def plot_loss(records: Mapping[str, Mapping[str, Any]], path: str | os.PathLike[str]) -> Path:
    """A PNG of the training (and validation) loss curves of ``training.json`` records, by label.

    The losses are upstream's: the quantile loss summed over the 21 levels, averaged over the
    horizon and over a batch's rows (covariate rows count as zero), on standardised values; so
    validation windows, three quarters covariate rows, score lower than mixed training batches.
    """
    from chronoserve._plotting import pyplot, save

    fig, ax = pyplot().subplots(figsize=(9, 4.8))
    for label, record in records.items():
        loss = record["loss"]
        train_curve = np.asarray(loss["train_curve"], dtype=np.float64).reshape(-1, 2)
        if len(train_curve):
            (line,) = ax.plot(train_curve[:, 0], train_curve[:, 1], lw=1.2, alpha=0.85, label=f"{label}: training")
            val = np.asarray(loss["validation_curve"], dtype=np.float64).reshape(-1, 2)
            if len(val):
                ax.plot(val[:, 0], val[:, 1], "o--", color=line.get_color(), label=f"{label}: held-out validation")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("quantile loss (upstream fit's, standardised units)")
    ax.set_title("chronos-2-pm25: loss while training from random initialisation (2 CPU cores)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.text(
        0.01,
        0.01,
        "Losses average over every row of a batch, and covariate rows count 0: the validation windows\n"
        "(3 covariate rows each) sit lower than the mixed training batches. Compare trends, not levels.",
        fontsize=8,
        color="0.3",
    )
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    return save(fig, out, layout=False)
