"""Arrival processes, retiming, the synthetic trace generator, and checking a trace against the data.

Everything random comes from numpy ``default_rng``, seeded: ``SeedSequence(seed).spawn(3)``
gives three independent streams, one for the requests' content, one for the arrival times
and one for the deadline classes. So traces generated with the same seed and different
arrivals hold the same requests, ``retime(generate(n, "burst", seed=s), "poisson", rate=r,
seed=s)`` has the same ``t``s as ``generate(n, "poisson", rate=r, seed=s)``, and adding
deadline classes changes nothing else (the first two streams are those of ``spawn(2)``, which
wrote the shipped traces). The on-off process draws its phases from a child of the arrival
stream (``spawn_key=(1, 0)``) and its gaps from the arrival stream itself.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt

from chronoserve import __version__
from chronoserve.data import SeriesStore
from chronoserve.errors import InvalidRequest
from chronoserve.limits import MAX_PRIORITY

from ._format import MAX_CLASS_NAME, MAX_DEADLINE_MS, T_DECIMALS, Trace, TraceRequest

#: The arrival processes :func:`generate` draws; :func:`retime` also takes ``"as-recorded"``.
ARRIVALS: tuple[str, ...] = ("burst", "poisson", "gamma", "onoff")
RETIME_ARRIVALS: tuple[str, ...] = ("as-recorded", *ARRIVALS)
#: The default model mix of the generator (and of the shipped traces): name -> weight.
DEFAULT_MODELS: Mapping[str, float] = {
    "random/chronos-bolt-tiny": 0.45,
    "random/chronos-bolt-mini": 0.35,
    "random/chronos-2": 0.2,
}
DEFAULT_CONTEXT_DAYS: tuple[int, ...] = (2, 4, 8, 10, 14)
DEFAULT_HORIZONS: tuple[int, ...] = (4, 8, 12, 24, 48)
#: The on-off process's defaults: bursts 4 times the calm rate, 20 % of the time, 2 s long on average.
DEFAULT_BURST_FACTOR = 4.0
DEFAULT_BURST_SHARE = 0.2
DEFAULT_BURST_SECONDS = 2.0
#: ... and phases of exponential lengths (coefficient of variation 1: a Markov-modulated Poisson process).
DEFAULT_PHASE_CV = 1.0
CREATED_BY = "chronoserve trace gen"
_HOUR = timedelta(hours=1)
_CLASS_NAME = re.compile(r"[A-Za-z0-9_.-]+")
#: How far the deadline classes' shares may add up from 1 (they are then divided by their sum).
SHARE_TOLERANCE = 0.01
#: The on-off process draws its phases this many calm-burst cycles at a time.
_CYCLES_PER_DRAW = 64

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class DeadlineClass:
    """A class of requests of :func:`generate`: each request draws one, with probability ``share``.

    Its requests get ``deadline_ms``, ``priority`` (1 the highest; ``None``: none sent) and
    ``deadline_class = name``.
    """

    name: str
    deadline_ms: float
    share: float
    priority: int | None = None

    def to_json(self) -> dict[str, Any]:
        """As the trace's meta records it."""
        return {"name": self.name, "deadline_ms": self.deadline_ms, "share": self.share, "priority": self.priority}


@dataclass(frozen=True)
class _Process:
    """A checked arrival process: ``onoff`` fields set only for ``onoff``."""

    arrivals: str
    rate: float | None = None
    cv: float | None = None
    burst_factor: float | None = None
    burst_share: float | None = None
    burst_seconds: float | None = None
    phase_cv: float | None = None

    def onoff_meta(self) -> dict[str, Any]:
        assert self.rate is not None and self.burst_factor is not None and self.burst_share is not None
        calm, burst = _onoff_rates(self.rate, self.burst_factor, self.burst_share)
        return {
            "burst_factor": self.burst_factor,
            "burst_share": self.burst_share,
            "burst_seconds": self.burst_seconds,
            "phase_cv": self.phase_cv,
            "calm_rate": round(calm, 6),
            "burst_rate": round(burst, 6),
        }


def _seeds(seed: int) -> tuple[np.random.SeedSequence, np.random.SeedSequence, np.random.SeedSequence]:
    """(content, arrivals, classes): three independent seed sequences from one seed."""
    content, arrivals, classes = np.random.SeedSequence(seed).spawn(3)
    return content, arrivals, classes


def _onoff_rates(rate: float, factor: float, share: float) -> tuple[float, float]:
    """(calm rate, burst rate) of an on-off process of mean ``rate``."""
    calm = rate / (1.0 + share * (factor - 1.0))
    return calm, factor * calm


def _finite(field: str, value: Any, what: str, ok: bool | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidRequest(field, f"must be {what}, got {value!r}")
    if ok is not None and not ok:
        raise InvalidRequest(field, f"must be {what}, got {value!r}")
    return float(value)


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise InvalidRequest("seed", f"must be an integer >= 0, got {seed!r}")
    return int(seed)


def _check_process(
    arrivals: str,
    rate: float | None,
    cv: float | None,
    allowed: Sequence[str],
    burst_factor: float | None = None,
    burst_share: float | None = None,
    burst_seconds: float | None = None,
    phase_cv: float | None = None,
) -> _Process:
    if arrivals not in allowed:
        raise InvalidRequest("arrivals", f"must be one of {', '.join(allowed)}; got {arrivals!r}")
    if arrivals in ("poisson", "gamma", "onoff"):
        if rate is None:
            raise InvalidRequest("rate", f"{arrivals} arrivals need a rate, in requests per second")
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not (math.isfinite(rate) and rate > 0):
            raise InvalidRequest("rate", f"must be a finite number > 0 (requests per second), got {rate!r}")
    elif rate is not None:
        raise InvalidRequest("rate", f"applies only to poisson, gamma and onoff arrivals, not {arrivals}")
    if arrivals == "gamma":
        if cv is None or isinstance(cv, bool) or not isinstance(cv, int | float) or not (math.isfinite(cv) and cv > 0):
            raise InvalidRequest("cv", f"must be a finite number > 0, got {cv!r}")
    elif cv is not None and cv != 1.0:
        raise InvalidRequest("cv", f"applies only to gamma arrivals (poisson gaps have CV 1), not {arrivals}")
    onoff = {
        "burst_factor": burst_factor,
        "burst_share": burst_share,
        "burst_seconds": burst_seconds,
        "phase_cv": phase_cv,
    }
    if arrivals != "onoff":
        for field, value in onoff.items():
            if value is not None:
                raise InvalidRequest(field, f"applies only to onoff arrivals, not {arrivals}")
        return _Process(arrivals, None if rate is None else float(rate), None if cv is None else float(cv))
    assert rate is not None
    factor = DEFAULT_BURST_FACTOR if burst_factor is None else burst_factor
    share = DEFAULT_BURST_SHARE if burst_share is None else burst_share
    seconds = DEFAULT_BURST_SECONDS if burst_seconds is None else burst_seconds
    phase = DEFAULT_PHASE_CV if phase_cv is None else phase_cv
    return _Process(
        "onoff",
        float(rate),
        None,
        _finite("burst_factor", factor, "a finite number >= 1 (the burst rate / the calm rate)", factor >= 1),
        _finite("burst_share", share, "a number strictly between 0 and 1 (the share of time in bursts)", 0 < share < 1),
        _finite("burst_seconds", seconds, "a finite number > 0 (the mean length of a burst, s)", seconds > 0),
        _finite("phase_cv", phase, "a finite number >= 0 (the CV of the phases' lengths)", phase >= 0),
    )


def _onoff_phases(process: _Process, rng: np.random.Generator, until: float) -> tuple[FloatArray, FloatArray]:
    """The phases of an on-off process until its integrated rate reaches ``until``.

    Returns the phases' end times and the integrated rate at those ends (both increasing):
    calm first, then burst, calm, burst, ... Their lengths are gamma, of mean ``burst_seconds``
    (bursts) or ``burst_seconds * (1 - burst_share) / burst_share`` (calm) and coefficient of
    variation ``phase_cv`` (0: fixed lengths). Drawn ``_CYCLES_PER_DRAW`` cycles at a time, so a
    longer trace starts with the same phases.
    """
    assert process.rate is not None and process.burst_factor is not None and process.phase_cv is not None
    assert process.burst_share is not None and process.burst_seconds is not None
    calm_rate, burst_rate = _onoff_rates(process.rate, process.burst_factor, process.burst_share)
    calm_seconds = process.burst_seconds * (1.0 - process.burst_share) / process.burst_share
    means = np.tile([calm_seconds, process.burst_seconds], _CYCLES_PER_DRAW)
    rates = np.tile([calm_rate, burst_rate], _CYCLES_PER_DRAW)
    cv = process.phase_cv
    ends: list[FloatArray] = []
    integrated: list[FloatArray] = []
    t, mass = 0.0, 0.0
    while mass < until or not ends:
        if cv == 0:
            durations = means
        else:
            durations = np.maximum(rng.gamma(shape=1.0 / (cv * cv), scale=means * cv * cv), 1e-9)
        end = t + np.cumsum(durations)
        area = mass + np.cumsum(durations * rates)
        ends.append(end)
        integrated.append(area)
        t, mass = float(end[-1]), float(area[-1])
    return np.concatenate(ends), np.concatenate(integrated)


def _draw(n: int, process: _Process, seeds: np.random.SeedSequence) -> tuple[FloatArray, list[list[float]] | None]:
    """``n`` send times, and for ``onoff`` the ``[start, end]`` of its burst phases up to the last one."""
    arrivals = process.arrivals
    bursts: list[list[float]] | None = [] if arrivals == "onoff" else None
    if arrivals == "burst" or n <= 1:
        return np.zeros(n, dtype=np.float64), bursts
    rng = np.random.default_rng(seeds)
    rate = process.rate
    assert rate is not None
    if arrivals == "poisson":
        times: FloatArray = np.concatenate(([0.0], np.cumsum(rng.exponential(1.0 / rate, size=n - 1))))
    elif arrivals == "gamma":
        assert process.cv is not None
        k = 1.0 / (process.cv * process.cv)
        times = np.concatenate(([0.0], np.cumsum(rng.gamma(shape=k, scale=1.0 / (rate * k), size=n - 1))))
    else:
        # A Poisson process whose rate follows the phases: unit-rate arrivals (cumulated unit
        # exponential gaps) mapped through the inverse of the integrated rate.
        unit = np.concatenate(([0.0], np.cumsum(rng.exponential(1.0, size=n - 1))))
        phase_rng = np.random.default_rng(np.random.SeedSequence(seeds.entropy, spawn_key=(*seeds.spawn_key, 0)))
        ends, integrated = _onoff_phases(process, phase_rng, float(unit[-1]))
        times = np.interp(unit, np.concatenate(([0.0], integrated)), np.concatenate(([0.0], ends)))
        starts = np.concatenate(([0.0], ends[:-1]))
        last = float(times[-1])
        bursts = [
            [round(float(start), 3), round(min(float(end), last), 3)]
            for start, end in zip(starts[1::2], ends[1::2], strict=True)
            if start <= last
        ]
    rounded: FloatArray = times.round(T_DECIMALS)
    return rounded, bursts


def arrival_times(
    n: int,
    arrivals: str,
    *,
    rate: float | None = None,
    cv: float | None = 1.0,
    seed: int = 0,
    burst_factor: float | None = None,
    burst_share: float | None = None,
    burst_seconds: float | None = None,
    phase_cv: float | None = None,
) -> FloatArray:
    """``n`` send offsets in seconds: the first at 0, then ``n - 1`` gaps of the arrival process.

    ``burst``: all 0. ``poisson``: exponential gaps of mean ``1/rate``. ``gamma``: gamma gaps of
    mean ``1/rate`` and coefficient of variation ``cv`` (shape ``k = 1/cv**2``, scale
    ``1/(rate*k)``). ``onoff``: a two-phase Markov-modulated Poisson process of mean rate
    ``rate``: calm phases and burst phases ``burst_factor`` times as fast, alternating from a
    calm one at 0, the bursts ``burst_seconds`` long on average and a ``burst_share`` of the
    time; the phases' lengths are gamma with coefficient of variation ``phase_cv`` (1:
    exponential, a Markov-modulated Poisson process; 0: fixed lengths, a square wave). Defaults
    4, 0.2, 2 s, 1. Rounded to microseconds. The same ``seed`` gives the same
    times as :func:`generate` and :func:`retime`.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise InvalidRequest("n", f"must be an integer >= 0, got {n!r}")
    process = _check_process(arrivals, rate, cv, ARRIVALS, burst_factor, burst_share, burst_seconds, phase_cv)
    return _draw(n, process, _seeds(_check_seed(seed))[1])[0]


def _process_meta(process: _Process, bursts: list[list[float]] | None) -> dict[str, Any]:
    meta = process.onoff_meta()
    meta["bursts"] = bursts
    return meta


def retime(
    trace: Trace,
    arrivals: str = "as-recorded",
    *,
    rate: float | None = None,
    cv: float | None = 1.0,
    seed: int = 0,
    burst_factor: float | None = None,
    burst_share: float | None = None,
    burst_seconds: float | None = None,
    phase_cv: float | None = None,
) -> Trace:
    """The same requests, in the same order, at new send times.

    ``as-recorded``: unchanged. ``burst``: every ``t`` = 0. ``poisson``: exponential gaps at
    ``rate`` per second. ``gamma``: gamma gaps of mean ``1/rate`` and coefficient of variation
    ``cv`` (default 1). ``onoff``: calm and burst phases, as in :func:`arrival_times`. The
    first request is sent at 0. Raises :class:`InvalidRequest` naming ``arrivals``, ``rate``,
    ``cv``, ``burst_factor``, ``burst_share``, ``burst_seconds``, ``phase_cv`` or ``seed``.
    """
    if arrivals == "gamma" and cv is None:
        cv = 1.0
    process = _check_process(arrivals, rate, cv, RETIME_ARRIVALS, burst_factor, burst_share, burst_seconds, phase_cv)
    seed = _check_seed(seed)
    if arrivals == "as-recorded":
        return trace
    times, bursts = _draw(len(trace), process, _seeds(seed)[1])
    requests = tuple(dataclasses.replace(r, t=float(t)) for r, t in zip(trace.requests, times, strict=True))
    meta = dict(trace.meta)
    retimed: dict[str, Any] = {
        "arrivals": arrivals,
        "rate": rate,
        "cv": cv if arrivals == "gamma" else None,
        "seed": seed,
    }
    if arrivals == "onoff":
        retimed["onoff"] = _process_meta(process, bursts)
    meta["retimed"] = retimed
    return Trace(requests, meta)


def scale_time(trace: Trace, speed: float) -> Trace:
    """Every ``t`` divided by ``speed``: 2 replays twice as fast (double the rate), 0.5 half as fast."""
    if isinstance(speed, bool) or not isinstance(speed, int | float) or not (math.isfinite(speed) and speed > 0):
        raise InvalidRequest("speed", f"must be a finite number > 0, got {speed!r}")
    if speed == 1:
        return trace
    requests = tuple(dataclasses.replace(r, t=round(r.t / speed, T_DECIMALS)) for r in trace.requests)
    meta = dict(trace.meta)
    meta["speed"] = float(speed) * float(meta.get("speed", 1.0))
    return Trace(requests, meta)


# ---------------------------------------------------------------------------------------------
# The generator


@functools.lru_cache(maxsize=1)
def _embedded_store() -> SeriesStore:
    return SeriesStore.embedded()


def _model_mix(models: Sequence[str] | Mapping[str, float]) -> tuple[list[str], FloatArray]:
    from chronoserve.models.catalog import CATALOG, find_entry

    if isinstance(models, str):
        raise InvalidRequest("models", f"must be a list of model names, not one string ({models!r})")
    if isinstance(models, Mapping):
        names = list(models)
        weights = [models[m] for m in names]
    else:
        names = list(models)
        weights = [1.0] * len(names)
    if not names:
        raise InvalidRequest("models", "needs at least one model")
    if len(set(names)) != len(names):
        raise InvalidRequest("models", f"lists a model twice: {names}")
    for name in names:
        if not isinstance(name, str) or find_entry(name) is None:
            known = ", ".join(f"random/{k}" for k in CATALOG)
            raise InvalidRequest("models", f"unknown model {name!r}: not in the catalog (known: {known})")
    w = np.asarray(weights, dtype=np.float64)
    if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise InvalidRequest("weights", f"must be numbers >= 0 with a positive sum, got {weights}")
    return names, w / w.sum()


def _positive_ints(field: str, values: Sequence[int]) -> list[int]:
    out = list(values)
    if not out or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in out):
        raise InvalidRequest(field, f"must be a non-empty list of integers >= 1, got {out}")
    return out


def _deadline_classes(classes: Sequence[DeadlineClass | Sequence[Any]]) -> list[DeadlineClass]:
    """Check ``classes`` (``DeadlineClass``es or ``(name, deadline_ms, share[, priority])`` tuples)."""
    field = "deadline_classes"
    if isinstance(classes, str | bytes) or not isinstance(classes, Sequence) or not classes:
        raise InvalidRequest(
            field, f"must be a non-empty list of (name, deadline_ms, share, priority), got {classes!r}"
        )
    out: list[DeadlineClass] = []
    for item in classes:
        if isinstance(item, DeadlineClass):
            parts: tuple[Any, ...] = (item.name, item.deadline_ms, item.share, item.priority)
        elif isinstance(item, Sequence) and not isinstance(item, str | bytes) and len(item) in (3, 4):
            parts = (*item, None) if len(item) == 3 else tuple(item)
        else:
            raise InvalidRequest(field, f"each class is (name, deadline_ms, share, priority), got {item!r}")
        name, deadline, share, priority = parts
        if not isinstance(name, str) or not _CLASS_NAME.fullmatch(name) or len(name) > MAX_CLASS_NAME:
            raise InvalidRequest(
                field,
                f"a class name is 1 to {MAX_CLASS_NAME} letters, digits, '_', '.' or '-', got {name!r}",
            )
        if any(c.name == name for c in out):
            raise InvalidRequest(field, f"class {name!r} is given twice")
        if (
            isinstance(deadline, bool)
            or not isinstance(deadline, int | float)
            or not (math.isfinite(deadline) and 0 < deadline <= MAX_DEADLINE_MS)
        ):
            raise InvalidRequest(
                field, f"class {name!r}: deadline_ms must be > 0 and at most {MAX_DEADLINE_MS:.0f}, got {deadline!r}"
            )
        if isinstance(share, bool) or not isinstance(share, int | float) or not (math.isfinite(share) and share > 0):
            raise InvalidRequest(field, f"class {name!r}: share must be a number > 0, got {share!r}")
        if priority is not None and (
            isinstance(priority, bool)
            or not isinstance(priority, int | np.integer)
            or not 1 <= priority <= MAX_PRIORITY
        ):
            raise InvalidRequest(
                field,
                f"class {name!r}: priority must be an integer from 1 (highest) to {MAX_PRIORITY}, got {priority!r}",
            )
        out.append(DeadlineClass(name, float(deadline), float(share), None if priority is None else int(priority)))
    total = sum(c.share for c in out)
    if abs(total - 1.0) > SHARE_TOLERANCE:
        shares = " + ".join(f"{c.share:g}" for c in out)
        raise InvalidRequest(field, f"the shares must add up to 1, got {shares} = {total:g}")
    return [dataclasses.replace(c, share=round(c.share / total, 6)) for c in out]


def _observed_counts(store: SeriesStore, sid: str) -> npt.NDArray[np.int64]:
    """Cumulative count of observed target values: ``c[j] - c[i]`` observed among rows ``i..j-1``."""
    target = store.window(sid, horizon=1).target  # the whole series
    return np.concatenate(([0], np.cumsum(~np.isnan(target), dtype=np.int64)))


def generate(
    n: int,
    arrivals: str,
    rate: float | None = None,
    cv: float | None = 1.0,
    seed: int = 0,
    models: Sequence[str] | Mapping[str, float] = DEFAULT_MODELS,
    series: Sequence[str] | None = None,
    context_days: Sequence[int] = DEFAULT_CONTEXT_DAYS,
    horizons: Sequence[int] = DEFAULT_HORIZONS,
    covariates_share: float = 0.3,
    end_range: tuple[datetime, datetime] | None = None,
    *,
    known_future: bool = False,
    deadline_ms: float | None = None,
    deadline_classes: Sequence[DeadlineClass | Sequence[Any]] | None = None,
    burst_factor: float | None = None,
    burst_share: float | None = None,
    burst_seconds: float | None = None,
    phase_cv: float | None = None,
    store: SeriesStore | None = None,
) -> Trace:
    """A synthetic trace of ``n`` requests, reproducible from ``seed``.

    Each request draws a model from ``models`` (a list: equal weights; a mapping: name ->
    weight), a series from ``series`` (default: every series of ``store``, the embedded Beijing
    sites by default), a context of ``24 * d`` hours for ``d`` in ``context_days``, a horizon
    from ``horizons``, and ``use_covariates`` true for a ``covariates_share`` fraction of the
    requests whose model supports covariates (Chronos-2). ``end`` is an hour such that the
    context and the horizon lie inside the data and inside ``end_range`` (``earliest``, the
    first context hour allowed; ``latest``, the hour after the last forecast hour allowed), with
    at least one observed value in the context and one in the horizon (redrawn otherwise).
    ``known_future``: the covariate requests also ask for the known future covariates.
    ``deadline_ms``: given to every request. ``deadline_classes`` (instead of ``deadline_ms``):
    :class:`DeadlineClass` objects, or ``(name, deadline_ms, share, priority)`` tuples, whose shares
    add up to 1; each request draws one by share (from a stream of its own: the other fields
    are those drawn without classes) and gets its ``deadline_ms``, ``priority`` and
    ``deadline_class``. ``request_id`` is ``f"{arrivals}-{i:04d}"``.

    Arrivals as in :func:`arrival_times`. Raises :class:`InvalidRequest` naming the argument.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InvalidRequest("n", f"must be an integer >= 1, got {n!r}")
    if arrivals == "gamma" and cv is None:
        cv = 1.0
    process = _check_process(arrivals, rate, cv, ARRIVALS, burst_factor, burst_share, burst_seconds, phase_cv)
    seed = _check_seed(seed)
    names, weights = _model_mix(models)
    days = _positive_ints("context_days", context_days)
    hours = _positive_ints("horizons", horizons)
    if not (isinstance(covariates_share, int | float) and 0.0 <= covariates_share <= 1.0):
        raise InvalidRequest("covariates_share", f"must be a number in [0, 1], got {covariates_share!r}")
    if deadline_ms is not None:
        deadline_ms = _finite(
            "deadline_ms",
            deadline_ms,
            f"a finite number > 0 and at most {MAX_DEADLINE_MS:.0f} (a day)",
            not isinstance(deadline_ms, bool)
            and isinstance(deadline_ms, int | float)
            and 0 < deadline_ms <= MAX_DEADLINE_MS,
        )
    classes = None
    if deadline_classes is not None:
        if deadline_ms is not None:
            raise InvalidRequest(
                "deadline_classes", "cannot be combined with deadline_ms (one deadline for every request): give one"
            )
        classes = _deadline_classes(deadline_classes)

    from chronoserve.models.catalog import find_entry

    entries = [find_entry(m) for m in names]
    covariate_capable = np.array([e is not None and e.supports_covariates for e in entries])
    for name, entry in zip(names, entries, strict=True):
        assert entry is not None
        too_long = [h for h in hours if h > entry.max_horizon]
        if too_long:
            raise InvalidRequest("horizons", f"{too_long} exceed {name}'s maximum horizon of {entry.max_horizon}")

    store = store if store is not None else _embedded_store()
    ids = list(store.ids()) if series is None else list(series)
    if not ids:
        raise InvalidRequest("series", "needs at least one series id")
    try:
        infos = [store.info(sid) for sid in ids]
    except InvalidRequest as exc:  # field "city": this argument is "series"
        raise InvalidRequest("series", exc.message) from None
    ids = [info.id for info in infos]
    counts = [_observed_counts(store, sid) for sid in ids]

    content_seeds, arrival_seeds, class_seeds = _seeds(seed)
    content = np.random.default_rng(content_seeds)
    model_i = content.choice(len(names), size=n, p=weights)
    city_i = content.integers(0, len(ids), size=n)
    ctx = np.asarray(days, dtype=np.int64)[content.integers(0, len(days), size=n)] * 24
    hor = np.asarray(hours, dtype=np.int64)[content.integers(0, len(hours), size=n)]
    cov = covariate_capable[model_i] & (content.random(size=n) < covariates_share)
    where = content.random(size=n)

    requests: list[TraceRequest] = []
    for i in range(n):
        info, c = infos[city_i[i]], counts[city_i[i]]
        lo, hi = info.start, info.end + _HOUR  # first row, the hour after the last row
        if end_range is not None:
            lo, hi = max(lo, end_range[0]), min(hi, end_range[1])
        n_ctx, n_hor = int(ctx[i]), int(hor[i])
        first = (lo - info.start) // _HOUR + n_ctx  # row index of the earliest end allowed
        last = (hi - info.start) // _HOUR - n_hor
        choices = last - first + 1
        if choices < 1:
            raise InvalidRequest(
                "end_range",
                f"no end hour fits a {n_ctx}-hour context and a {n_hor}-hour horizon of {info.id!r} "
                f"between {lo.isoformat()} and {hi.isoformat()}",
            )
        u = float(where[i])
        for _ in range(1000):
            e = first + min(int(u * choices), choices - 1)
            if c[e] - c[e - n_ctx] > 0 and c[e + n_hor] - c[e] > 0:
                break
            u = float(content.random())
        else:
            raise InvalidRequest(
                "series", f"{info.id!r} has too few observed values for {n_ctx}-hour contexts and {n_hor}-hour horizons"
            )
        requests.append(
            TraceRequest(
                t=0.0,
                request_id=f"{arrivals}-{i:04d}",
                model_name=names[model_i[i]],
                city=info.id,
                context_hours=n_ctx,
                horizon_hours=n_hor,
                use_covariates=bool(cov[i]),
                end=info.start + e * _HOUR,
                known_future_covariates=bool(cov[i]) and known_future,
                deadline_ms=None if deadline_ms is None else float(deadline_ms),
            )
        )
    if classes is not None:
        shares = np.array([c.share for c in classes])
        class_i = np.random.default_rng(class_seeds).choice(len(classes), size=n, p=shares / shares.sum())
        requests = [
            dataclasses.replace(
                r,
                deadline_ms=classes[k].deadline_ms,
                priority=classes[k].priority,
                deadline_class=classes[k].name,
            )
            for r, k in zip(requests, class_i, strict=True)
        ]
    times, bursts = _draw(n, process, arrival_seeds)
    requests = [dataclasses.replace(r, t=float(t)) for r, t in zip(requests, times, strict=True)]
    meta: dict[str, Any] = {
        "generator": "chronoserve.traces.generate",
        "arrivals": arrivals,
        "rate": None if rate is None else float(rate),
        "cv": None if arrivals in ("burst", "onoff") else (1.0 if arrivals == "poisson" else float(cv or 1.0)),
    }
    if arrivals == "onoff":
        meta["onoff"] = _process_meta(process, bursts)
    meta |= {
        "n": n,
        "seed": seed,
        "models": {m: round(float(w), 6) for m, w in zip(names, weights, strict=True)},
        "series": ids if series is not None else "all",
        "context_days": days,
        "horizons": hours,
        "covariates_share": float(covariates_share),
        "known_future": known_future,
        "end_range": None if end_range is None else [end_range[0].isoformat(), end_range[1].isoformat()],
        "deadline_ms": deadline_ms,
    }
    if classes is not None:
        meta["deadline_classes"] = [c.to_json() for c in classes]
    meta |= {
        "created_by": CREATED_BY,
        "version": __version__,
    }
    return Trace(tuple(requests), meta)


# ---------------------------------------------------------------------------------------------
# Checking


#: The store's argument names (``SeriesStore.window``) -> a trace request's keys.
_TRACE_KEYS = {
    "series": "city",
    "horizon": "horizon_hours",
    "context": "context_hours",
    "covariates": "use_covariates",
    "known_future": "known_future_covariates",
}


def check_trace(trace: Trace, store: SeriesStore | None = None) -> list[str]:
    """What would go wrong replaying ``trace`` against ``store`` (default: the embedded data).

    One ``"request_id: field: message"`` per problem: a model not in the catalog, covariates on
    a model without covariate support, a horizon beyond the model's maximum, a window the data
    cannot give (:meth:`SeriesStore.window`), no observed value over the horizon. Empty: all good.
    """
    from chronoserve.models.catalog import find_entry

    store = store if store is not None else _embedded_store()
    problems: list[str] = []
    for r in trace.requests:
        entry = find_entry(r.model_name)
        if entry is None:
            problems.append(f"{r.request_id}: model_name: {r.model_name!r} is not in the catalog")
        else:
            if r.use_covariates and not entry.supports_covariates:
                problems.append(f"{r.request_id}: use_covariates: {r.model_name} does not take covariates")
            if r.horizon_hours > entry.max_horizon:
                problems.append(
                    f"{r.request_id}: horizon_hours: {r.horizon_hours} exceeds {r.model_name}'s "
                    f"maximum of {entry.max_horizon}"
                )
        try:
            window = store.window(
                r.city,
                horizon=r.horizon_hours,
                context=r.context_hours,
                end=r.end,
                covariates=r.use_covariates,
                known_future=r.known_future_covariates,
            )
        except InvalidRequest as exc:  # named by the trace's keys, not the store's arguments
            problems.append(f"{r.request_id}: {_TRACE_KEYS.get(exc.field, exc.field)}: {exc.message}")
            continue
        if r.end is not None and (window.actual is None or not np.any(~np.isnan(window.actual))):
            problems.append(f"{r.request_id}: horizon_hours: no observed value over the horizon to score against")
    return problems
