"""Export Chronos-Bolt and Chronos-2 to ONNX once per model, and find the export again.

One export per model serves every batch size, context length and (Chronos-2) number of output
patches: the batch, the context (in whole input patches) and the future (in whole output
patches) are dynamic axes. It is made with the dynamo exporter (``torch.export`` then
``torch.onnx.export``) from a deep copy of the inner model in eval mode, so nothing the
exporter does (a failed export once left a module in training mode) reaches the model that
serves. Three things needed care, each measured here:

- the copy runs T5 attention as ``eager``: with SDPA the exporter mis-reshapes the attention
  output once the length is dynamic;
- the context width is a multiple of the input patch size (at least two patches): the model's
  own ``length % patch`` branch is resolved while tracing, and a graph traced on one width
  drops the remainder of another (answers moved 3e-5 relative). The ONNX backends NaN-pad
  the left of every batch to such a width (:func:`patch_width`), which the model itself would
  do, so answers stay within float rounding;
- Chronos-2 checks its masked future covariates for NaN (``if torch.isnan(x).any()``), a
  data-dependent branch that ``torch.export`` cannot trace. The check can never fire there (the
  values were just masked with ``where(isnan, 0, x)``), so during the export ``any()`` of a
  ``torch.isnan`` result is answered False (:class:`_AssumeNoNaN`). Its group mask is an
  ``einsum`` of a bool and a float tensor, which ONNX's ``Einsum`` refuses: it is translated
  with both cast to float, as torch promotes them.

The file is cached beside the checkpoint (``<checkpoint>/onnx/``) when that directory is
writable, else under chronoserve's cache (``<cache>/onnx/``), named by :func:`export_key`: a
hash of everything the export depends on (weights, config, family, the torch, transformers,
chronos, onnx, onnxscript and onnxruntime versions, the opset and :data:`EXPORTER_VERSION`).
Writes are atomic (a temporary file beside the target, renamed into place), so a process that
exports while another does never reads half a file; both write the same bytes.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib.metadata
import json
import logging
import os
import threading
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from chronoserve._files import write_atomic
from chronoserve.models.base import CHRONOS_2, CHRONOS_BOLT

#: Bump when the export's code changes what it writes: old files are then never read again.
EXPORTER_VERSION = 1
#: The ONNX opset of the export (torch 2.13's exporter library targets 18).
OPSET = 18
#: How ``--dtype int8`` quantises an export (``onnxruntime.quantization.quantize_dynamic``).
INT8_OPTIONS: Mapping[str, object] = {
    "pre_process": "onnx shapes, optimised",
    "weight_type": "QInt8",
    "per_channel": False,
    "reduce_range": False,
}
#: The families this module exports; Chronos-T5 samples through ``generate`` and is not exported.
FAMILIES = (CHRONOS_BOLT, CHRONOS_2)
#: Each family's ONNX input names, in order; the output is ``quantile_preds``.
INPUTS: Mapping[str, tuple[str, ...]] = {
    CHRONOS_BOLT: ("context",),
    CHRONOS_2: ("context", "group_ids", "future_covariates"),
}
_VERSIONED = ("torch", "transformers", "chronos-forecasting", "onnx", "onnxscript", "onnxruntime")

_locks_guard = threading.Lock()
_locks: dict[str, threading.Lock] = {}


class ExportError(Exception):
    """The model could not be exported (the message says which step failed)."""


def patch_width(width: int, patch: int) -> int:
    """The width a batch of contexts is NaN-padded to on the left: whole patches, at least two."""
    return max(2, -(-width // patch)) * patch


def export_key(model: Any, family: str) -> str:
    """A hash of everything an export of ``model`` depends on (32 hex digits).

    The weights byte for byte (every tensor of the state dict with its name, dtype and shape),
    the config, the family, the versions of the packages that trace, export and run it, the
    opset and :data:`EXPORTER_VERSION`. Changing any of them names another file.
    """
    digest = hashlib.blake2b(digest_size=16)
    config = {k: v for k, v in model.config.to_dict().items() if k != "_name_or_path"}  # where it was read from
    header = {
        "family": family,
        "config": config,
        "versions": {name: _version(name) for name in _VERSIONED},
        "opset": OPSET,
        "exporter": EXPORTER_VERSION,
    }
    digest.update(json.dumps(header, sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        if not isinstance(tensor, torch.Tensor):
            continue
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{flat.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy())  # the bytes, without a copy
    return digest.hexdigest()


def int8_key(key: str) -> str:
    """The key of the int8 quantisation of the export ``key``."""
    options = json.dumps(dict(INT8_OPTIONS), sort_keys=True)
    return hashlib.blake2b(f"{key}:int8:{options}".encode(), digest_size=16).hexdigest()


def cache_file(source: str, family: str, key: str, cache_root: Path) -> Path:
    """Where the export named ``key`` lives: beside the checkpoint if its directory is writable and
    not part of chronoserve itself (the shipped model's exports go to the cache, never into the
    installed package), else under ``cache_root``."""
    name = f"{family}-{key}.onnx"
    checkpoint = Path(source)
    if checkpoint.is_dir() and not _in_package(checkpoint):
        beside = checkpoint / "onnx"
        try:
            beside.mkdir(exist_ok=True)
        except OSError:
            pass
        else:
            if os.access(beside, os.W_OK):
                return beside / name
    return cache_root / "onnx" / name


def _in_package(path: Path) -> bool:
    package = Path(__file__).resolve().parents[1]  # chronoserve/
    return path.resolve().is_relative_to(package)


def ensure_export(model: Any, family: str, target: Path) -> bool:
    """Export ``model`` to ``target`` unless it is there; True if this call exported it."""
    with _lock_for(target):
        if target.is_file():
            return False
        write_atomic(target, lambda tmp: export_model(model, family, tmp))
        return True


def ensure_int8(source: Path, target: Path) -> bool:
    """Quantise the export ``source`` into ``target`` unless it is there; True if this call did."""
    with _lock_for(target):
        if target.is_file():
            return False
        write_atomic(target, lambda tmp: quantize_int8(source, tmp))
        return True


def export_model(model: Any, family: str, path: Path) -> None:
    """Write the ONNX export of ``model`` (a Bolt or Chronos-2 inner model) to ``path``.

    ``model`` itself is never touched: a deep copy in eval mode is exported. Raises
    :class:`ExportError` naming the step that failed.
    """
    if family not in FAMILIES:
        raise ExportError(f"{family} is not exported to ONNX")
    clone = copy.deepcopy(model).eval()
    _eager_attention(clone)
    wrapper, example, dynamic_shapes = _wrapped(clone, family)
    try:
        with _quiet(), torch.no_grad(), _AssumeNoNaN():
            program = torch.export.export(wrapper, example, dynamic_shapes=dynamic_shapes, strict=False)
    except Exception as e:
        raise ExportError(f"torch.export failed: {first_line(e)}") from e
    try:
        with _quiet():
            onnx_program = torch.onnx.export(
                program,
                dynamo=True,
                optimize=True,
                verbose=False,
                opset_version=OPSET,
                input_names=list(INPUTS[family]),
                output_names=["quantile_preds"],
                custom_translation_table={torch.ops.aten.einsum.default: _einsum_as_float},
            )
            assert onnx_program is not None
            onnx_program.save(path, external_data=False)
    except Exception as e:
        raise ExportError(f"torch.onnx.export failed: {first_line(e)}") from e


def quantize_int8(source: Path, path: Path) -> None:
    """Dynamic int8 quantisation of the export ``source`` (its MatMul weights) into ``path``.

    ONNX Runtime's recommended pre-processing (shape inference and graph optimisation) runs
    first; weights become int8, activations are quantised per batch at run time.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    options = {k: v for k, v in INT8_OPTIONS.items() if k != "pre_process"}
    prepared = path.with_name(path.name + ".pre")
    try:
        with _quiet():
            quant_pre_process(source, prepared, skip_symbolic_shape=True)  # it cannot follow the dynamic axes
            quantize_dynamic(
                prepared,
                path,
                weight_type=getattr(QuantType, str(options.pop("weight_type"))),
                per_channel=bool(options.pop("per_channel")),
                reduce_range=bool(options.pop("reduce_range")),
            )
    finally:
        prepared.unlink(missing_ok=True)


# -- what is exported -------------------------------------------------------------------------


class _BoltExport(torch.nn.Module):  # type: ignore[misc]  # torch is not analysed
    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(context=context).quantile_preds
        return out


class _Chronos2Export(torch.nn.Module):  # type: ignore[misc]
    """The number of output patches is the future's width over the patch size: a dynamic axis,
    so one export serves every horizon (each number still runs in a forward pass of its own)."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model
        self.patch = int(model.chronos_config.output_patch_size)

    def forward(self, context: torch.Tensor, group_ids: torch.Tensor, future_covariates: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(
            context=context,
            group_ids=group_ids,
            future_covariates=future_covariates,
            num_output_patches=future_covariates.shape[-1] // self.patch,
        ).quantile_preds
        return out


def _wrapped(model: Any, family: str) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...], dict[str, Any]]:
    """The module to export, example inputs, and the dynamic axes of each input."""
    Dim = torch.export.Dim
    config = model.chronos_config
    patch = int(config.input_patch_size)
    batch = Dim("batch", min=1)
    width = patch * Dim("patches", min=2, max=max(2, int(config.context_length) // patch))
    context = torch.randn(3, 4 * patch)
    if family == CHRONOS_BOLT:
        return _BoltExport(model).eval(), (context,), {"context": {0: batch, 1: width}}
    out_patch = int(config.output_patch_size)
    future_width = out_patch * Dim("output_patches", min=1, max=max(2, int(config.max_output_patches)))
    example = (context, torch.tensor([0, 0, 1]), torch.full((3, 2 * out_patch), float("nan")))
    shapes = {
        "context": {0: batch, 1: width},
        "group_ids": {0: batch},
        "future_covariates": {0: batch, 1: future_width},
    }
    return _Chronos2Export(model).eval(), example, shapes


def _eager_attention(model: Any) -> None:
    setter = getattr(model, "set_attn_implementation", None)
    if callable(setter):
        setter("eager")
    else:
        model.config._attn_implementation = "eager"


class _AssumeNoNaN(torch.overrides.TorchFunctionMode):  # type: ignore[misc]
    """While exporting: ``torch.isnan(x).any()`` is False (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        # By id, holding each mask (a tensor's == is elementwise): no id is reused meanwhile.
        self._nan_masks: dict[int, torch.Tensor] = {}

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        if func is torch.Tensor.any and len(args) == 1 and not kwargs and id(args[0]) in self._nan_masks:
            return torch.tensor(False)
        out = func(*args, **kwargs)
        if func is torch.isnan and isinstance(out, torch.Tensor):
            self._nan_masks[id(out)] = out
        return out


def _einsum_as_float(equation: str, tensors: Any, path: Any = None) -> Any:
    """``aten::einsum`` with every operand cast to float (torch promotes a bool operand)."""
    from onnx import TensorProto
    from onnxscript import opset18 as op

    return op.Einsum(*[op.Cast(t, to=TensorProto.FLOAT) for t in tensors], equation=equation)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporter's warnings and log lines (progress, "torchvision is not installed") stay
    out of the server's log: a failure raises, with its message."""
    names = ("torch.onnx", "torch.export", "torch._export", "onnxscript", "onnx_ir")
    loggers = [logging.getLogger(name) for name in names]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def first_line(e: BaseException) -> str:
    """An exception as one short line, for a log line (the exporter's messages run to pages)."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def _lock_for(target: Path) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(str(target), threading.Lock())


__all__ = [
    "EXPORTER_VERSION",
    "FAMILIES",
    "INPUTS",
    "INT8_OPTIONS",
    "OPSET",
    "ExportError",
    "cache_file",
    "ensure_export",
    "ensure_int8",
    "export_key",
    "export_model",
    "first_line",
    "int8_key",
    "patch_width",
    "quantize_int8",
    "write_atomic",
]
