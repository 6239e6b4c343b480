"""Load a local Chronos checkpoint without ``from_pretrained``: fast, and safe on many threads at once.

``transformers``' ``from_pretrained`` is not thread-safe: while it builds a model it changes
process-wide state (torch's default dtype, ``PreTrainedModel.tie_weights`` swapped for a no-op,
``torch.linspace``, torch's init functions) and restores it afterwards, so two loads at once
restored each other's patches and left tied embeddings on the meta device. The loader therefore
holds :data:`~chronoserve.models.materialize.TRANSFORMERS_LOCK` around it. This module does the
same work for the checkpoints it covers (:func:`read_checkpoint`) with nothing process-wide, so
loads of different models run at once on different threads:

1. The model class upstream's pipeline picks (``ChronosBoltModelForForecasting``,
   ``Chronos2Model``, ``T5ForConditionalGeneration``) is built on the meta device under a torch
   function mode of the calling thread alone (:class:`_MetaBuild`): factory calls land on ``meta``,
   in the requested dtype wherever ``from_pretrained``'s default dtype would have put them. That
   build is Python object construction (9-15 ms for the published sizes, measured), so it runs
   once per checkpoint and dtype: the meta model is kept as a template (the last
   :data:`TEMPLATES` used are kept) and each load takes a clone of it that shares no mutable
   state (:func:`_clone`, 1-3 ms).
2. The safetensors tensors (memory-mapped, as ``from_pretrained`` reads them) are cast to the
   dtype ``from_pretrained`` gives each one (the requested dtype; float32 for the model's
   ``_keep_in_fp32_modules`` at float16, and for ``_keep_in_fp32_modules_strict`` at float16 and
   bfloat16), moved to the device and assigned (``load_state_dict(assign=True, strict=True)``).
3. Tied weights are tied as ``tie_weights`` ties them during ``from_pretrained``
   (``all_tied_weights_keys``; a key missing from the file takes the weight of one that is there;
   two different tensors are left untied, with a log line). Keys matching
   ``_keys_to_ignore_on_load_unexpected`` are skipped; other unknown keys are skipped with a log line.
4. Non-persistent buffers (the quantile levels, Chronos-2's RoPE frequencies) are computed as
   ``from_pretrained`` computes them: by the model's own ``_init_weights``, on those modules
   alone, after every loaded tensor is flagged ``_is_hf_initialized`` (so none is touched).
5. Every parameter and buffer is checked to hold data on the device (:class:`IncompleteModel`
   otherwise); the model goes to eval mode; T5's generation config is read as ``from_pretrained``
   reads it; the pipeline upstream's ``from_pretrained`` returns wraps the model.

A checkpoint missing a weight is refused (:class:`IncompleteCheckpoint`): ``from_pretrained``
would initialise it at random, with a warning. The test suite checks every parameter, buffer,
tie, config entry and forecast against ``from_pretrained``, for each family and dtype.

:func:`assemble` also builds a model from tensors kept in memory (the loader's host tier), and
:func:`meta_pipeline` a pipeline without weights (what an ONNX backend reads its configuration from).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from chronoserve.models.base import CHRONOS_2, CHRONOS_BOLT, CHRONOS_T5
from chronoserve.models.materialize import CONFIG_FILE, WEIGHTS_FILE

logger = logging.getLogger("chronoserve.models")

INDEX_FILE = f"{WEIGHTS_FILE}.index.json"
GENERATION_CONFIG_FILE = "generation_config.json"
ADAPTER_CONFIG_FILE = "adapter_config.json"

#: Upstream's pipeline classes (``chronos_pipeline_class``, default ``ChronosPipeline``): the family
#: and the one model class this module builds for it. Other architectures load through ``from_pretrained``.
PIPELINES: Mapping[str, tuple[str, str]] = {
    "ChronosBoltPipeline": (CHRONOS_BOLT, "ChronosBoltModelForForecasting"),
    "Chronos2Pipeline": (CHRONOS_2, "Chronos2Model"),
    "ChronosPipeline": (CHRONOS_T5, "T5ForConditionalGeneration"),
}

Stamp = tuple[int, int, int, int]
"""A file's size, modification time (ns), inode and device: what tells that it is still the same file."""


class NotCovered(Exception):
    """The checkpoint is one this module does not load (the message says why); ``from_pretrained`` does."""


class IncompleteCheckpoint(ValueError):
    """The checkpoint lacks weights the model needs (``from_pretrained`` would initialise them at random)."""


class IncompleteModel(RuntimeError):
    """A built model still holds tensors without data (on the meta device) or on another device."""


@dataclass(frozen=True)
class Checkpoint:
    """A local checkpoint this module loads: its configuration, as read, and its files.

    Holds no tensor. :meth:`unchanged` tells whether the files are still the ones read.
    """

    source: str
    """The directory as the caller named it (``from_pretrained``'s ``name_or_path``)."""
    family: str
    architecture: str
    """The model class upstream's pipeline builds (a key of :func:`model_class`)."""
    config: Mapping[str, Any]
    """``config.json``."""
    generation: Mapping[str, Any] | None
    """``generation_config.json`` (read for Chronos-T5, if present)."""
    weights: tuple[Path, ...]
    """The safetensors files (one, or the shards of ``model.safetensors.index.json``)."""
    stamps: tuple[tuple[str, Stamp | None], ...]
    """Every file the load reads or looks for, with its :data:`Stamp` (None: absent) when read."""

    def unchanged(self) -> bool:
        """True if every file is still the one read (same stamp), or still absent."""
        return all(file_stamp(Path(name)) == stamp for name, stamp in self.stamps)


@dataclass(frozen=True)
class Assembled:
    """A built pipeline and the tensors assigned into its model (dtype and device as served)."""

    pipeline: Any
    tensors: Mapping[str, torch.Tensor]
    """Checkpoint key to tensor, for every tensor taken from the checkpoint (tied copies and
    skipped keys excepted): given to :func:`assemble` again, they build the same model."""


def file_stamp(path: Path) -> Stamp | None:
    """``path``'s :data:`Stamp`, or None if there is no such file."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)


def read_checkpoint(source: str | os.PathLike[str]) -> Checkpoint:
    """Describe the local checkpoint ``source`` (reads its JSON files, not its weights).

    Raises :class:`NotCovered` for a checkpoint ``from_pretrained`` loads differently: not a
    directory with ``config.json``, a LoRA adapter, a quantisation config, a custom weights file
    name, an architecture other than the three above (or a causal Chronos-T5), or no safetensors
    weights. Raises ``OSError`` or ``ValueError`` for files that cannot be read.
    """
    root = Path(source)
    config_path = root / CONFIG_FILE
    if not config_path.is_file():
        raise NotCovered(f"{root} is not a directory with a {CONFIG_FILE}")
    stamps: dict[Path, Stamp | None] = {root / ADAPTER_CONFIG_FILE: file_stamp(root / ADAPTER_CONFIG_FILE)}
    if stamps[root / ADAPTER_CONFIG_FILE] is not None:
        raise NotCovered(f"it is a LoRA adapter ({ADAPTER_CONFIG_FILE}), which peft merges")
    config = _read_json(config_path, stamps)
    family, architecture = _architecture(config)
    generation = None
    if family == CHRONOS_T5:
        generation_path = root / GENERATION_CONFIG_FILE
        stamps[generation_path] = file_stamp(generation_path)
        if stamps[generation_path] is not None:
            generation = _read_json(generation_path, stamps)
    weights = _weight_files(root, stamps)
    for path in weights:
        stamps[path] = file_stamp(path)
    return Checkpoint(
        source=str(source),
        family=family,
        architecture=architecture,
        config=config,
        generation=generation,
        weights=weights,
        stamps=tuple((str(path), stamp) for path, stamp in stamps.items()),
    )


def read_tensors(checkpoint: Checkpoint) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors on the CPU, memory-mapped from its safetensors files (lazily read)."""
    from safetensors.torch import load_file

    tensors: dict[str, torch.Tensor] = {}
    for path in checkpoint.weights:
        tensors.update(load_file(path, device="cpu"))
    return tensors


def load(source: str | os.PathLike[str], *, dtype: torch.dtype, device: str | torch.device) -> Assembled:
    """Read the checkpoint ``source`` and :func:`assemble` it (``dtype``: a floating torch dtype)."""
    checkpoint = read_checkpoint(source)
    return assemble(checkpoint, read_tensors(checkpoint), dtype=dtype, device=device)


def model_class(architecture: str) -> Any:
    """The model class named ``architecture`` (one of :data:`PIPELINES`'), as upstream imports it."""
    if architecture == "ChronosBoltModelForForecasting":
        from chronos.chronos_bolt import ChronosBoltModelForForecasting

        return ChronosBoltModelForForecasting
    if architecture == "Chronos2Model":
        from chronos.chronos2 import Chronos2Model

        return Chronos2Model
    from transformers import T5ForConditionalGeneration

    return T5ForConditionalGeneration


def assemble(
    checkpoint: Checkpoint,
    tensors: Mapping[str, torch.Tensor],
    *,
    dtype: torch.dtype,
    device: str | torch.device,
) -> Assembled:
    """Build ``checkpoint``'s model from ``tensors`` (its keys to tensors, on any device) and wrap it.

    What ``from_pretrained(checkpoint.source, dtype=dtype, device_map=device)`` returns, parameter
    for parameter and buffer for buffer (see the module docstring), without process-wide state.
    Tensors already in their dtype and on ``device`` are assigned as they are, not copied.
    Raises :class:`IncompleteCheckpoint`, :class:`IncompleteModel`, or what torch raises for a
    tensor of the wrong shape.
    """
    device = torch.device(device)
    model = _build(checkpoint, dtype)
    expected = model.state_dict()  # meta tensors: the keys to fill, in their built dtypes
    kept = _cast(model, expected, tensors, dtype, device, checkpoint.source)
    groups = _tied_groups(model, kept)
    model.load_state_dict(_assignment(expected, kept, groups), strict=True, assign=True)
    _tie(model, groups)
    for tensor in (*model.parameters(), *model.buffers()):
        if not tensor.is_meta:  # the non-persistent buffers are computed next
            tensor._is_hf_initialized = True  # as from_pretrained flags them: _init_weights leaves them alone
    _compute_non_persistent_buffers(model, device)
    check_materialised(model, device)
    model.eval()
    return Assembled(pipeline=_pipeline(checkpoint, model), tensors=kept)


def meta_pipeline(checkpoint: Checkpoint) -> Any:
    """``checkpoint``'s pipeline around a model on the meta device: configuration, no weights.

    For what reads a pipeline's configuration only (an ONNX backend promoted from the host tier).
    """
    return _pipeline(checkpoint, _build(checkpoint, torch.float32))


def check_materialised(model: Any, device: torch.device) -> None:
    """Raise :class:`IncompleteModel` naming every parameter or buffer of ``model`` that is on the
    meta device or on another device than ``device``."""
    wrong = [
        f"{name} ({tensor.device})"
        for name, tensor in (
            *model.named_parameters(remove_duplicate=False),
            *model.named_buffers(remove_duplicate=False),
        )
        if tensor.is_meta or not _same_device(tensor.device, device)
    ]
    if wrong:
        shown = ", ".join(wrong[:5]) + (f" and {len(wrong) - 5} more" if len(wrong) > 5 else "")
        raise IncompleteModel(f"{len(wrong)} tensors hold no data on {device}: {shown}")


# -- building -------------------------------------------------------------------------------


def _build(checkpoint: Checkpoint, dtype: torch.dtype) -> Any:
    """The model on the meta device: a clone of the template built for this checkpoint and dtype."""
    key = (checkpoint.architecture, checkpoint.source, json.dumps(checkpoint.config, sort_keys=True), dtype)
    with _TEMPLATES_LOCK:
        template = _TEMPLATES.get(key)
        if template is not None:
            _TEMPLATES.move_to_end(key)
    if template is None:
        template = _construct(checkpoint, dtype)
        with _TEMPLATES_LOCK:
            _TEMPLATES[key] = template
            while len(_TEMPLATES) > TEMPLATES:
                _TEMPLATES.popitem(last=False)
    return _clone(template, {})


def _construct(checkpoint: Checkpoint, dtype: torch.dtype) -> Any:
    """The model built on the meta device with the configuration ``from_pretrained`` gives it."""
    cls = model_class(checkpoint.architecture)
    config = cls.config_class.from_dict(dict(checkpoint.config))
    config.dtype = dtype
    config.name_or_path = checkpoint.source
    with _MetaBuild(dtype):
        return cls(config)


def clear_templates() -> None:
    """Forget every template (the next load of each checkpoint builds its model again)."""
    with _TEMPLATES_LOCK:
        _TEMPLATES.clear()


#: How many templates are kept (the ones used longest ago are dropped first). A template is the
#: module tree of one checkpoint's model on the meta device: Python objects, no tensor data.
TEMPLATES = 32
_TEMPLATES: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
_TEMPLATES_LOCK = threading.Lock()
_ATOMIC = frozenset({int, float, complex, str, bool, bytes, type(None), torch.dtype, torch.device})
_CONTAINERS = frozenset({dict, OrderedDict, list, set})


def _clone(module: Any, memo: dict[int, Any]) -> Any:
    """A copy of the module tree ``module`` that shares no mutable state with it.

    What constructing it again gives, at a fraction of the cost: each module is a new object of its
    class whose attributes are the original's, with submodules cloned, containers (parameter,
    buffer and hook dictionaries, sets of names) copied, and every other object (configs) deep-copied
    once per clone (``memo``, as ``copy.deepcopy``'s, keeps objects shared within the tree shared).
    Parameters and buffers are the original's meta tensors, which hold no data and are replaced
    (assigned) before the clone is used.
    """
    new = object.__new__(type(module))
    memo[id(module)] = new
    state = module.__dict__.copy()
    for key, value in state.items():
        kind = type(value)
        if kind in _ATOMIC:
            continue
        if key == "_modules":
            state[key] = {name: None if child is None else _cloned(child, memo) for name, child in value.items()}
        elif key in ("_parameters", "_buffers") or (kind in _CONTAINERS and _atomic_items(value)):
            state[key] = value.copy()  # tensors (on meta) and names are shared, not copied
        elif isinstance(value, torch.nn.Module):
            state[key] = _cloned(value, memo)
        else:
            state[key] = copy.deepcopy(value, memo)
    new.__dict__ = state
    return new


def _atomic_items(container: Any) -> bool:
    items = container.values() if isinstance(container, dict) else container
    return all(type(item) in _ATOMIC for item in items)


def _cloned(module: Any, memo: dict[int, Any]) -> Any:
    done = memo.get(id(module))
    return done if done is not None else _clone(module, memo)


def _cast(
    model: Any,
    expected: Mapping[str, torch.Tensor],
    tensors: Mapping[str, torch.Tensor],
    dtype: torch.dtype,
    device: torch.device,
    source: str,
) -> dict[str, torch.Tensor]:
    """The tensors of ``tensors`` the model has, each in its dtype (:func:`_target_dtypes`) and on
    ``device`` (the same tensor where it is already both). Other keys are skipped, with a log line
    unless the model's ``_keys_to_ignore_on_load_unexpected`` names them."""
    target = _target_dtypes(model, expected, dtype)
    ignore = _pattern(model._keys_to_ignore_on_load_unexpected or ())
    kept: dict[str, torch.Tensor] = {}
    skipped: list[str] = []
    for key, tensor in tensors.items():
        if key not in target:
            if ignore is None or ignore.search(key) is None:
                skipped.append(key)
            continue
        kept[key] = tensor.to(device=device, dtype=target[key] if tensor.is_floating_point() else tensor.dtype)
    if skipped:
        logger.warning("%s: %d keys the model does not have were skipped: %s", source, len(skipped), skipped[:5])
    return kept


def _assignment(
    expected: Mapping[str, torch.Tensor], kept: dict[str, torch.Tensor], groups: list[tuple[str, list[str]]]
) -> dict[str, torch.Tensor]:
    """A tensor for every key of the model's state dict: a tied key gets its anchor's.

    Tied keys are removed from ``kept`` (assembled again, they are tied in the same way). Raises
    :class:`IncompleteCheckpoint` naming the keys nothing fills.
    """
    assign = dict(kept)
    for anchor, tied in groups:
        for key in tied:
            assign[key] = kept[anchor]
            kept.pop(key, None)
    missing = sorted(set(expected) - set(assign))
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise IncompleteCheckpoint(
            f"it lacks {len(missing)} weights of the model ({shown}), which from_pretrained would "
            "initialise at random: chronoserve refuses it"
        )
    return assign


def _target_dtypes(model: Any, expected: Mapping[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.dtype]:
    """Every key of ``expected`` (the model's state dict), with the dtype ``from_pretrained`` loads it
    in when it is floating (its ``dtype_plan``: float32 for the modules kept in float32, else the
    built dtype)."""
    keep: set[str] = set()
    if dtype == torch.float16:
        keep |= set(model._keep_in_fp32_modules or ())
    if dtype in (torch.float16, torch.bfloat16):
        keep |= set(model._keep_in_fp32_modules_strict or ())
    fp32 = _pattern(keep)
    return {
        key: torch.float32 if fp32 is not None and fp32.search(key) else tensor.dtype
        for key, tensor in expected.items()
    }


def _tied_groups(model: Any, present: Mapping[str, torch.Tensor]) -> list[tuple[str, list[str]]]:
    """Each group of tied keys as ``(anchor, keys to tie to it)``, as ``tie_weights`` decides.

    The anchor is the group's source key if ``present`` holds it, else its first target that is
    there. A key that is present with another value than the anchor's stays untied (with a log
    line), as ``from_pretrained`` leaves it. Raises :class:`IncompleteCheckpoint` for a group
    none of whose keys is present.
    """
    groups: dict[str, list[str]] = {}
    for tied, source in model.all_tied_weights_keys.items():
        groups.setdefault(source, []).append(tied)
    out: list[tuple[str, list[str]]] = []
    for source, targets in groups.items():
        keys = [source, *targets]
        anchor = next((key for key in keys if key in present), None)
        if anchor is None:
            raise IncompleteCheckpoint(f"it holds none of the tied weights {', '.join(keys)}")
        tied = []
        for key in keys:
            if key == anchor:
                continue
            if key in present and not torch.equal(present[key], present[anchor]):
                logger.warning("%s and %s are tied in the model but differ in the checkpoint: not tied", key, anchor)
                continue
            tied.append(key)
        out.append((anchor, tied))
    return out


def _tie(model: Any, groups: list[tuple[str, list[str]]]) -> None:
    """Make every tied key the same parameter object as its anchor (``tie_weights``' ``setattr``)."""
    for anchor, tied in groups:
        shared = _get(model, anchor)
        for key in tied:
            parent_name, _, name = key.rpartition(".")
            parent = model.get_submodule(parent_name)
            setattr(parent, name, shared)
            model._adjust_bias(parent, shared)


def _compute_non_persistent_buffers(model: Any, device: torch.device) -> None:
    """Give every non-persistent buffer its value, computed by the ``_init_weights`` of the
    ``PreTrainedModel`` that owns its module, in a placeholder of the buffer's built dtype."""
    from transformers.modeling_utils import PreTrainedModel

    def visit(module: Any, owner: Any) -> None:
        if isinstance(module, PreTrainedModel):
            owner = module
        for child in module.children():
            visit(child, owner)
        names = [
            name
            for name, buffer in module._buffers.items()
            if buffer is not None and buffer.is_meta and name in module._non_persistent_buffers_set
        ]
        if names:
            for name in names:
                module._buffers[name] = torch.empty_like(module._buffers[name], device=device)
            owner._init_weights(module)

    with torch.no_grad():
        visit(model, model)


def _pipeline(checkpoint: Checkpoint, model: Any) -> Any:
    """The pipeline upstream's ``from_pretrained`` wraps ``model`` in."""
    if checkpoint.family == CHRONOS_BOLT:
        from chronos import ChronosBoltPipeline

        return ChronosBoltPipeline(model=model)
    if checkpoint.family == CHRONOS_2:
        from chronos import Chronos2Pipeline

        return Chronos2Pipeline(model=model)
    from chronos import ChronosConfig, ChronosModel, ChronosPipeline
    from transformers import GenerationConfig

    # As GenerationMixin.adjust_generation_fn reads it: the file if there is one, else the model config.
    if checkpoint.generation is not None:
        generation = GenerationConfig.from_dict(dict(checkpoint.generation))
        generation._original_object_hash = hash(generation)
    else:
        generation = GenerationConfig.from_model_config(dict(checkpoint.config))
    model.generation_config = generation
    chronos_config = ChronosConfig(**checkpoint.config["chronos_config"])
    return ChronosPipeline(
        tokenizer=chronos_config.create_tokenizer(), model=ChronosModel(config=chronos_config, model=model)
    )


# Factories whose result takes the default dtype whenever no dtype is given.
_FLOAT_FACTORIES: frozenset[Callable[..., Any]] = frozenset(
    {
        torch.empty,
        torch.empty_strided,
        torch.empty_permuted,
        torch.zeros,
        torch.ones,
        torch.rand,
        torch.randn,
        torch.eye,
        torch.linspace,
        torch.logspace,
    }
)


class _MetaBuild(TorchFunctionMode):  # type: ignore[misc]  # torch is not analysed
    """While a model is built: factories put tensors on the meta device, in ``dtype`` where the
    default dtype would apply (``from_pretrained`` sets the default dtype, process-wide; this mode
    is the calling thread's alone, as ``with torch.device("meta")`` is, which it extends)."""

    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        from torch.utils._device import _device_constructors  # what `with torch.device(...)` reroutes

        self.dtype = dtype
        self.constructors = _device_constructors()

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = dict(kwargs or {})
        if func not in self.constructors:
            return func(*args, **kwargs)
        if kwargs.get("device") is None:
            kwargs["device"] = "meta"
        if kwargs.get("dtype") is None:
            if func in _FLOAT_FACTORIES:
                kwargs["dtype"] = self.dtype
            else:  # arange, full, tensor, ...: floating only for floating Python arguments
                out = func(*args, **kwargs)
                if not (out.is_floating_point() and _python_numbers(args)):
                    return out
                kwargs["dtype"] = self.dtype
        return func(*args, **kwargs)


def _python_numbers(values: Iterable[Any]) -> bool:
    """True if ``values`` are Python numbers, or lists and tuples of them, all the way down."""
    return all(type(v) in (int, float, bool) or (isinstance(v, (list, tuple)) and _python_numbers(v)) for v in values)


# -- reading ---------------------------------------------------------------------------------


def _architecture(config: Mapping[str, Any]) -> tuple[str, str]:
    """The family and model class upstream's ``BaseChronosPipeline.from_pretrained`` picks for ``config``."""
    if "chronos_pipeline_class" not in config and "chronos_config" not in config:
        raise NotCovered("its config is not a Chronos config")
    for key in ("quantization_config", "transformers_weights"):
        if key in config:
            raise NotCovered(f"its config sets {key}")
    pipeline = config.get("chronos_pipeline_class", "ChronosPipeline")
    if pipeline not in PIPELINES:
        raise NotCovered(f"its pipeline class {pipeline!r} is not one of {', '.join(PIPELINES)}")
    family, architecture = PIPELINES[pipeline]
    if family == CHRONOS_T5:
        model_type = (config.get("chronos_config") or {}).get("model_type", "seq2seq")
        if config.get("model_type") != "t5" or model_type != "seq2seq":
            raise NotCovered(f"a Chronos-T5 of model type {config.get('model_type')!r}/{model_type!r}")
    else:
        found = (config.get("architectures") or [None])[0]
        if found != architecture:
            raise NotCovered(f"its architecture {found!r} is not {architecture}")
    return family, architecture


def _weight_files(root: Path, stamps: dict[Path, Stamp | None]) -> tuple[Path, ...]:
    """The safetensors files, as ``from_pretrained(use_safetensors=True)`` picks them."""
    single = root / WEIGHTS_FILE
    stamps[single] = file_stamp(single)
    if stamps[single] is not None:
        return (single,)
    index = root / INDEX_FILE
    stamps[index] = file_stamp(index)
    if stamps[index] is None:
        raise NotCovered(f"it has no {WEIGHTS_FILE} nor {INDEX_FILE}")
    weight_map = _read_json(index, stamps).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(f"{index} has no weight_map")
    names = sorted(set(weight_map.values()))
    for name in names:
        if not isinstance(name, str) or Path(name).name != name or name in (".", ".."):
            raise ValueError(f"{index} names a shard outside its directory: {name!r}")
    return tuple(root / name for name in names)


def _read_json(path: Path, stamps: dict[Path, Stamp | None]) -> dict[str, Any]:
    stamps[path] = file_stamp(path)
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a JSON object")
    return data


def _pattern(patterns: Iterable[str]) -> re.Pattern[str] | None:
    """One regular expression for ``patterns`` (``*`` as ``.*``), searched as transformers does."""
    parts = [p.replace("*", ".*") for p in patterns]
    return re.compile("|".join(f"(?:{p})" for p in parts)) if parts else None


def _get(model: Any, key: str) -> Any:
    parent, _, name = key.rpartition(".")
    return getattr(model.get_submodule(parent), name)


def _same_device(actual: torch.device, wanted: torch.device) -> bool:
    """``cuda`` (the current device) matches ``cuda:0``; otherwise type and index."""
    return actual.type == wanted.type and (wanted.index is None or actual.index == wanted.index)


__all__ = [
    "PIPELINES",
    "Assembled",
    "Checkpoint",
    "IncompleteCheckpoint",
    "IncompleteModel",
    "NotCovered",
    "assemble",
    "check_materialised",
    "clear_templates",
    "file_stamp",
    "load",
    "meta_pipeline",
    "model_class",
    "read_checkpoint",
    "read_tensors",
]
