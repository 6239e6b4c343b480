"""Arrival processes, retiming, the synthetic trace generator, and checking a trace against the data.

Everything random comes from numpy ``default_rng``, seeded: ``SeedSequence(seed).spawn(2)``
gives two independent streams, one for the requests' content and one for the arrival times.
So traces generated with the same seed and different arrivals hold the same requests, and
``retime(generate(n, "burst", seed=s), "poisson", rate=r, seed=s)`` has the same ``t``s as
``generate(n, "poisson", rate=r, seed=s)``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt

from chronoserve import __version__
from chronoserve.data import SeriesStore
from chronoserve.errors import InvalidRequest

from ._format import T_DECIMALS, Trace, TraceRequest

#: The arrival processes :func:`generate` draws; :func:`retime` also takes ``"as-recorded"``.
ARRIVALS: tuple[str, ...] = ("burst", "poisson", "gamma")
RETIME_ARRIVALS: tuple[str, ...] = ("as-recorded", *ARRIVALS)
#: The default model mix of the generator (and of the shipped traces): name -> weight.
DEFAULT_MODELS: Mapping[str, float] = {
    "random/chronos-bolt-tiny": 0.45,
    "random/chronos-bolt-mini": 0.35,
    "random/chronos-2": 0.2,
}
DEFAULT_CONTEXT_DAYS: tuple[int, ...] = (2, 4, 8, 10, 14)
DEFAULT_HORIZONS: tuple[int, ...] = (4, 8, 12, 24, 48)
CREATED_BY = "chronoserve trace gen"
_HOUR = timedelta(hours=1)

FloatArray = npt.NDArray[np.float64]


def _streams(seed: int) -> tuple[np.random.Generator, np.random.Generator]:
    """(content, arrivals): two independent generators from one seed."""
    content, arrivals = np.random.SeedSequence(seed).spawn(2)
    return np.random.default_rng(content), np.random.default_rng(arrivals)


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise InvalidRequest("seed", f"must be an integer >= 0, got {seed!r}")
    return int(seed)


def _check_process(arrivals: str, rate: float | None, cv: float | None, allowed: Sequence[str]) -> None:
    if arrivals not in allowed:
        raise InvalidRequest("arrivals", f"must be one of {', '.join(allowed)}; got {arrivals!r}")
    if arrivals in ("poisson", "gamma"):
        if rate is None:
            raise InvalidRequest("rate", f"{arrivals} arrivals need a rate, in requests per second")
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not (math.isfinite(rate) and rate > 0):
            raise InvalidRequest("rate", f"must be a finite number > 0 (requests per second), got {rate!r}")
    elif rate is not None:
        raise InvalidRequest("rate", f"applies only to poisson and gamma arrivals, not {arrivals}")
    if arrivals == "gamma":
        if cv is None or isinstance(cv, bool) or not isinstance(cv, int | float) or not (math.isfinite(cv) and cv > 0):
            raise InvalidRequest("cv", f"must be a finite number > 0, got {cv!r}")
    elif cv is not None and cv != 1.0:
        raise InvalidRequest("cv", f"applies only to gamma arrivals (poisson gaps have CV 1), not {arrivals}")


def _draw_times(n: int, arrivals: str, rate: float | None, cv: float | None, rng: np.random.Generator) -> FloatArray:
    if arrivals == "burst" or n <= 1:
        return np.zeros(n, dtype=np.float64)
    assert rate is not None
    if arrivals == "poisson":
        gaps = rng.exponential(1.0 / rate, size=n - 1)
    else:
        assert cv is not None
        k = 1.0 / (cv * cv)
        gaps = rng.gamma(shape=k, scale=1.0 / (rate * k), size=n - 1)
    times: FloatArray = np.concatenate(([0.0], np.cumsum(gaps)))
    rounded: FloatArray = times.round(T_DECIMALS)
    return rounded


def arrival_times(
    n: int, arrivals: str, *, rate: float | None = None, cv: float | None = 1.0, seed: int = 0
) -> FloatArray:
    """``n`` send offsets in seconds: the first at 0, then ``n - 1`` gaps of the arrival process.

    ``burst``: all 0. ``poisson``: exponential gaps of mean ``1/rate``. ``gamma``: gamma gaps of
    mean ``1/rate`` and coefficient of variation ``cv`` (shape ``k = 1/cv**2``, scale
    ``1/(rate*k)``). Rounded to microseconds. The same ``seed`` gives the same times as
    :func:`generate` and :func:`retime`.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise InvalidRequest("n", f"must be an integer >= 0, got {n!r}")
    _check_process(arrivals, rate, cv, ARRIVALS)
    return _draw_times(n, arrivals, rate, cv, _streams(_check_seed(seed))[1])


def retime(
    trace: Trace,
    arrivals: str = "as-recorded",
    *,
    rate: float | None = None,
    cv: float | None = 1.0,
    seed: int = 0,
) -> Trace:
    """The same requests, in the same order, at new send times.

    ``as-recorded``: unchanged. ``burst``: every ``t`` = 0. ``poisson``: exponential gaps at
    ``rate`` per second. ``gamma``: gamma gaps of mean ``1/rate`` and coefficient of variation
    ``cv`` (default 1). The first request is sent at 0. Raises :class:`InvalidRequest` naming
    ``arrivals``, ``rate``, ``cv`` or ``seed``.
    """
    if arrivals == "gamma" and cv is None:
        cv = 1.0
    _check_process(arrivals, rate, cv, RETIME_ARRIVALS)
    seed = _check_seed(seed)
    if arrivals == "as-recorded":
        return trace
    times = _draw_times(len(trace), arrivals, rate, cv, _streams(seed)[1])
    requests = tuple(dataclasses.replace(r, t=float(t)) for r, t in zip(trace.requests, times, strict=True))
    meta = dict(trace.meta)
    meta["retimed"] = {"arrivals": arrivals, "rate": rate, "cv": cv if arrivals == "gamma" else None, "seed": seed}
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
    ``deadline_ms``: given to every request. ``request_id`` is ``f"{arrivals}-{i:04d}"``.

    Arrivals as in :func:`arrival_times`. Raises :class:`InvalidRequest` naming the argument.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InvalidRequest("n", f"must be an integer >= 1, got {n!r}")
    if arrivals == "gamma" and cv is None:
        cv = 1.0
    _check_process(arrivals, rate, cv, ARRIVALS)
    seed = _check_seed(seed)
    names, weights = _model_mix(models)
    days = _positive_ints("context_days", context_days)
    hours = _positive_ints("horizons", horizons)
    if not (isinstance(covariates_share, int | float) and 0.0 <= covariates_share <= 1.0):
        raise InvalidRequest("covariates_share", f"must be a number in [0, 1], got {covariates_share!r}")
    if deadline_ms is not None and not (math.isfinite(deadline_ms) and deadline_ms > 0):
        raise InvalidRequest("deadline_ms", f"must be a finite number > 0, got {deadline_ms!r}")

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

    content, arrival_rng = _streams(seed)
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
    times = _draw_times(n, arrivals, rate, cv, arrival_rng)
    requests = [dataclasses.replace(r, t=float(t)) for r, t in zip(requests, times, strict=True)]
    meta: dict[str, Any] = {
        "generator": "chronoserve.traces.generate",
        "arrivals": arrivals,
        "rate": None if rate is None else float(rate),
        "cv": None if arrivals == "burst" else (1.0 if arrivals == "poisson" else float(cv or 1.0)),
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
