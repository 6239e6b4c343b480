"""The training run: a random-initialised Chronos-2, upstream ``fit``, progress and determinism.

:func:`train` checks the settings, loads the sites (:mod:`~chronoserve.models.train.data`),
builds the model from random initialisation (:func:`random_pipeline`), runs
``Chronos2Pipeline.fit`` under :func:`deterministic`, logging the loss
(:func:`progress_callback`), and writes the checkpoint
(:func:`~chronoserve.models.train.checkpoint.write_checkpoint`).
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from chronoserve.models.catalog import CHRONOS_2_QUANTILES, chronos2_config
from chronoserve.models.materialize import TRANSFORMERS_LOCK

from .checkpoint import training_record, write_checkpoint
from .data import SiteData, check_inputs_in_span, load_sites, training_inputs, validation_inputs
from .settings import SEASON, TrainingError, TrainSettings

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


def _log_every(steps: int) -> int:
    return max(1, min(50, steps // 30))


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
        record = training_record(
            settings,
            sites,
            held_out,
            n_params=n_params,
            train_curve=log.train,
            validation_curve=log.validation,
            seconds_per_step=_seconds_per_step(log),
            seconds=fit_seconds,
            n_inputs=len(inputs),
            n_val=len(val or []),
        )
        record["command"] = command
        write_checkpoint(trained, target, record)
    say(f"train: wrote {target} in {_duration(time.perf_counter() - started)}")
    return TrainResult(out=target, record=record, pipeline=trained)


def _seconds_per_step(log: LossLog) -> float | None:
    if len(log.step_seconds) < 2:
        return None
    (s0, t0), (s1, t1) = log.step_seconds[0], log.step_seconds[-1]
    return (t1 - t0) / (s1 - s0) if s1 > s0 else None


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
