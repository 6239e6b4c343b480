"""``ChronosLoader``: model names to specs (no torch), specs to loaded Chronos backends.

Names it understands, in this order:

- ``random/<catalog name>`` (``random/chronos-bolt-tiny``, ``random/amazon/chronos-2``, and the
  test-only ``tiny-chronos-*`` entries with or without the prefix): the catalog's architecture
  with random weights, materialised into the cache on first :meth:`~ChronosLoader.load`.
- ``chronos-2-pm25`` (a catalog entry with :attr:`~CatalogEntry.shipped` weights): the checkpoint
  trained here and shipped inside the package, loaded from there (nothing is materialised).
- an existing local directory: a Chronos checkpoint, described from its ``config.json``.
- a catalog short name or hub id (``chronos-bolt-tiny``, ``amazon/chronos-bolt-tiny``): the
  published weights, loaded through ``from_pretrained`` from the hub (or its local cache).
- any other hub id that the local Hugging Face cache holds a ``config.json`` for.

Anything else raises :class:`~chronoserve.errors.UnknownModel`.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from chronoserve import errors
from chronoserve.models.base import CHRONOS_2, CHRONOS_BOLT, CHRONOS_T5, ModelBackend, ModelLoader, ModelSpec
from chronoserve.models.catalog import RANDOM_PREFIX, T5_QUANTILES, CatalogEntry, find_entry
from chronoserve.models.materialize import (
    CONFIG_FILE,
    MARKER_KEY,
    TRANSFORMERS_LOCK,
    WEIGHTS_FILE,
    is_materialized,
    materialize,
    random_checkpoint_dir,
)
from chronoserve.models.materialize import cache_dir as default_cache_dir

#: Bytes per element of the dtypes the loader accepts (int8: dynamic quantisation of the
#: ``Linear`` layers, which hold nearly all of a Chronos model's parameters).
DTYPE_SIZES: Mapping[str, int] = {"float32": 4, "bfloat16": 2, "float16": 2, "int8": 1}
#: What runs the models: eager PyTorch, or ONNX Runtime (see :mod:`chronoserve.models.onnx`).
BACKENDS = ("torch", "onnx")
_PIPELINE_FAMILIES: Mapping[str, str] = {
    "ChronosBoltPipeline": CHRONOS_BOLT,
    "Chronos2Pipeline": CHRONOS_2,
    "ChronosPipeline": CHRONOS_T5,
}
_ARCHITECTURE_FAMILIES: Mapping[str, str] = {
    "ChronosBoltModelForForecasting": CHRONOS_BOLT,
    "Chronos2Model": CHRONOS_2,
}


class ChronosLoader(ModelLoader):
    """Resolves names to :class:`ModelSpec` without torch; loads them with ``from_pretrained``.

    ``device`` and ``dtype`` (``float32``, ``bfloat16``, ``float16``) are passed to
    ``BaseChronosPipeline.from_pretrained``; ``int8`` loads float32 weights and quantises the
    ``Linear`` layers dynamically (torch's ``quantize_dynamic``, or ONNX Runtime's for the onnx
    backend). ``backend`` is what runs the models: ``torch`` (eager PyTorch) or ``onnx`` (ONNX
    Runtime, exported once per model and cached; a model it cannot serve runs on torch, with a
    log line: see :mod:`chronoserve.models.onnx`). ``cache_dir`` is where random checkpoints are
    materialised (default :func:`chronoserve.models.cache_dir`), and ONNX exports of checkpoints
    whose directory is not writable. With ``allow_random=False`` the ``random/`` names are
    refused. ``torch_threads``, if set, is applied with ``torch.set_num_threads`` when a model is
    loaded (never during inference). ``onnx_threads`` is each ONNX Runtime session's intra-op
    thread count (default: ``torch_threads``, else 1; :meth:`EngineSettings.loader` passes the
    torch threads of one engine worker, so both runtimes use the same cores).
    """

    def __init__(
        self,
        device: str = "cpu",
        dtype: str = "float32",
        cache_dir: str | os.PathLike[str] | None = None,
        allow_random: bool = True,
        torch_threads: int | None = None,
        backend: str = "torch",
        onnx_threads: int | None = None,
    ) -> None:
        if dtype not in DTYPE_SIZES:
            raise ValueError(f"dtype must be one of {sorted(DTYPE_SIZES)}, not {dtype!r}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
        for option, value in (("torch_threads", torch_threads), ("onnx_threads", onnx_threads)):
            if value is not None and value < 1:
                raise ValueError(f"{option} must be at least 1, not {value}")
        self.device = device
        self.dtype = dtype
        self.backend = backend
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.allow_random = allow_random
        self.torch_threads = torch_threads
        self.onnx_threads = onnx_threads if onnx_threads is not None else (torch_threads or 1)

    # -- names ---------------------------------------------------------------------------------

    def canonical(self, name: object) -> str:
        """Catalog entries by one spelling: ``random/<short name>`` for random weights (and the
        test-only entries), the short name for published and shipped ones (so ``amazon/chronos-2``
        is ``chronos-2``); other names with ``.``/``..`` and doubled slashes normalised."""
        key = super().canonical(name)
        entry = find_entry(key)
        random = key.startswith(RANDOM_PREFIX)
        if entry is not None:
            return f"{RANDOM_PREFIX}{entry.name}" if random or entry.test_only else entry.name
        if random:
            return key
        return os.path.normpath(key)

    # -- resolve -------------------------------------------------------------------------------

    def resolve(self, name: str) -> ModelSpec:
        """Describe ``name`` without importing torch or reading weights."""
        if not isinstance(name, str) or not name.strip():
            raise errors.UnknownModel(str(name), "model name is empty")
        entry = find_entry(name)
        if name.startswith(RANDOM_PREFIX) or (entry is not None and entry.test_only):
            if entry is None:
                raise errors.UnknownModel(
                    name, f"unknown model {name!r}: random/ needs a catalog name (see `chronoserve models list`)"
                )
            if not self.allow_random:
                raise errors.UnknownModel(name, f"model {name!r} has random weights, and random models are disabled")
            source = random_checkpoint_dir(entry.name, seed=0, cache=self._cache_root())
            return self._spec_from_entry(name, entry, str(source), random_weights=True)
        if entry is not None and entry.shipped is not None:
            return self._spec_from_shipped(name, entry)
        if os.path.isdir(name):
            return self._spec_from_directory(name, Path(name))
        if entry is not None:
            assert entry.hub_id is not None
            return self._spec_from_entry(name, entry, entry.hub_id, random_weights=False)
        cached = _hf_cached_config(name)
        if cached is not None:
            return self._spec_from_config(name, name, _read_json(name, cached), weights=None)
        raise errors.UnknownModel(
            name,
            f"unknown model {name!r}: not a catalog name, a random/<catalog name>, a local checkpoint "
            "directory, or a hub id in the local cache (see `chronoserve models list`)",
        )

    def _cache_root(self) -> Path:
        return self.cache_dir if self.cache_dir is not None else default_cache_dir()

    def _spec_from_entry(self, name: str, entry: CatalogEntry, source: str, *, random_weights: bool) -> ModelSpec:
        extra: dict[str, object] = {
            "catalog_name": entry.name,
            "hub_id": entry.hub_id,
            "dtype": self.dtype,
            "backend": self.backend,
        }
        if random_weights:
            extra["seed"] = 0
        if entry.family == CHRONOS_T5:
            extra["num_samples"] = 20
        return ModelSpec(
            name=name,
            family=entry.family,
            source=source,
            random_weights=random_weights,
            context_length=entry.context_length,
            max_horizon=entry.max_horizon,
            quantiles=entry.quantiles,
            supports_covariates=entry.supports_covariates,
            est_nbytes=entry.num_params * DTYPE_SIZES[self.dtype],
            batch_patch=entry.batch_patch,
            num_params=entry.num_params,
            extra=extra,
        )

    def _spec_from_shipped(self, name: str, entry: CatalogEntry) -> ModelSpec:
        """The checkpoint shipped inside the package for ``entry`` (trained here, not random)."""
        path = entry.shipped_dir()
        assert path is not None
        if not (path / WEIGHTS_FILE).is_file():
            raise errors.UnknownModel(name, f"model {name!r}: its shipped checkpoint is missing from {path}")
        spec = self._spec_from_directory(name, path)
        extra = {**spec.extra, "catalog_name": entry.name, "trained_here": True, "description": entry.description}
        return replace(spec, random_weights=False, extra=extra)

    def _spec_from_directory(self, name: str, path: Path) -> ModelSpec:
        config_path = path / CONFIG_FILE
        if not config_path.is_file():
            raise errors.UnknownModel(name, f"model directory {name!r} has no {CONFIG_FILE}")
        weights = path / WEIGHTS_FILE
        spec = self._spec_from_config(
            name, str(path.absolute()), _read_json(name, config_path), weights if weights.is_file() else None
        )
        check_safetensors_only(name, path)
        return spec

    def _spec_from_config(self, name: str, source: str, config: dict[str, Any], weights: Path | None) -> ModelSpec:
        family = _family_of(config)
        if family is None:
            raise errors.UnknownModel(name, f"{name!r} is not a Chronos checkpoint (no chronos_config in its config)")
        cc = config.get("chronos_config") or {}
        try:
            context_length = int(cc["context_length"])
            if family == CHRONOS_2:
                patch = int(cc["output_patch_size"])
                max_horizon = int(cc.get("max_output_patches", 1)) * patch
                quantiles = tuple(float(q) for q in cc["quantiles"])
            elif family == CHRONOS_BOLT:
                patch = 0
                max_horizon = int(cc["prediction_length"])
                quantiles = tuple(float(q) for q in cc["quantiles"])
            else:
                patch = 0
                max_horizon = int(cc["prediction_length"])
                quantiles = T5_QUANTILES
        except (KeyError, TypeError, ValueError) as e:
            raise errors.UnknownModel(name, f"{name!r} has an invalid chronos_config: {e!r}") from e
        marker = config.get(MARKER_KEY)
        marker = marker if isinstance(marker, dict) else {}
        num_params = _safetensors_numel(weights) if weights is not None else None
        if num_params is not None:
            est_nbytes = num_params * DTYPE_SIZES[self.dtype]
        else:
            est_nbytes = weights.stat().st_size if weights is not None else 0
        extra: dict[str, object] = {"dtype": self.dtype, "backend": self.backend}
        if marker:
            extra["catalog_name"] = marker.get("catalog_name")
            extra["seed"] = marker.get("seed")
        if family == CHRONOS_T5:
            extra["num_samples"] = int(cc.get("num_samples", 20))
        return ModelSpec(
            name=name,
            family=family,
            source=source,
            random_weights=bool(marker.get("random_weights", False)),
            context_length=context_length,
            max_horizon=max_horizon,
            quantiles=quantiles,
            supports_covariates=family == CHRONOS_2,
            est_nbytes=est_nbytes,
            batch_patch=patch or None,
            num_params=num_params,
            extra=extra,
        )

    # -- load ----------------------------------------------------------------------------------

    def load(self, spec: ModelSpec) -> ModelBackend:
        """Load ``spec`` (materialising a random checkpoint first if needed) and wrap it."""
        try:
            if spec.random_weights and not is_materialized(spec.source):
                catalog_name = spec.extra.get("catalog_name")
                if not isinstance(catalog_name, str):
                    raise errors.ModelLoadError(spec.name, f"random checkpoint {spec.source} is missing or incomplete")
                seed = spec.extra.get("seed", 0)
                materialize(catalog_name, dir=spec.source, seed=seed if isinstance(seed, int) else 0)
        except errors.ChronoserveError:
            raise
        except Exception as e:
            raise errors.ModelLoadError(spec.name, f"materialising random weights failed: {e}") from e

        try:
            import torch
            from chronos import BaseChronosPipeline

            if self.torch_threads is not None and torch.get_num_threads() != self.torch_threads:
                torch.set_num_threads(self.torch_threads)
            weights_dtype = "float32" if self.dtype == "int8" else self.dtype  # int8: quantised after loading
            with TRANSFORMERS_LOCK:  # from_pretrained is not thread-safe (see TRANSFORMERS_LOCK)
                pipeline = BaseChronosPipeline.from_pretrained(
                    spec.source,
                    device_map=self.device,
                    dtype=getattr(torch, weights_dtype),
                    use_safetensors=True,  # never unpickle: a pickle can run code (see check_safetensors_only)
                )
        except Exception as e:
            hint = ""
            if not os.path.isdir(spec.source):
                hint = " (a hub id needs network access or a copy in the local Hugging Face cache)"
            raise errors.ModelLoadError(spec.name, f"from_pretrained({spec.source!r}) failed{hint}: {e}") from e

        from chronoserve.models.chronos import wrap_pipeline

        try:
            backend = wrap_pipeline(pipeline, spec)
            if self.backend == "onnx":
                from chronoserve.models.onnx import onnx_backend

                return onnx_backend(backend, dtype=self.dtype, threads=self.onnx_threads, cache_root=self._cache_root())
            if self.dtype == "int8":
                backend.quantize_int8()
        except Exception as e:
            raise errors.ModelLoadError(spec.name, str(e)) from e
        return backend


#: Weight files that are pickles: loading one can run arbitrary code, so chronoserve never does.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def check_safetensors_only(name: str, path: Path) -> None:
    """Refuse a checkpoint directory whose weights are only pickles, naming the file.

    (A directory without any weights resolves; its load then fails with a ``ModelLoadError``.)

    chronoserve loads ``model.safetensors`` (or a sharded ``model.safetensors.index.json``)
    only, and ``from_pretrained`` is called with ``use_safetensors=True`` so transformers
    never falls back to a pickle either.
    """
    if (path / WEIGHTS_FILE).is_file() or (path / f"{WEIGHTS_FILE}.index.json").is_file():
        return
    pickles = sorted(p.name for p in path.iterdir() if p.is_file() and p.name.endswith(PICKLE_SUFFIXES))
    if pickles:
        raise errors.UnknownModel(
            name,
            f"model directory {name!r} holds pickle weights ({', '.join(pickles)}) and no {WEIGHTS_FILE}: "
            "chronoserve loads safetensors only, since unpickling a file can run code in it. Convert it once "
            "where you trust it: `torch.load(..., weights_only=True)` then `safetensors.torch.save_file(...)`.",
        )


def _read_json(name: str, path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise errors.UnknownModel(name, f"cannot read {path}: {e}") from e
    if not isinstance(data, dict):
        raise errors.UnknownModel(name, f"{path} is not a JSON object")
    return data


def _family_of(config: Mapping[str, Any]) -> str | None:
    pipeline_class = config.get("chronos_pipeline_class")
    if isinstance(pipeline_class, str) and pipeline_class in _PIPELINE_FAMILIES:
        return _PIPELINE_FAMILIES[pipeline_class]
    for arch in config.get("architectures") or ():
        if arch in _ARCHITECTURE_FAMILIES:
            return _ARCHITECTURE_FAMILIES[arch]
    if "chronos_config" in config:
        return CHRONOS_T5  # upstream's default pipeline class
    return None


def _safetensors_numel(path: Path) -> int | None:
    """The number of elements in a safetensors file, from its header (no tensor is read)."""
    try:
        with open(path, "rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            if header_len > 100_000_000:
                return None
            header = json.loads(f.read(header_len))
    except (OSError, ValueError, struct.error):
        return None
    total = 0
    for key, info in header.items():
        if key == "__metadata__" or not isinstance(info, dict):
            continue
        shape = info.get("shape")
        if not isinstance(shape, list):
            return None
        total += math.prod(int(d) for d in shape)
    return total


def _hf_cached_config(repo_id: str) -> Path | None:
    """``config.json`` of hub repo ``repo_id`` if the local Hugging Face cache holds it."""
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(parts):
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, CONFIG_FILE)
    except Exception:
        return None
    return Path(found) if isinstance(found, str) else None


__all__ = ["BACKENDS", "DTYPE_SIZES", "ChronosLoader"]
