"""What one request may ask for, checked before any work sized by the request's numbers.

One place for every bound, shared by the in-process engine (:func:`chronoserve.request.prepare`
applies :class:`Limits`), the HTTP schema (its field bounds are the constants here), replay
(which builds requests the way the server does) and the Python client (which checks a body
before sending it):

- absolute bounds that hold for every model (``MAX_HORIZON``, ``MAX_SERIES_POINTS``, name
  lengths, ``MAX_SEED``, the time axis), so a number from a request never sizes work
  before the model's own limits are known;
- :class:`Limits`, an engine's per-request limits: covariates per request, an estimated
  cost budget (:func:`estimate_gflop`), and how long a batch may hold a worker;
- the model's own limits (context, horizon, covariates) come from its
  :class:`~chronoserve.models.base.ModelSpec` and are checked by ``prepare``.

Nothing here imports torch or numpy.
"""

from __future__ import annotations

import math
import numbers
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from .errors import InvalidRequest, TooCostly

if TYPE_CHECKING:
    from .models.base import ModelSpec

#: The longest horizon any request may name; each model's own ``max_horizon`` (at most 1,024 in
#: the catalog) is checked as soon as the model is known.
MAX_HORIZON = 10_000
#: The most points in a target or in one covariate (models read at most their context; the HTTP
#: body limit usually binds first).
MAX_SERIES_POINTS = 1_000_000
#: The longest model name (catalog names, hub ids, local directories).
MAX_MODEL_NAME = 256
#: The longest request id, series name or covariate name.
MAX_LABEL = 200
#: The most covariates any request may carry, whatever the server's limit says.
MAX_COVARIATES = 1024
#: Seeds are 64-bit: the largest one.
MAX_SEED = 2**64 - 1
#: The shortest step between points: one second.
MIN_FREQ_HOURS = 1.0 / 3600.0
#: The most quantile levels in one request.
MAX_QUANTILE_LEVELS = 99
#: The most numbers one HTTP answer may carry (medians, quantiles and timestamps of every item
#: of a batch): about 20 MB of JSON. A batch asking for more is refused before any work.
MAX_ANSWER_VALUES = 1_000_000
#: The longest time budget a request may give itself (``ForecastRequest.deadline``): a day.
MAX_DEADLINE_SECONDS = 86_400.0
#: Priority levels run 1 (highest, as in Triton) to this (lowest).
MAX_PRIORITY = 100


@dataclass(frozen=True)
class Limits:
    """An engine's per-request limits (``chronoserve serve`` sets them from its options).

    ``max_covariates``: past and known-future covariates of one request, each name counted
    once. ``max_request_gflop``: the estimated cost (:func:`estimate_gflop`) above which a
    request is refused before it is queued; None for no budget. ``max_inference_seconds``:
    the longest a batch may hold a worker; a batch still running then is stopped at the
    model's next layer and its requests fail with
    :class:`~chronoserve.errors.InferenceTimeout`; None for no bound.
    """

    max_covariates: int = 32
    max_request_gflop: float | None = 2000.0
    max_inference_seconds: float | None = 60.0

    def __post_init__(self) -> None:
        if not 0 <= self.max_covariates <= MAX_COVARIATES:
            raise ValueError(f"max_covariates must lie in [0, {MAX_COVARIATES}], got {self.max_covariates}")
        for name in ("max_request_gflop", "max_inference_seconds"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number or None, got {value}")


DEFAULT_LIMITS = Limits()


# -- numbers -------------------------------------------------------------------------------------


def check_int(field: str, value: object, minimum: int, maximum: int | None = None) -> int:
    """``value`` as an int within ``[minimum, maximum]``, or :class:`InvalidRequest` naming ``field``.

    Any integral type (numpy's too) but ``bool``; never a float or a string.
    """
    if type(value) is not int:  # the common case skips the ABC check (bool is not int here)
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise InvalidRequest(field, f"must be an integer, got {type(value).__name__}")
        value = int(value)
    if value < minimum:
        raise InvalidRequest(field, f"must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise InvalidRequest(field, f"must be at most {maximum}, got {value}")
    return value


def check_deadline_ms(field: str, value: object) -> float:
    """A deadline in milliseconds, as the HTTP API takes it: a finite number in (0, a day], or
    :class:`InvalidRequest` naming ``field`` (the client's argument, the server's header)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequest(field, f"must be a number of milliseconds, got {type(value).__name__}")
    if not (math.isfinite(value) and 0 < value <= MAX_DEADLINE_SECONDS * 1000.0):
        raise InvalidRequest(field, f"must be in (0, {MAX_DEADLINE_SECONDS * 1000.0:.0f}] ms, got {value!r}")
    return float(value)


# -- model names ---------------------------------------------------------------------------------


def check_model_name(name: object, field: str = "model") -> str:
    """The name without surrounding white space; refuses what cannot be a model name.

    Model loaders build their canonical names on top of this
    (:meth:`chronoserve.models.base.ModelLoader.canonical`).
    """
    if not isinstance(name, str):
        raise InvalidRequest(field, f"must be a string, got {type(name).__name__}")
    if len(name) > 4 * MAX_MODEL_NAME:  # before stripping: never scan a huge string
        raise InvalidRequest(field, f"is longer than {MAX_MODEL_NAME} characters")
    key = name.strip()
    if not key:
        raise InvalidRequest(field, "must not be empty")
    if len(key) > MAX_MODEL_NAME:
        raise InvalidRequest(field, f"is {len(key)} characters long; the limit is {MAX_MODEL_NAME}")
    if key not in _CLEAN_NAMES:
        if any(unicodedata.category(c)[0] in "CZ" and c != " " for c in key):
            raise InvalidRequest(field, "must not contain control characters or white space other than spaces")
        if len(_CLEAN_NAMES) < _CLEAN_NAMES_MAX:  # the names served come back: check each once
            _CLEAN_NAMES.add(key)
    return key


#: Model names already found clean (bounded: a flood of new names only stops the caching).
_CLEAN_NAMES: set[str] = set()
_CLEAN_NAMES_MAX = 4096


# -- the time axis of an answer ------------------------------------------------------------------


def check_time_axis(start: datetime, freq_hours: float, first: int, horizon: int) -> None:
    """Check that the forecast's timestamps ``start + freq_hours * (first + h)``, ``h < horizon``, exist.

    ``first`` is the index of the first forecast step (the history's length). Raises
    :class:`InvalidRequest` naming ``freq_hours`` (too small, not finite) or ``start`` (the
    last step would fall past 9999-12-31) before any timestamp is built.
    """
    if not (isinstance(freq_hours, (int, float)) and math.isfinite(freq_hours)) or freq_hours < MIN_FREQ_HOURS:
        raise InvalidRequest("freq_hours", f"must be at least {MIN_FREQ_HOURS:.6g} (one second), got {freq_hours}")
    steps = first + horizon - 1
    naive = start.replace(tzinfo=None)
    room_hours = (datetime.max - naive).total_seconds() / 3600.0
    if freq_hours * steps > room_hours:
        raise InvalidRequest(
            "start",
            f"the forecast's last step ({steps} x {freq_hours:g} h after {start.isoformat()}) would fall "
            "after 9999-12-31, the last date that exists: use a smaller freq_hours or an earlier start",
        )


def time_axis(start: datetime, freq_hours: float, first: int, horizon: int) -> list[datetime]:
    """The forecast's timestamps, after :func:`check_time_axis`."""
    check_time_axis(start, freq_hours, first, horizon)
    step = timedelta(hours=freq_hours)
    return [start + step * (first + h) for h in range(horizon)]


# -- cost ----------------------------------------------------------------------------------------


def answer_values(horizon: int, levels: int) -> int:
    """How many numbers the answer to one request holds: per step its median, quantiles and time."""
    return horizon * (levels + 2)


def estimate_gflop(spec: ModelSpec, *, context: int, horizon: int, rows: int = 1) -> float:
    """An estimate of one request's cost in GFLOP: ``2 x parameters x tokens x rows``.

    ``rows`` is 1 plus the request's covariates (Chronos-2 reads each covariate as a row of
    its own). Tokens: for the patch models (Chronos-Bolt, Chronos-2) the context's and the
    horizon's patches of 16 points; for Chronos-T5, one per context point plus one decoding
    step per horizon step and sample. It leaves out attention's quadratic term, so it is a
    floor; it exists to refuse requests that would hold a worker for minutes, not to time them.
    """
    params = spec.num_params if spec.num_params else max(1, spec.est_nbytes // 4)
    if spec.family == "chronos-t5":
        samples = spec.extra.get("num_samples", 20)
        tokens = context + horizon * (samples if isinstance(samples, int) and samples > 0 else 20)
    else:
        tokens = math.ceil(context / 16) + math.ceil(horizon / 16) + 1
    return 2.0 * params * tokens * rows / 1e9


def check_cost(spec: ModelSpec, limits: Limits, *, context: int, horizon: int, covariates: int) -> float:
    """The request's estimated GFLOP; refuses (:class:`TooCostly`, naming the field that adds most)
    a request over the budget."""
    if covariates > limits.max_covariates:
        raise InvalidRequest(
            "past_covariates",
            f"{covariates} covariates; this server allows at most {limits.max_covariates} per request",
        )
    cost = estimate_gflop(spec, context=context, horizon=horizon, rows=1 + covariates)
    budget = limits.max_request_gflop
    if budget is None or cost <= budget:
        return cost
    if covariates and estimate_gflop(spec, context=context, horizon=horizon) <= budget:
        field = "past_covariates"  # the series alone would fit: the covariates are too many
    elif estimate_gflop(spec, context=1, horizon=horizon) > estimate_gflop(spec, context=context, horizon=1):
        field = "horizon"
    else:
        field = "context_length"
    raise TooCostly(
        field,
        f"this request would cost about {cost:.0f} GFLOP on {spec.name} ({context} context points, "
        f"horizon {horizon}, {covariates} covariates); the budget per request is {budget:g} GFLOP: "
        "send a shorter context, a shorter horizon or fewer covariates",
    )
