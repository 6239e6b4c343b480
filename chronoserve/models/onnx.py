"""ONNX Runtime backends for Chronos-Bolt and Chronos-2: the torch backends' answers, faster on a CPU.

``ChronosLoader(backend="onnx")`` (``--backend onnx``) loads the torch model as usual, then
:func:`onnx_backend` exports it once (:mod:`chronoserve.models.onnx_export`: cached beside the
checkpoint, keyed by everything the export depends on), opens it in an ONNX Runtime session
and checks it against torch on a small ragged batch (:func:`probe_batch`): if any answer
differs by more than :data:`PARITY_TOLERANCE` of its scale, or anything on the way fails, one
line is logged (logger ``chronoserve.models``) and the torch backend is served instead,
untouched (the export ran on a copy). Which one serves is the backend's ``backend`` attribute.

The ONNX backends are the torch backends' family classes (:class:`BoltForecaster`,
:class:`Chronos2Forecaster`: the same padding, rows, chunks and quantiles) with another
``_run``: the batch's contexts are NaN-padded on the left to whole input patches (what the model
does itself, see :func:`~chronoserve.models.onnx_export.patch_width`) and run by the session.

Chronos-T5 stays on torch: its answers come from seeded sampling inside ``generate``, and a
logit that moved by float rounding could move a sampled token, so they could not be kept
identical. bfloat16 stays on torch too (ONNX Runtime's CPU kernels are float32 and int8).

Promotion from the host tier: a backend that passed the parity check carries a
:class:`VerifiedExport` (its export key, the file it runs and that file's stamp). The loader keeps
it when the model is evicted, and :func:`promote` opens that file again without hashing the weights
or probing parity, provided the file is still the one checked (same size, modification time and
inode); otherwise the model is loaded from disk as at first.

Stopping: :func:`~chronoserve.stopping.checkpoint` runs before every pass, and while a pass runs
the batch's stop signal can abort it (``RunOptions.terminate``, through
:meth:`~chronoserve.stopping.StopSignal.on_stop`): it stops between two graph nodes.

Threads: each session runs ``threads`` intra-op threads (the loader's ``onnx_threads``: as many
as one engine worker's torch threads) with spinning off, and one inter-op thread. Concurrent
batches on one session (the engine's workers) each run on their own worker's thread, as torch does.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

import chronoserve.models.onnx_export as onnx_export
from chronoserve.models.base import CHRONOS_2, CHRONOS_BOLT, BackendForecast, FloatArray, ModelSpec, PreparedRequest
from chronoserve.models.chronos import BoltForecaster, Chronos2Forecaster, ChronosBackend, TorchBackend
from chronoserve.models.fastload import Stamp, file_stamp
from chronoserve.stopping import checkpoint, current

logger = logging.getLogger("chronoserve.models")

#: The largest difference from torch accepted at load, relative to the answer's scale
#: (``max |onnx - torch| / max |torch|``, per request). Measured: about 1e-7.
PARITY_TOLERANCE = 1e-5
#: Requested dtypes an ONNX backend serves (others run on torch).
DTYPES = ("float32", "int8")


@dataclass(frozen=True)
class VerifiedExport:
    """An export that passed :func:`build`'s checks: what lets :func:`promote` skip them."""

    key: str
    """The :func:`~chronoserve.models.onnx_export.export_key` of the weights it was exported from."""
    path: Path
    """The file the backend ran: the export, or its int8 quantisation."""
    dtype: str
    stamp: Stamp | None
    """``path``'s stamp (size, modification time, inode) before it was opened and checked."""

    def unchanged(self) -> bool:
        """True if ``path`` is still the file that was checked."""
        return self.stamp is not None and file_stamp(self.path) == self.stamp


class OnnxBackend(ChronosBackend):
    """A Chronos backend whose forward passes run in an ONNX Runtime session."""

    backend = "onnx"
    verified: VerifiedExport | None = None
    """Set once its export passed the checks (see :func:`promote`)."""

    def __init__(self, pipeline: Any, spec: ModelSpec, *, session: Any, path: Path, dtype: str) -> None:
        super().__init__(pipeline, spec)
        self.session: Any = session
        self.path = path
        """The ONNX file the session runs."""
        self.dtype = dtype
        self.nbytes = path.stat().st_size
        self.input_patch = int(pipeline.inner_model.chronos_config.input_patch_size)

    @property
    def is_closed(self) -> bool:
        return self.session is None

    def close(self) -> None:
        self.session = None

    def _pad(self, context: FloatArray) -> FloatArray:
        width = onnx_export.patch_width(context.shape[1], self.input_patch)
        if width == context.shape[1]:
            return context
        out = np.full((context.shape[0], width), np.nan, dtype=np.float32)
        out[:, width - context.shape[1] :] = context
        return out

    def _session_run(self, feeds: dict[str, Any]) -> FloatArray:
        import onnxruntime

        checkpoint()
        session = self.session
        if session is None:
            raise RuntimeError(f"model {self.spec.name!r} is closed")
        options = onnxruntime.RunOptions()
        signal = current()
        unregister = signal.on_stop(functools.partial(setattr, options, "terminate", True)) if signal else None
        try:
            out = session.run(["quantile_preds"], feeds, options)[0]
        except Exception:
            checkpoint()  # a pass aborted because the batch was stopped raises BatchStopped
            raise
        finally:
            if unregister is not None:
                unregister()
        return np.ascontiguousarray(out, dtype=np.float32)


class OnnxBoltBackend(BoltForecaster, OnnxBackend):
    """Chronos-Bolt on ONNX Runtime."""

    def _run(self, context: FloatArray) -> FloatArray:
        return self._session_run({"context": self._pad(context)})


class OnnxChronos2Backend(Chronos2Forecaster, OnnxBackend):
    """Chronos-2 on ONNX Runtime: one session for every number of output patches."""

    def _run(
        self, context: FloatArray, group_ids: npt.NDArray[np.int64], future: FloatArray, n_patches: int
    ) -> FloatArray:
        return self._session_run({"context": self._pad(context), "group_ids": group_ids, "future_covariates": future})


_CLASSES: dict[str, type[OnnxBackend]] = {CHRONOS_BOLT: OnnxBoltBackend, CHRONOS_2: OnnxChronos2Backend}


class OnnxUnavailable(Exception):
    """Why a model cannot run on ONNX Runtime (it then runs on torch)."""


def onnx_backend(torch_backend: TorchBackend, *, dtype: str, threads: int, cache_root: Path) -> ChronosBackend:
    """The ONNX Runtime backend of ``torch_backend``'s model, or ``torch_backend`` where it cannot serve.

    ``dtype`` is the requested one (``float32`` or ``int8``: int8 quantises the export, or the
    torch model after a fallback). On success ``torch_backend`` is closed; on a fallback it is
    returned as it was (eval mode, same answers), with one log line saying why.
    """
    spec = torch_backend.spec
    try:
        backend = build(torch_backend, dtype=dtype, threads=threads, cache_root=cache_root)
    except Exception as e:
        reason = str(e) if isinstance(e, (OnnxUnavailable, onnx_export.ExportError)) else onnx_export.first_line(e)
        logger.warning("%s: runs on torch (%s), not onnx: %s", spec.name, dtype, reason)
        if dtype == "int8":
            torch_backend.quantize_int8()
        return torch_backend
    torch_backend.close()
    return backend


def build(torch_backend: TorchBackend, *, dtype: str, threads: int, cache_root: Path) -> OnnxBackend:
    """Export (or find) the model's ONNX file, open it, check it against torch; raise on any failure."""
    spec, family = torch_backend.spec, torch_backend.family
    _check_supported(torch_backend, dtype)
    model = torch_backend.model
    key = onnx_export.export_key(model, family)
    path = onnx_export.cache_file(spec.source, family, key, cache_root)
    if not path.is_file():
        logger.info("%s: exporting to ONNX once, to %s (seconds; later loads reuse it)", spec.name, path)
    exported = onnx_export.ensure_export(model, family, path)
    stamp = file_stamp(path)
    try:
        backend = open_backend(torch_backend, path, dtype="float32", threads=threads)
    except Exception:
        if exported:
            raise
        path.unlink(missing_ok=True)  # a cached file that no longer opens (damaged since): export it again
        onnx_export.ensure_export(model, family, path)
        stamp = file_stamp(path)
        backend = open_backend(torch_backend, path, dtype="float32", threads=threads)
    probe = probe_batch(backend)
    difference = relative_difference(backend.predict(probe), torch_backend.predict(probe))
    if not difference <= PARITY_TOLERANCE:
        raise OnnxUnavailable(
            f"its answers differ from torch by {difference:.2g} of their scale (limit {PARITY_TOLERANCE:g}); "
            f"export {path}"
        )
    if dtype == "int8":
        backend.close()
        int8_path = path.with_name(f"{family}-{onnx_export.int8_key(key)}.onnx")
        onnx_export.ensure_int8(path, int8_path)
        stamp = file_stamp(int8_path)
        backend = open_backend(torch_backend, int8_path, dtype="int8", threads=threads)
        if not all(np.isfinite(f.quantiles).all() for f in backend.predict(probe)):
            raise OnnxUnavailable(f"its int8 quantisation {int8_path} answers NaN or infinity")
    backend.verified = VerifiedExport(key=key, path=backend.path, dtype=backend.dtype, stamp=stamp)
    return backend


def open_backend(torch_backend: TorchBackend, path: Path, *, dtype: str, threads: int) -> OnnxBackend:
    """An ONNX backend of ``torch_backend``'s family running the file ``path``."""
    return _open(torch_backend.pipeline, torch_backend.spec, torch_backend.family, path, dtype=dtype, threads=threads)


def promote(pipeline: Any, spec: ModelSpec, verified: VerifiedExport, *, threads: int) -> OnnxBackend | None:
    """The backend of ``spec`` on ``verified``'s file, opened without :func:`build`'s checks, or None
    if the file is no longer the one checked. ``pipeline`` only gives the configuration (its model
    may be on the meta device: see :func:`chronoserve.models.fastload.meta_pipeline`)."""
    if not verified.unchanged():
        return None
    backend = _open(pipeline, spec, spec.family, verified.path, dtype=verified.dtype, threads=threads)
    backend.verified = verified
    return backend


def _open(pipeline: Any, spec: ModelSpec, family: str, path: Path, *, dtype: str, threads: int) -> OnnxBackend:
    return _CLASSES[family](pipeline, spec, session=session(path, threads), path=path, dtype=dtype)


def session(path: Path, threads: int) -> Any:
    """An ONNX Runtime CPU session on ``path``: ``threads`` intra-op threads, full graph optimisation."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # its optimiser's warnings (CastLike not folded) are not ours
    # Idle intra-op threads would spin for work, taking cores from the engine's other workers.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def probe_batch(backend: ChronosBackend) -> list[PreparedRequest]:
    """A small ragged batch for the parity check: short and long contexts, a NaN gap, one
    context shorter than a patch; for Chronos-2 two numbers of output patches and covariates."""
    rng = np.random.default_rng(0)

    def series(n: int) -> FloatArray:
        t = np.arange(n)
        values = (10 + 3 * np.sin(t / 5) + rng.normal(size=n)).astype(np.float32)
        if n > 20:
            values[n // 3 : n // 3 + 4] = np.nan
        return values

    if backend.family == CHRONOS_BOLT:
        assert isinstance(backend, BoltForecaster)
        h, levels = backend.prediction_length, backend.native_levels
        return [PreparedRequest(series(n), h, levels) for n in (5, 47, 130)]
    assert isinstance(backend, Chronos2Forecaster)
    patch, levels = backend.patch, backend.native_levels
    return [
        PreparedRequest(series(5), patch, levels),
        PreparedRequest(series(90), patch, levels),
        PreparedRequest(series(47), 2 * patch, levels),
        PreparedRequest(
            series(60),
            patch + 3,
            levels,
            past_covariates={"x": series(60), "y": series(60)},
            future_covariates={"y": series(patch + 3)},
        ),
    ]


def relative_difference(actual: Sequence[BackendForecast], desired: Sequence[BackendForecast]) -> float:
    """The largest ``max |a - d| / max |d|`` over the requests' quantiles: their difference relative
    to the answer's scale (NaN if an answer is not finite, infinity if their shapes differ)."""
    worst = 0.0
    for a, d in zip(actual, desired, strict=True):
        if a.quantiles.shape != d.quantiles.shape:
            return float("inf")
        scale = float(np.max(np.abs(d.quantiles))) if d.quantiles.size else 0.0
        diff = float(np.max(np.abs(a.quantiles - d.quantiles))) if d.quantiles.size else 0.0
        if not (np.isfinite(scale) and np.isfinite(diff)):
            return float("nan")
        worst = max(worst, diff / scale if scale > 0 else diff)
    return worst


def _check_supported(torch_backend: TorchBackend, dtype: str) -> None:
    family = torch_backend.family
    if family not in onnx_export.FAMILIES:
        raise OnnxUnavailable(
            f"{family} has no onnx backend (its seeded sampling runs inside generate and could not stay identical)"
        )
    if dtype not in DTYPES:
        raise OnnxUnavailable(f"the onnx backend serves {' and '.join(DTYPES)}, not {dtype}")
    if str(torch_backend.device) != "cpu":
        raise OnnxUnavailable(f"the onnx backend runs on the CPU, not {torch_backend.device}")
    config = torch_backend.model.chronos_config
    if int(config.input_patch_stride) != int(config.input_patch_size):
        raise OnnxUnavailable("its input patches overlap (stride != size), which the export does not handle")
    for module in ("onnxruntime", "onnx", "onnxscript"):
        try:
            __import__(module)
        except ImportError:
            raise OnnxUnavailable(f"{module} is not installed (pip install 'chronoserve[onnx]')") from None


__all__ = [
    "DTYPES",
    "PARITY_TOLERANCE",
    "OnnxBackend",
    "OnnxBoltBackend",
    "OnnxChronos2Backend",
    "OnnxUnavailable",
    "VerifiedExport",
    "build",
    "onnx_backend",
    "open_backend",
    "probe_batch",
    "promote",
    "relative_difference",
    "session",
]
