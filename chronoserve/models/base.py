"""The model seam: what the engine knows about a model, and the two calls it makes on one.

Everything the engine does to a model goes through :class:`ModelLoader` (``resolve`` a name
to a :class:`ModelSpec` without loading weights, ``load`` a spec into a :class:`ModelBackend`)
and :meth:`ModelBackend.predict` (run one batch). Both are blocking calls that the engine
makes in worker threads, never on the event loop. ``chronoserve.testing`` implements the
same seam with a fake model, so the engine and the policies are tested without torch.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]

#: Model families the engine knows how to batch. Third-party backends may use their own
#: family name; they batch by :attr:`ModelSpec.batch_patch` like Chronos-2 if it is set.
CHRONOS_2 = "chronos-2"
CHRONOS_BOLT = "chronos-bolt"
CHRONOS_T5 = "chronos-t5"


@dataclass(frozen=True)
class ModelSpec:
    """What the engine knows about a model before its weights are loaded.

    ``resolve`` builds it from the catalog or from a checkpoint's ``config.json``, so
    requests are validated, and batch keys computed, without touching torch.
    """

    name: str
    """The name the caller used: ``random/chronos-bolt-tiny``, ``amazon/chronos-2``, a directory."""
    family: str
    """``chronos-2``, ``chronos-bolt``, ``chronos-t5`` (or a third-party family)."""
    source: str
    """What ``from_pretrained`` receives: a hub id or a local directory."""
    random_weights: bool
    """True for checkpoints materialised with random weights: their forecasts are not forecasts."""
    context_length: int
    """The longest context the model reads; longer histories keep their last points."""
    max_horizon: int
    """The longest horizon the model produces in one pass; longer requests are refused."""
    quantiles: tuple[float, ...]
    """The quantile levels the model outputs natively (others are interpolated)."""
    supports_covariates: bool
    """Only Chronos-2 reads past and future covariates."""
    est_nbytes: int
    """Estimated resident size in bytes (parameters times dtype size), used before loading."""
    batch_patch: int | None = None
    """Chronos-2: the output patch size. Requests batch together only with the same ``ceil(H / patch)``."""
    num_params: int | None = None
    extra: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class PreparedRequest:
    """One request as a backend sees it: validated, truncated, as arrays.

    ``context`` holds the last ``min(context_length, model context)`` points of the target
    (NaN marks a gap). Covariates, when present, are aligned with it: every past covariate
    has ``len(context)`` values and every future covariate ``horizon`` values.
    """

    context: FloatArray
    horizon: int
    quantile_levels: tuple[float, ...]
    past_covariates: Mapping[str, FloatArray] | None = None
    future_covariates: Mapping[str, FloatArray] | None = None
    seed: int = 0
    gflop: float = 0.0
    """Its estimated work (:func:`chronoserve.limits.estimate_gflop`), set by ``prepare``."""

    @property
    def rows(self) -> int:
        """Series rows the model reads: the target and one per covariate (a known-future
        covariate is one row, its past and future values together)."""
        return 1 + len(set(self.past_covariates or ()) | set(self.future_covariates or ()))


@dataclass(frozen=True)
class BackendForecast:
    """A backend's answer for one request: ``quantiles`` is ``(horizon, len(levels))``."""

    quantiles: FloatArray
    median: FloatArray


def covariate_signature(
    past: Mapping[str, object] | None, future: Mapping[str, object] | None
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The covariate set of a request: sorted past names and sorted known-future names."""
    return (tuple(sorted(past or ())), tuple(sorted(future or ())))


def batch_key(spec: ModelSpec, horizon: int, covariates: tuple[tuple[str, ...], tuple[str, ...]]) -> Hashable:
    """Requests with equal keys may share a batch without changing any answer.

    - Chronos-Bolt runs one forward pass for every horizon up to ``max_horizon`` and the
      first steps of a longer horizon equal a shorter forecast, and it NaN-pads mixed
      context lengths: one key.
    - Chronos-T5 samples; chronoserve seeds each request's samples by itself (see
      ``chronoserve.models.chronos``), so T5 requests share one key as well.
    - Chronos-2 encodes ``ceil(H / 16)`` future patches, and that number changes the
      forecast: the key holds it, and the covariate set.
    """
    if spec.batch_patch:
        return (math.ceil(horizon / spec.batch_patch), covariates)
    return (covariates,)


class ModelBackend:
    """A loaded model. ``predict`` is called from one worker thread at a time per batch.

    Subclasses set :attr:`spec` and :attr:`nbytes` (and :attr:`backend`, :attr:`dtype`) and implement
    :meth:`predict`.
    """

    spec: ModelSpec
    nbytes: int
    """Resident size in bytes, measured after loading."""
    backend: str = "unknown"
    """The runtime that runs the model: ``torch`` or ``onnx`` for Chronos models. Where a model
    could not run on the runtime asked for, the one it fell back to (so callers can tell)."""
    dtype: str = "unknown"
    """The weights' dtype as served: ``float32``, ``bfloat16``, ``int8`` (dynamic quantisation)."""

    def predict(self, batch: Sequence[PreparedRequest]) -> list[BackendForecast]:
        """Forecast every request of ``batch`` and return the answers in the same order.

        Blocking; the engine calls it in a worker thread. Requests in one batch always
        share a :func:`batch_key`.
        """
        raise NotImplementedError

    def close(self) -> None:
        """Release what the backend holds. Called when the model is evicted."""


class ModelLoader:
    """Turns model names into specs and specs into loaded backends. Both calls block."""

    def canonical(self, name: object) -> str:
        """The one name of the model ``name`` means, the same for every spelling of it.

        The engine keys its specs, pool and metrics by it, and the server's allow-list
        compares it, so two spellings never load two copies or make two metric labels. This
        default refuses what cannot be a name (not a string, empty, too long, control
        characters; :class:`~chronoserve.errors.InvalidRequest` on ``model``) and strips
        surrounding white space. Cheap and without I/O: it runs on the event loop.
        """
        from chronoserve.limits import check_model_name

        return check_model_name(name)

    def import_modules(self) -> None:
        """Import what :meth:`load` needs (for Chronos: torch, transformers, chronos).

        The engine calls it once, on a load thread, when it starts, and reports the time apart
        from any load (``import_seconds``), so ``load_seconds`` is the load alone. Default: nothing.
        """

    def resolve(self, name: str) -> ModelSpec:
        """Describe ``name`` without loading weights (raises :class:`~chronoserve.errors.UnknownModel`)."""
        raise NotImplementedError

    def load(self, spec: ModelSpec, host: HostCopy | None = None) -> ModelBackend:
        """Load ``spec``'s weights (raises :class:`~chronoserve.errors.ModelLoadError`).

        ``host``: a copy this loader's :meth:`offload` made of the same model when it was
        evicted; the load promotes it (no read from disk) and gives the same answers.
        """
        raise NotImplementedError

    def offload(self, backend: ModelBackend) -> HostCopy | None:
        """What to keep in host memory of an evicted ``backend`` so that reloading it is faster.

        None (the default): this loader has no host tier, an evicted model is reloaded from
        where it came from. Called on a load thread, before :meth:`ModelBackend.close`.
        """
        return None

    def tier(self, spec: ModelSpec) -> str:
        """Where ``spec``'s weights are when not resident and not in the host tier: ``disk``
        (a local file) or ``hub`` (a download first). Cheap: it runs on the event loop."""
        return "disk"


#: Where a model's weights are, fastest to reload first: built and ready (``resident``), kept in
#: host memory by the engine (``host``), in a local file (``disk``), or to be downloaded (``hub``).
TIERS = ("resident", "host", "disk", "hub")


@dataclass(frozen=True)
class HostCopy:
    """A model's weights kept in host memory after its eviction (the ``host`` tier).

    ``nbytes`` counts against the engine's host-cache budget; ``payload`` is the loader's own
    (for Chronos: the state dict's tensors, shared with nothing that runs).
    """

    model: str
    nbytes: int
    payload: object = field(repr=False, compare=False)


def interpolate_quantiles(
    native_levels: Sequence[float], native: npt.NDArray[np.float32], levels: Sequence[float]
) -> FloatArray:
    """Pick or linearly interpolate quantiles.

    ``native`` is ``(..., len(native_levels))``; the result is ``(..., len(levels))``. Levels on
    the native grid are copied exactly; others are interpolated linearly between the two
    nearest native levels and clamped to the outermost ones, as upstream Chronos does.
    """
    native_list = list(native_levels)
    if all(q in native_list for q in levels):
        return np.ascontiguousarray(native[..., [native_list.index(q) for q in levels]], dtype=np.float32)
    grid = np.asarray(native_list, dtype=np.float64)
    out = np.empty((*native.shape[:-1], len(levels)), dtype=np.float32)
    for j, q in enumerate(levels):
        qc = min(max(q, grid[0]), grid[-1])
        hi = int(np.searchsorted(grid, qc, side="left"))
        if grid[min(hi, len(grid) - 1)] == qc:
            out[..., j] = native[..., min(hi, len(grid) - 1)]
            continue
        lo = hi - 1
        w = (qc - grid[lo]) / (grid[hi] - grid[lo])
        out[..., j] = (1.0 - w) * native[..., lo] + w * native[..., hi]
    return out
