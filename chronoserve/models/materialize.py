"""Write random-initialised checkpoints with the published architectures into a local cache.

No machine here reaches a model hub, so :func:`materialize` builds a catalog entry's
architecture with random weights (deterministic from ``seed``) and saves it the way
``save_pretrained`` does: ``config.json`` plus ``model.safetensors``. Latency, memory and
load time are then the real ones; the forecasts are not forecasts. ``config.json`` carries
``"chronoserve": {"random_weights": true, "catalog_name": ..., "seed": ...}`` so anyone
loading the directory can tell.

Writes are atomic: the checkpoint is written to a temporary directory beside the target and
renamed into place, so a concurrent call (thread or process) never sees a half-written one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

from chronoserve.models.catalog import CatalogEntry, catalog_entry
from chronoserve.models.quiet import quiet_third_parties

#: The key of the marker ``materialize`` adds to ``config.json``.
MARKER_KEY = "chronoserve"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"

_locks_guard = threading.Lock()
_locks: dict[str, threading.Lock] = {}

#: Held while a ``transformers`` model is built or loaded in this process. ``from_pretrained``
#: in transformers 5 is not thread-safe: two concurrent loads (even of different checkpoints)
#: can leave tied weights on the meta device ("encoder.embed_tokens.weight MISSING", then
#: "Tensor.item() cannot be called on meta tensors" at inference). Loads are serialised.
TRANSFORMERS_LOCK = threading.RLock()


def cache_dir() -> Path:
    """chronoserve's cache: ``$CHRONOSERVE_CACHE`` if set, else the platform's user cache dir."""
    env = os.environ.get("CHRONOSERVE_CACHE")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("chronoserve"))


def random_checkpoint_dir(name: str, seed: int = 0, cache: str | os.PathLike[str] | None = None) -> Path:
    """Where :func:`materialize` puts ``name``: ``<cache>/models/random/<short-name>/``.

    Seeds other than 0 get their own directory, ``<short-name>-seed<N>``.
    """
    entry = catalog_entry(name)
    root = Path(cache) if cache is not None else cache_dir()
    leaf = entry.name if seed == 0 else f"{entry.name}-seed{seed}"
    return root / "models" / "random" / leaf


def read_marker(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``chronoserve`` marker of the checkpoint at ``path``, or None (no config, no marker)."""
    try:
        with open(Path(path) / CONFIG_FILE, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError):
        return None
    marker = config.get(MARKER_KEY) if isinstance(config, dict) else None
    return marker if isinstance(marker, dict) else None


def is_materialized(path: str | os.PathLike[str], name: str | None = None, seed: int | None = None) -> bool:
    """True if ``path`` holds a complete materialised checkpoint (of ``name`` and ``seed`` if given)."""
    marker = read_marker(path)
    if marker is None or not marker.get("random_weights"):
        return False
    if name is not None and marker.get("catalog_name") != catalog_entry(name).name:
        return False
    if seed is not None and marker.get("seed") != seed:
        return False
    weights = Path(path) / WEIGHTS_FILE
    try:
        return weights.stat().st_size > 8
    except OSError:
        return False


def materialize(name: str, dir: str | os.PathLike[str] | None = None, seed: int = 0) -> Path:
    """Write a random-initialised checkpoint of catalog entry ``name`` and return its directory.

    ``name`` is a catalog short name or hub id, optionally prefixed with ``random/``. ``dir``
    is the checkpoint directory itself (default :func:`random_checkpoint_dir`); it may be
    missing or empty. If it already holds this checkpoint (same name and seed), it is
    returned as it is. The weights are a deterministic function of ``seed``.

    Raises :class:`~chronoserve.errors.UnknownModel` for a name not in the catalog and
    :class:`FileExistsError` if ``dir`` holds something else.
    """
    entry = catalog_entry(name)
    target = Path(dir).expanduser() if dir is not None else random_checkpoint_dir(entry.name, seed)
    target = target.absolute()
    if is_materialized(target, entry.name, seed):
        return target
    with _lock_for(target):
        if is_materialized(target, entry.name, seed):
            return target
        _check_target_free(target, entry, seed)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            tmp.chmod(0o755)  # mkdtemp makes it private; a cache is readable like any other directory
            _write_checkpoint(entry, tmp, seed)
            try:
                os.replace(tmp, target)
            except OSError:
                # Another process won the race (the target is now a non-empty directory).
                if is_materialized(target, entry.name, seed):
                    return target
                raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target


def _lock_for(target: Path) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(str(target), threading.Lock())


def _check_target_free(target: Path, entry: CatalogEntry, seed: int) -> None:
    if not target.exists():
        return
    if not target.is_dir():
        raise FileExistsError(f"{target} exists and is not a directory")
    if any(target.iterdir()):
        marker = read_marker(target)
        what = (
            f"a checkpoint of {marker.get('catalog_name')!r} with seed {marker.get('seed')!r}"
            if marker
            else "other files"
        )
        raise FileExistsError(f"{target} already holds {what}, not {entry.name!r} with seed {seed}")


def _write_checkpoint(entry: CatalogEntry, path: Path, seed: int) -> None:
    import torch

    config = entry.build_config()
    model_class = entry.model_class()
    # Seed a private copy of the CPU RNG: the caller's global RNG state is left untouched.
    with TRANSFORMERS_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(config)
    if entry.checkpoint_dtype != "float32":
        model = model.to(getattr(torch, entry.checkpoint_dtype))
    with TRANSFORMERS_LOCK:
        quiet_third_parties()
        model.save_pretrained(path)
    config_path = path / CONFIG_FILE
    data = json.loads(config_path.read_text(encoding="utf-8"))
    data[MARKER_KEY] = {"random_weights": True, "catalog_name": entry.name, "seed": seed}
    tmp_config = path / (CONFIG_FILE + ".tmp")
    tmp_config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp_config, config_path)
    if not (path / WEIGHTS_FILE).exists():
        raise RuntimeError(f"save_pretrained wrote no {WEIGHTS_FILE} in {path}")
