"""``ChronosLoader``: model names to specs (no torch), specs to loaded Chronos backends.

Names it understands, in this order:

- ``random/<catalog name>`` (``random/chronos-bolt-tiny``, ``random/amazon/chronos-2``, and the
  test-only ``tiny-chronos-*`` entries with or without the prefix): the catalog's architecture
  with random weights, materialised into the cache on first :meth:`~ChronosLoader.load`;
  ``random/<catalog name>@<seed>`` another draw of them (seed 0 is the name without ``@``).
- ``chronos-2-pm25`` (a catalog entry with :attr:`~CatalogEntry.shipped` weights): the checkpoint
  trained here and shipped inside the package, loaded from there (nothing is materialised).
- an existing local directory: a Chronos checkpoint, described from its ``config.json``.
- a catalog short name or hub id (``chronos-bolt-tiny``, ``amazon/chronos-bolt-tiny``): the
  published weights, loaded through ``from_pretrained`` from the local Hugging Face cache, or
  downloaded from the hub where ``allow_hub`` allows it (:mod:`chronoserve.models.hub`).
- any other hub id that the local Hugging Face cache holds a ``config.json`` for, or that
  ``allow_hub`` names (or ``*``).

Anything else raises :class:`~chronoserve.errors.UnknownModel`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import struct
import threading
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chronoserve import errors
from chronoserve.models.base import (
    CHRONOS_2,
    CHRONOS_BOLT,
    CHRONOS_T5,
    HostCopy,
    ModelBackend,
    ModelLoader,
    ModelSpec,
)
from chronoserve.models.catalog import RANDOM_PREFIX, T5_QUANTILES, CatalogEntry, find_entry, random_seed
from chronoserve.models.hub import HubAccess, cached_config, cached_weights, looks_like_hub_id
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
from chronoserve.models.quiet import quiet_third_parties

if TYPE_CHECKING:
    from chronoserve.models.fastload import Checkpoint
    from chronoserve.models.onnx import VerifiedExport

logger = logging.getLogger("chronoserve.models")

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
    """Resolves names to :class:`ModelSpec` without torch; loads them; keeps evicted ones in host memory.

    Local checkpoints (random, shipped, directories) load through :mod:`~chronoserve.models.fastload`
    (no ``from_pretrained``, no lock: loads of different models run at once on different threads);
    hub ids and what fastload does not cover through ``BaseChronosPipeline.from_pretrained``, one at
    a time (see :meth:`load`). The host tier: :meth:`offload` keeps an evicted model's tensors (or
    an ONNX backend's verified export) and :meth:`load` promotes them (see :meth:`offload`);
    :meth:`tier` says where a model not held there loads from.

    ``device`` and ``dtype`` (``float32``, ``bfloat16``, ``float16``) are the weights' as
    ``from_pretrained(device_map=device, dtype=dtype)`` gives them; ``int8`` loads float32 weights
    and quantises the ``Linear`` layers dynamically (torch's ``quantize_dynamic``, or ONNX
    Runtime's for the onnx backend). ``backend`` is what runs the models: ``torch`` (eager
    PyTorch) or ``onnx`` (ONNX Runtime, exported once per model and cached; a model it cannot
    serve runs on torch, with a log line: see :mod:`chronoserve.models.onnx`). ``cache_dir`` is
    where random checkpoints are materialised (default :func:`chronoserve.models.cache_dir`), and
    ONNX exports of checkpoints whose directory is not writable. With ``allow_random=False`` the
    ``random/`` names are refused. ``torch_threads``, if set, is applied with
    ``torch.set_num_threads`` when a model is loaded (never during inference). ``onnx_threads`` is
    each ONNX Runtime session's intra-op thread count (default: ``torch_threads``, else 1;
    :meth:`EngineSettings.loader` passes the torch threads of one engine worker, so both runtimes
    use the same cores). ``fastload=False`` loads every model through ``from_pretrained``, as
    before fastload (to compare; no host tier). ``allow_hub`` is which hub ids may be downloaded
    (:meth:`HubAccess.of`: none by default, ``True`` or ``"*"`` any); others are refused at
    :meth:`resolve` unless the local Hugging Face cache holds them.
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
        fastload: bool = True,
        allow_hub: bool | str | tuple[str, ...] | None = None,
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
        self.fastload = fastload
        self.hub = HubAccess.of(allow_hub)
        # How each live backend it loaded from a local checkpoint was built (for offload).
        self._kept: weakref.WeakKeyDictionary[ModelBackend, HostWeights] = weakref.WeakKeyDictionary()
        self._kept_lock = threading.Lock()

    # -- names ---------------------------------------------------------------------------------

    def canonical(self, name: object) -> str:
        """Catalog entries by one spelling: ``random/<short name>`` for random weights (and the
        test-only entries), the short name for published and shipped ones (so ``amazon/chronos-2``
        is ``chronos-2``); other names with ``.``/``..`` and doubled slashes normalised."""
        key = super().canonical(name)
        entry = find_entry(key)
        random = key.startswith(RANDOM_PREFIX)
        if entry is not None:
            _, seed = random_seed(key)
            suffix = f"@{seed}" if seed else ""
            return f"{RANDOM_PREFIX}{entry.name}{suffix}" if random or entry.test_only else entry.name
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
            _, seed = random_seed(name)
            source = random_checkpoint_dir(entry.name, seed=seed, cache=self._cache_root())
            return self._spec_from_entry(name, entry, str(source), random_weights=True, seed=seed)
        if entry is not None and entry.shipped is not None:
            return self._spec_from_shipped(name, entry)
        if os.path.isdir(name):
            return self._spec_from_directory(name, Path(name))
        if entry is not None:
            assert entry.hub_id is not None
            if not self.hub.allows(entry.hub_id, entry.name) and not cached_weights(entry.hub_id):
                raise self.hub.refusal(name, entry.hub_id)
            return self._spec_from_entry(name, entry, entry.hub_id, random_weights=False)
        cached = cached_config(name)
        if cached is None and looks_like_hub_id(name) and self.hub.allows(name):
            try:
                cached = self.hub.fetch_config(name)
            except errors.ModelLoadError as exc:  # offline: said at once, naming the field
                raise errors.UnknownModel(name, exc.message.replace("it needs", f"{name!r} needs")) from None
        if cached is not None:
            return self._spec_from_config(name, name, _read_json(name, cached), weights=None)
        raise errors.UnknownModel(
            name,
            f"unknown model {name!r}: not a catalog name, a random/<catalog name>, a local checkpoint "
            "directory, or a hub id in the local cache (see `chronoserve models list`)",
        )

    def _cache_root(self) -> Path:
        return self.cache_dir if self.cache_dir is not None else default_cache_dir()

    def _spec_from_entry(
        self, name: str, entry: CatalogEntry, source: str, *, random_weights: bool, seed: int = 0
    ) -> ModelSpec:
        extra: dict[str, object] = {
            "catalog_name": entry.name,
            "hub_id": entry.hub_id,
            "dtype": self.dtype,
            "backend": self.backend,
        }
        if random_weights:
            extra["seed"] = seed
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

    def import_modules(self) -> None:
        """Import what a load needs: torch, transformers' model code and chronos (all three through
        ``import chronos``, whose package imports every family), safetensors and chronoserve's
        backends; for the onnx backend also ONNX Runtime and the exporter's packages (when installed).

        Nothing here is avoidable without changing upstream: ``chronos/__init__.py`` imports
        its three pipelines, and with them pandas, and transformers' ``modeling_utils`` (scipy
        through its loss functions, sympy through ``torch.distributed.tensor``).
        """
        quiet_third_parties()
        import chronos  # noqa: F401
        import safetensors.torch  # noqa: F401

        import chronoserve.models.chronos
        import chronoserve.models.fastload

        if self.backend == "onnx":
            import chronoserve.models.onnx  # noqa: F401

            for module in ("onnxruntime", "onnx", "onnxscript"):
                with contextlib.suppress(ImportError):  # the first load says so, and serves on torch
                    __import__(module)

    def load(self, spec: ModelSpec, host: HostCopy | None = None) -> ModelBackend:
        """Load ``spec`` and wrap it in the backend of its family (raises :class:`~chronoserve.errors.ModelLoadError`).

        ``host``: a copy :meth:`offload` made; the model is built from it (no read from disk) if
        its checkpoint's files are still the ones it was read from, else loaded from disk (with a
        log line). Otherwise a random checkpoint is materialised first if needed, then:

        - a local checkpoint that :mod:`chronoserve.models.fastload` covers (Bolt, Chronos-2 and
          seq2seq Chronos-T5 in safetensors: the random, shipped and local directories) is built
          by it, without ``from_pretrained`` and without a lock, so loads of different models run
          at once. A failure there raises, with no second try through ``from_pretrained``: a
          checkpoint fastload refuses (a weight missing, a shape that differs) is not served
          another way;
        - anything else (hub ids, LoRA adapters, causal T5, other architectures) goes through
          ``BaseChronosPipeline.from_pretrained`` under
          :data:`~chronoserve.models.materialize.TRANSFORMERS_LOCK`, one load at a time.
        """
        if host is not None:
            promoted = self._promote(spec, host)
            if promoted is not None:
                return promoted
        self._materialise(spec)
        weights_dtype = self._weights_dtype(spec)
        checkpoint = self._checkpoint(spec)
        if checkpoint is None:
            return self._serve(spec, self._from_pretrained(spec, weights_dtype), None, None)
        import chronoserve.models.fastload as fastload

        try:
            assembled = fastload.assemble(
                checkpoint, fastload.read_tensors(checkpoint), dtype=weights_dtype, device=self.device
            )
        except Exception as e:
            raise errors.ModelLoadError(spec.name, f"loading {spec.source} failed: {e}") from e
        return self._serve(spec, assembled.pipeline, checkpoint, assembled.tensors)

    def offload(self, backend: ModelBackend) -> HostCopy | None:
        """The host-tier copy of ``backend``, a model this loader loaded from a local checkpoint.

        - torch: its state dict's tensors, shared (for a model on another device than the CPU,
          copied into CPU memory, pinned for CUDA), with the checkpoint's configuration and files'
          stamps; ``nbytes`` counts each tensor once. On the CPU a float32 checkpoint's tensors are
          the file's memory map, as ``from_pretrained`` leaves them (no copy: clean page cache);
        - torch int8: the float32 tensors it was quantised from (held, while it is resident, for
          this: for a float32 checkpoint on the CPU they are that same memory map), quantised again
          at promotion, which ``quantize_dynamic`` does identically;
        - onnx: no weights (``nbytes`` 0): the verified export (its file, stamp and key), so
          promotion opens it again without hashing the weights or probing parity. A model the
          onnx backend could not serve (it runs on torch) is kept and promoted as a torch one,
          without trying ONNX again.

        A promotion checks first that the checkpoint's files (and an export) are still the ones
        read (size, modification time, inode: :meth:`~chronoserve.models.fastload.Checkpoint.unchanged`),
        and that the loader's device, dtype and backend are the same; otherwise the model loads from disk.

        None for a model loaded through ``from_pretrained`` (a hub id: its host tier is the
        Hugging Face cache) and for a backend this loader did not load.
        """
        with self._kept_lock:
            kept = self._kept.pop(backend, None)
        if kept is None:
            return None
        if kept.export is not None:
            return HostCopy(backend.spec.name, 0, kept)
        tensors = kept.tensors if kept.tensors is not None else _state_tensors(backend)
        if tensors is None:
            return None
        host_tensors = _to_host(tensors)
        return HostCopy(backend.spec.name, _tensors_nbytes(host_tensors), replace(kept, tensors=host_tensors))

    def tier(self, spec: ModelSpec) -> str:
        """``disk`` for a local directory (shipped, materialised or still to materialise: random
        checkpoints are written locally) and a hub id whose config and weights the local Hugging
        Face cache holds; ``hub`` for a hub id that needs a download. Stats files (and reads a sharded
        hub checkpoint's index)."""
        if spec.random_weights or os.path.isdir(spec.source):
            return "disk"
        return "disk" if cached_weights(spec.source) else "hub"

    def _promote(self, spec: ModelSpec, host: HostCopy) -> ModelBackend | None:
        """The backend built from ``host``, or None if the copy is stale (then loaded from disk)."""
        kept = host.payload
        if host.model != spec.name or not isinstance(kept, HostWeights):
            raise errors.ModelLoadError(spec.name, f"promoted from a copy that is not this model's ({host.model})")
        stale = kept.stale(spec, self._settings())
        if stale is not None:
            logger.info("%s: its host copy is stale (%s): loading it from disk", spec.name, stale)
            return None
        weights_dtype = self._weights_dtype(spec)
        import chronoserve.models.fastload as fastload

        try:
            if kept.export is not None:
                from chronoserve.models.onnx import promote

                promoted = promote(
                    fastload.meta_pipeline(kept.checkpoint), spec, kept.export, threads=self.onnx_threads
                )
                if promoted is None:
                    logger.info("%s: its ONNX export changed since it was checked: loading it from disk", spec.name)
                    return None
                self._remember(promoted, kept.checkpoint, None)
                return promoted
            assert kept.tensors is not None
            assembled = fastload.assemble(kept.checkpoint, kept.tensors, dtype=weights_dtype, device=self.device)
            from chronoserve.models.chronos import wrap_pipeline

            backend = wrap_pipeline(assembled.pipeline, spec)
            if kept.int8:
                backend.quantize_int8()
        except Exception as e:
            raise errors.ModelLoadError(spec.name, f"promoting its host copy failed: {e}") from e
        self._remember(backend, kept.checkpoint, assembled.tensors)
        return backend

    def _materialise(self, spec: ModelSpec) -> None:
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

    def _weights_dtype(self, spec: ModelSpec) -> Any:
        """The torch dtype the weights load in (float32 for int8: quantised after loading), with
        ``torch_threads`` applied."""
        try:
            import torch
        except Exception as e:
            raise errors.ModelLoadError(spec.name, f"importing torch failed: {e}") from e
        if self.torch_threads is not None and torch.get_num_threads() != self.torch_threads:
            torch.set_num_threads(self.torch_threads)
        return getattr(torch, "float32" if self.dtype == "int8" else self.dtype)

    def _checkpoint(self, spec: ModelSpec) -> Checkpoint | None:
        """``spec``'s checkpoint if :mod:`~chronoserve.models.fastload` loads it, else None."""
        if not self.fastload or not os.path.isdir(spec.source):
            return None  # a hub id, or fastload turned off
        import chronoserve.models.fastload as fastload

        try:
            return fastload.read_checkpoint(spec.source)
        except fastload.NotCovered as e:
            logger.info("%s: loads through from_pretrained: %s", spec.name, e)
            return None
        except Exception as e:
            raise errors.ModelLoadError(spec.name, f"reading {spec.source} failed: {e}") from e

    def _from_pretrained(self, spec: ModelSpec, dtype: Any) -> Any:
        quiet_third_parties()
        local = os.path.isdir(spec.source) or cached_weights(spec.source)
        if not local:  # a download: only where allowed, and only if the hub can be reached at all
            hub_id = str(spec.extra.get("hub_id") or spec.source)
            if not self.hub.allows(spec.source, hub_id, str(spec.extra.get("catalog_name"))):
                raise errors.ModelLoadError(spec.name, self.hub.refusal(spec.name, hub_id).message, permanent=True)
            self.hub.check_reachable(spec.name)
        try:
            from chronos import BaseChronosPipeline

            with TRANSFORMERS_LOCK:  # from_pretrained is not thread-safe (see TRANSFORMERS_LOCK)
                return BaseChronosPipeline.from_pretrained(
                    spec.source,
                    device_map=self.device,
                    dtype=dtype,
                    use_safetensors=True,  # never unpickle: a pickle can run code (see check_safetensors_only)
                    local_files_only=local,  # what the cache holds loads without the network
                )
        except Exception as e:
            hint = ""
            if not os.path.isdir(spec.source):
                hint = " (a hub id needs network access or a copy in the local Hugging Face cache)"
            raise errors.ModelLoadError(spec.name, f"from_pretrained({spec.source!r}) failed{hint}: {e}") from e

    def _serve(
        self, spec: ModelSpec, pipeline: Any, checkpoint: Checkpoint | None, tensors: Mapping[str, Any] | None
    ) -> ModelBackend:
        """Wrap ``pipeline`` in the backend that serves it (onnx, int8) and remember how it was built."""
        from chronoserve.models.chronos import wrap_pipeline

        try:
            backend = wrap_pipeline(pipeline, spec)
            served: ModelBackend = backend
            if self.backend == "onnx":
                from chronoserve.models.onnx import onnx_backend

                served = onnx_backend(
                    backend, dtype=self.dtype, threads=self.onnx_threads, cache_root=self._cache_root()
                )
            elif self.dtype == "int8":
                backend.quantize_int8()
        except Exception as e:
            raise errors.ModelLoadError(spec.name, str(e)) from e
        if checkpoint is not None:
            self._remember(served, checkpoint, tensors)
        return served

    def _remember(self, backend: ModelBackend, checkpoint: Checkpoint, tensors: Mapping[str, Any] | None) -> None:
        """Note what :meth:`offload` will keep of ``backend``: an ONNX backend's verified export; an
        int8 torch backend's float tensors (``tensors``); for a float torch backend nothing more
        (its state dict, read at eviction)."""
        export = getattr(backend, "verified", None)  # an OnnxBackend's (not imported for torch loaders)
        if backend.backend == "onnx" and export is None:
            return
        int8 = export is None and backend.dtype == "int8"
        kept = HostWeights(
            source=backend.spec.source,
            settings=self._settings(),
            checkpoint=checkpoint,
            tensors=tensors if int8 else None,
            int8=int8,
            export=export,
        )
        with self._kept_lock:
            self._kept[backend] = kept

    def _settings(self) -> tuple[str, str, str]:
        return (self.device, self.dtype, self.backend)


@dataclass(frozen=True)
class HostWeights:
    """:class:`ChronosLoader`'s host-tier payload (:attr:`HostCopy.payload`): how to build a model again.

    ``tensors`` is None for an ONNX backend, which keeps ``export`` instead; ``int8``: quantise
    the float tensors after building.
    """

    source: str
    settings: tuple[str, str, str]
    """The loader's device, dtype and backend when the model was loaded."""
    checkpoint: Checkpoint
    tensors: Mapping[str, Any] | None
    int8: bool
    export: VerifiedExport | None

    def stale(self, spec: ModelSpec, settings: tuple[str, str, str]) -> str | None:
        """Why a load from disk would not build what this copy builds, or None."""
        if spec.source != self.source:
            return f"it was made from {self.source}"
        if settings != self.settings:
            return f"it was made with device, dtype and backend {self.settings}"
        if not self.checkpoint.unchanged():
            return "the checkpoint's files changed"
        return None


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


def _state_tensors(backend: ModelBackend) -> dict[str, Any] | None:
    """A torch backend's state dict with each tensor once (a tied key's copies dropped), or None."""
    model = getattr(backend, "model", None)
    if model is None:
        return None
    seen: set[tuple[Any, ...]] = set()
    out: dict[str, Any] = {}
    for key, tensor in model.state_dict().items():
        storage = tensor.untyped_storage().data_ptr()
        same = (storage, tensor.storage_offset(), tensor.shape, tensor.stride(), tensor.dtype)
        if same not in seen:
            seen.add(same)
            out[key] = tensor
    return out


def _to_host(tensors: Mapping[str, Any]) -> dict[str, Any]:
    """``tensors`` in CPU memory: the same tensors where they are there, else copies (pinned for CUDA)."""
    import torch

    out: dict[str, Any] = {}
    for key, tensor in tensors.items():
        if tensor.device.type == "cpu":
            out[key] = tensor
        elif tensor.is_cuda:
            out[key] = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True).copy_(tensor)
        else:
            out[key] = tensor.detach().to("cpu")
    return out


def _tensors_nbytes(tensors: Mapping[str, Any]) -> int:
    return int(sum(t.numel() * t.element_size() for t in tensors.values()))


__all__ = ["BACKENDS", "DTYPE_SIZES", "ChronosLoader", "HostWeights"]
