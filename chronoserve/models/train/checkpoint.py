"""What a training run writes: the checkpoint directory and its ``training.json`` record.

:func:`write_checkpoint` saves the pipeline (``config.json`` with the ``chronoserve`` marker:
trained here, not random; ``model.safetensors``) and ``training.json`` (:func:`training_record`:
every setting, the data span, the loss curves, wall time, versions and the weights' sha256)
into a temporary sibling, then renames it into place. :func:`read_training_record` reads the
record back.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from chronoserve.models.materialize import CONFIG_FILE, MARKER_KEY, TRANSFORMERS_LOCK, WEIGHTS_FILE

from .data import SiteData
from .settings import EVAL_START, TrainSettings

TRAINING_FILE = "training.json"


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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


def training_record(
    settings: TrainSettings,
    sites: Sequence[SiteData],
    held_out: Sequence[SiteData],
    *,
    n_params: int,
    train_curve: Sequence[tuple[int, float]],
    validation_curve: Sequence[tuple[int, float]],
    seconds_per_step: float | None,
    seconds: float,
    n_inputs: int,
    n_val: int,
) -> dict[str, Any]:
    """The ``training.json`` of a run (without ``command`` and ``weights_sha256``, added later)."""
    settings_dict = {k: (v.isoformat(sep=" ") if isinstance(v, datetime) else v) for k, v in asdict(settings).items()}
    settings_dict["variants"] = list(settings.variants)
    if settings.sites is not None:
        settings_dict["sites"] = list(settings.sites)
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
            "final_train": train_curve[-1][1] if train_curve else None,
            "train_curve": [[s, round(v, 6)] for s, v in train_curve],
            "validation": min((v for _, v in validation_curve), default=None),
            "validation_curve": [[s, round(v, 6)] for s, v in validation_curve],
        },
        "wall_seconds": round(seconds, 1),
        "seconds_per_step": round(seconds_per_step, 4) if seconds_per_step is not None else None,
        "cpu": {"torch_threads": settings.torch_threads, "os_cpus": os.cpu_count(), "machine": platform.machine()},
        "versions": _versions(),
    }


def write_checkpoint(pipeline: Any, target: Path, record: dict[str, Any]) -> None:
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
