"""Forecast requests and results, and the validation that turns one into the other's input."""

from __future__ import annotations

import functools
import math
import numbers
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import InvalidRequest
from .limits import (
    DEFAULT_LIMITS,
    MAX_DEADLINE_SECONDS,
    MAX_PRIORITY,
    MAX_QUANTILE_LEVELS,
    MAX_SEED,
    MAX_SERIES_POINTS,
    Limits,
    check_cost,
    check_int,
)
from .models.base import FloatArray, ModelSpec, PreparedRequest

DEFAULT_QUANTILES: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def _new_id() -> str:
    """A request's id when its caller gave none: 32 random hex digits, as ``uuid4().hex`` but without
    a system call per request (an id names a request in logs and answers; it is not a secret)."""
    return f"{random.getrandbits(128):032x}"


@dataclass(frozen=True)
class ForecastRequest:
    """One forecast to make.

    ``target`` is the history, oldest first; NaN marks a gap. ``context_length`` keeps only
    its last N points. Covariates are Chronos-2 only: each past covariate has one value per
    target point, each future covariate one value per horizon step and past values too.
    ``seed`` fixes Chronos-T5's sampling (the other families are deterministic).

    ``deadline`` is the request's time budget in seconds (HTTP's ``deadline_ms``, in seconds):
    the answer is wanted by ``deadline`` seconds after the engine accepts the request, which
    policies see as ``QueuedRequest.deadline``, a time on the engine's clock. ``priority`` is its class, 1 the
    highest, as in Triton; None is the default class, below every numbered one. Policies
    decide what both mean; the built-in ``naive``, ``lru`` and ``batched`` ignore them.

    ``lower_bound``: the least value the quantity can take (0 for a concentration, a count, a
    price): forecast values below it (the quantiles and the median) are raised to it, and the
    answer says how many were (:attr:`ForecastResult.clipped`). None: no bound.
    """

    model: str
    target: Sequence[float] | FloatArray
    horizon: int
    request_id: str = field(default_factory=_new_id)
    context_length: int | None = None
    quantile_levels: Sequence[float] = DEFAULT_QUANTILES
    past_covariates: Mapping[str, Sequence[float] | FloatArray] | None = None
    future_covariates: Mapping[str, Sequence[float] | FloatArray] | None = None
    seed: int = 0
    deadline: float | None = None
    priority: int | None = None
    lower_bound: float | None = None


@dataclass(frozen=True)
class Timings:
    """Where a request's time went, in seconds. ``queue + load + inference == total``.

    ``load`` is the part of the wait spent on loading the request's model (0 when it was
    resident), ``inference`` the run of the batch it was in, and ``queue`` the rest:
    waiting for a batch to form, for a worker, behind other models' loads, or (a new engine's
    first requests) for the engine's one-time imports of torch and the model code, which
    :attr:`EngineStats.import_seconds` reports apart.
    """

    queue: float
    load: float
    inference: float
    total: float

    def to_dict(self) -> dict[str, float]:
        return {"queue": self.queue, "load": self.load, "inference": self.inference, "total": self.total}


@dataclass(frozen=True)
class ForecastResult:
    """The answer to a :class:`ForecastRequest`.

    ``quantiles[h, j]`` is the forecast at step ``h`` for ``quantile_levels[j]``.
    ``random_weights`` is True when the model's weights are random: then the numbers are
    not forecasts, only the timings are meaningful.
    """

    request_id: str
    model: str
    family: str
    """The model's family: ``chronos-2``, ``chronos-bolt``, ``chronos-t5`` (or a third party's)."""
    random_weights: bool
    policy: str
    quantile_levels: tuple[float, ...]
    quantiles: FloatArray
    median: FloatArray
    batch_size: int
    cold_start: bool
    timings: Timings
    context_used: int
    served_by: str | None = None
    """Which engine answered, where there are several: ``engine-<i>`` (``serve --engines K``), a
    Ray Serve replica's id (:mod:`chronoserve.ray`); None with one engine."""
    lower_bound: float | None = None
    """The request's :attr:`ForecastRequest.lower_bound`, if it had one."""
    clipped: int = 0
    """How many values (quantiles and median) were below ``lower_bound`` and were raised to it."""

    @property
    def horizon(self) -> int:
        return int(self.median.shape[0])

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (lists of floats; NaN stays NaN); ``served_by`` only where set."""
        answer: dict[str, Any] = {
            "request_id": self.request_id,
            "model": self.model,
            "family": self.family,
            "random_weights": self.random_weights,
            "policy": self.policy,
            "quantile_levels": list(self.quantile_levels),
            "median": self.median.tolist(),
            "quantiles": {str(q): self.quantiles[:, j].tolist() for j, q in enumerate(self.quantile_levels)},
            "batch_size": self.batch_size,
            "cold_start": self.cold_start,
            "timings": self.timings.to_dict(),
            "context_used": self.context_used,
        }
        if self.served_by is not None:
            answer["served_by"] = self.served_by
        if self.lower_bound is not None:
            answer["lower_bound"] = self.lower_bound
            answer["clipped_values"] = self.clipped
        return answer


def clip_below(quantiles: FloatArray, median: FloatArray, bound: float | None) -> tuple[FloatArray, FloatArray, int]:
    """``quantiles`` and ``median`` with every value below ``bound`` raised to it, and how many were
    (the arrays themselves when none is, or there is no bound). The order of the quantiles holds:
    raising values to one bound keeps them sorted."""
    if bound is None:
        return quantiles, median, 0
    low = np.float32(bound)
    count = int(np.count_nonzero(quantiles < low)) + int(np.count_nonzero(median < low))
    if count == 0:
        return quantiles, median, 0
    return np.maximum(quantiles, low), np.maximum(median, low), count


#: The largest magnitude accepted in a series. The models compute in float32, where the squares
#: that scaling needs overflow beyond about 1.8e19; values this large are better rescaled.
MAX_ABS_VALUE = 1e15


def _as_series(field_name: str, values: object) -> FloatArray:
    size = len(values) if isinstance(values, (Sequence, np.ndarray)) else None
    if size is not None and size > MAX_SERIES_POINTS:
        raise InvalidRequest(field_name, f"has {size} points; the limit is {MAX_SERIES_POINTS}")
    try:
        wide = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(field_name, f"must be a sequence of numbers ({exc})") from None
    if wide.ndim != 1:
        raise InvalidRequest(field_name, f"must be one-dimensional, got shape {wide.shape}")
    if wide.size > MAX_SERIES_POINTS:
        raise InvalidRequest(field_name, f"has {wide.size} points; the limit is {MAX_SERIES_POINTS}")
    if np.isinf(wide).any():
        raise InvalidRequest(field_name, "contains infinite values (use NaN for gaps)")
    if (np.abs(wide) > MAX_ABS_VALUE).any():  # NaN compares False
        raise InvalidRequest(field_name, f"values must lie within ±{MAX_ABS_VALUE:g}; rescale the series")
    return wide.astype(np.float32)


def _check_levels(levels: Sequence[float]) -> tuple[float, ...]:
    given: object = levels
    if not isinstance(given, (Sequence, np.ndarray)) or isinstance(given, str):
        raise InvalidRequest("quantile_levels", "must be a list of numbers")
    if len(levels) > MAX_QUANTILE_LEVELS:
        raise InvalidRequest("quantile_levels", f"{len(levels)} levels; the limit is {MAX_QUANTILE_LEVELS}")
    try:
        return _checked_levels(tuple(levels))
    except TypeError:  # unhashable members
        raise InvalidRequest("quantile_levels", "must be a list of numbers") from None


@functools.lru_cache(maxsize=256)
def _checked_levels(levels: tuple[float, ...]) -> tuple[float, ...]:
    try:
        out = tuple(float(q) for q in levels)
    except (TypeError, ValueError):
        raise InvalidRequest("quantile_levels", "must be a list of numbers") from None
    if not out:
        raise InvalidRequest("quantile_levels", "must not be empty")
    bad = [q for q in out if not (0.0 < q < 1.0) or math.isnan(q)]
    if bad:
        raise InvalidRequest("quantile_levels", f"levels must lie strictly between 0 and 1, got {bad}")
    if len(set(out)) != len(out):
        raise InvalidRequest("quantile_levels", "levels must be distinct")
    return out


def check_deadline(budget: object, field_name: str = "deadline") -> float | None:
    """A request's time budget in seconds: None, or a finite number in (0, MAX_DEADLINE_SECONDS]."""
    if budget is None:
        return None
    if isinstance(budget, bool) or not isinstance(budget, numbers.Real):
        raise InvalidRequest(field_name, f"must be a number of seconds, got {type(budget).__name__}")
    value = float(budget)
    if not (math.isfinite(value) and 0.0 < value <= MAX_DEADLINE_SECONDS):
        raise InvalidRequest(
            field_name, f"must be a number of seconds in (0, {MAX_DEADLINE_SECONDS:g}], got {budget!r}"
        )
    return value


def check_lower_bound(bound: object) -> float | None:
    """A request's lower bound: None, or a finite number within the values a series may hold."""
    if bound is None:
        return None
    if isinstance(bound, bool) or not isinstance(bound, (int, float, np.floating, np.integer)):
        raise InvalidRequest("lower_bound", f"must be a number or null, got {type(bound).__name__}")
    value = float(bound)
    if not (math.isfinite(value) and abs(value) <= MAX_ABS_VALUE):
        raise InvalidRequest("lower_bound", f"must be a finite number within ±{MAX_ABS_VALUE:g}, got {bound!r}")
    return value


def check_priority(priority: object) -> int | None:
    """A request's priority class: None (the default class) or 1 (highest) to MAX_PRIORITY."""
    return None if priority is None else check_int("priority", priority, 1, MAX_PRIORITY)


def prepare(request: ForecastRequest, spec: ModelSpec, limits: Limits = DEFAULT_LIMITS) -> PreparedRequest:
    """Validate ``request`` against ``spec`` and ``limits`` and cut it to what the model reads.

    Every bound is checked before the work it bounds: the horizon against the model before
    anything, the series' lengths before they are converted, the covariates' number and the
    estimated cost (:func:`~chronoserve.limits.check_cost`) before any covariate is converted.
    Raises :class:`InvalidRequest` naming the field at fault.
    """
    horizon = check_int("horizon", request.horizon, 1)
    if horizon > spec.max_horizon:
        raise InvalidRequest(
            "horizon", f"{horizon} exceeds what {spec.name} produces in one pass ({spec.max_horizon} steps)"
        )
    target = _as_series("target", request.target)
    if target.size == 0:
        raise InvalidRequest("target", "must not be empty")
    n = target.size
    if request.context_length is not None:
        wanted = check_int("context_length", request.context_length, 1)
        if wanted > spec.context_length:
            raise InvalidRequest(
                "context_length", f"{wanted} exceeds the context limit of {spec.name} ({spec.context_length} points)"
            )
        if wanted > n:
            raise InvalidRequest("context_length", f"{wanted} exceeds the history given ({n} points)")
        n = wanted
    n = min(n, spec.context_length)
    context = target[-n:]
    if np.isnan(context).all():
        raise InvalidRequest("target", f"the last {n} points have no observed value (all NaN)")
    levels = _check_levels(request.quantile_levels)
    seed = check_int("seed", request.seed, 0, MAX_SEED)
    check_lower_bound(request.lower_bound)
    covariates = _count_covariates(request)
    if covariates and not spec.supports_covariates:
        field_name = "past_covariates" if request.past_covariates else "future_covariates"
        raise InvalidRequest(
            field_name, f"{spec.name} ({spec.family}) cannot use covariates; only Chronos-2 models can"
        )
    gflop = check_cost(spec, limits, context=n, horizon=horizon, covariates=covariates)
    past, future = _prepare_covariates(request, target.size, n, horizon)
    return PreparedRequest(
        context=np.ascontiguousarray(context),
        horizon=horizon,
        quantile_levels=levels,
        past_covariates=past,
        future_covariates=future,
        seed=seed,
        gflop=gflop,
    )


def _count_covariates(request: ForecastRequest) -> int:
    """How many covariates (names) the request sends, past and known-future counted once each."""
    names: set[object] = set()
    for field_name in ("past_covariates", "future_covariates"):
        values = getattr(request, field_name)
        if values is None:
            continue
        if not isinstance(values, Mapping):
            raise InvalidRequest(field_name, "must be a mapping from covariate names to series")
        names.update(values)
    return len(names)


def _prepare_covariates(
    request: ForecastRequest, target_len: int, n: int, horizon: int
) -> tuple[dict[str, FloatArray] | None, dict[str, FloatArray] | None]:
    past_in, future_in = request.past_covariates, request.future_covariates
    if not past_in and not future_in:
        return None, None
    past: dict[str, FloatArray] = {}
    for name, values in (past_in or {}).items():
        arr = _as_series(f"past_covariates.{name}", values)
        if arr.size != target_len:
            raise InvalidRequest(
                f"past_covariates.{name}", f"has {arr.size} values; the target has {target_len}: they must match"
            )
        past[str(name)] = np.ascontiguousarray(arr[-n:])
    future: dict[str, FloatArray] = {}
    for name, values in (future_in or {}).items():
        arr = _as_series(f"future_covariates.{name}", values)
        if arr.size != horizon:
            raise InvalidRequest(
                f"future_covariates.{name}", f"has {arr.size} values; the horizon is {horizon}: they must match"
            )
        if name not in past:
            raise InvalidRequest(
                f"future_covariates.{name}", "a known-future covariate needs its past values in past_covariates too"
            )
        future[str(name)] = arr
    return past or None, future or None
