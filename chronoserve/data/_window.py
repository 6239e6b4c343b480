"""Cutting one forecast's window from a series: the context, and what is known of the horizon.

:func:`cut_window` checks its arguments and raises :class:`~chronoserve.errors.InvalidRequest`
naming the parameter at fault by its own name (``horizon``, ``context``, ``end``,
``covariates``, ``known_future``); the HTTP server maps those to its field names
(:func:`chronoserve.server.convert.http_field`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np

from ..errors import InvalidRequest
from ..limits import MAX_HORIZON as LIMITS_MAX_HORIZON
from ..limits import check_int
from ._reader import HOUR, FloatArray, Series, iso

#: A ceiling on ``horizon`` (:data:`chronoserve.limits.MAX_HORIZON`) so that a silly request
#: cannot allocate millions of values; the model's own limit (checked later) is far lower.
MAX_HORIZON = LIMITS_MAX_HORIZON


@dataclass(frozen=True, eq=False)
class Window:
    """What a forecast from a named series needs: the context, and what is known of the horizon.

    Every array is a fresh float32 copy, so callers may modify it.
    """

    series: str
    target: FloatArray
    """The context, oldest first; NaN marks a missing reading."""
    past_covariates: dict[str, FloatArray] | None
    """Each covariate over the context (same length as ``target``), when covariates were asked for."""
    future_covariates: dict[str, FloatArray] | None
    """Each covariate's real values over the horizon, only when ``known_future`` was asked for."""
    context_start: datetime
    context_end: datetime
    """First and last timestamp of the context; the forecast starts one hour after ``context_end``."""
    horizon: int
    actual: FloatArray | None
    """The real target over the horizon (NaN where missing or past the end of the data); ``None`` when
    no hour of the horizon is in the data."""

    @property
    def forecast_start(self) -> datetime:
        """The first forecast hour."""
        return self.context_end + HOUR

    @property
    def forecast_timestamps(self) -> list[datetime]:
        """Every forecast hour (built on demand: a server builds them only for the answer it gives)."""
        start = self.forecast_start
        return [start + i * HOUR for i in range(self.horizon)]

    @property
    def context_length(self) -> int:
        return int(self.target.shape[0])


def _check_end(end: object) -> datetime:
    if isinstance(end, str):
        try:
            end = datetime.fromisoformat(end.strip())
        except ValueError:
            raise InvalidRequest("end", f"{end!r} is not an ISO 8601 timestamp (e.g. 2016-12-01T00:00)") from None
    if not isinstance(end, datetime):
        raise InvalidRequest("end", f"must be a timestamp, got {end!r}")
    if end.tzinfo is not None:
        raise InvalidRequest("end", f"{iso(end)} has a time zone; give naive local time, like the data's timestamps")
    if end.minute or end.second or end.microsecond:
        raise InvalidRequest("end", f"{iso(end)} is not on the hour (the data is hourly)")
    return end


def cut_window(
    s: Series,
    *,
    horizon: int,
    context: int | None = None,
    end: datetime | str | None = None,
    covariates: bool = False,
    known_future: bool = False,
    max_context: int | None = None,
) -> Window:
    """The window of ``s`` for one forecast; see :meth:`chronoserve.data.SeriesStore.window`."""
    h = check_int("horizon", horizon, 1)
    if h > MAX_HORIZON:
        raise InvalidRequest("horizon", f"{h} exceeds the limit of {MAX_HORIZON} hours")
    if max_context is not None and (isinstance(max_context, bool) or max_context < 1):
        raise ValueError(f"max_context must be a positive integer, got {max_context!r}")
    if known_future and not covariates:
        raise InvalidRequest("known_future", "needs the covariates: set use_covariates too")

    last = s.info.end
    if end is None:
        e, end_dt = s.rows, last + HOUR
    else:
        end_dt = _check_end(end)
        lo, hi = s.start + HOUR, last + HOUR
        if not lo <= end_dt <= hi:
            raise InvalidRequest(
                "end",
                f"{iso(end_dt)} is outside what {s.info.id!r} allows: from {iso(lo)} "
                f"(one hour of history) to {iso(hi)} (the hour after its last row)",
            )
        e = (end_dt - s.start) // HOUR
    when = iso(end_dt)

    if context is None:
        n = e if max_context is None else min(e, max_context)
    else:
        n = check_int("context", context, 1)
        if n > e:
            raise InvalidRequest(
                "context", f"{n} hours asked, but {s.info.id!r} has only {e} hours of history before {when}"
            )
        if max_context is not None and n > max_context:
            raise InvalidRequest("context", f"{n} exceeds the maximum context of {max_context} hours")

    if covariates and not s.covariates:
        raise InvalidRequest("covariates", f"series {s.info.id!r} has no covariate columns")
    available = s.rows - e  # rows at or after ``end``
    if known_future and available < h:
        raise InvalidRequest(
            "known_future",
            f"the data of {s.info.id!r} ends at {iso(last)}; a {h}-hour horizon from {when} needs "
            f"covariate values until {iso(end_dt + (h - 1) * HOUR)}",
        )

    target = s.target[e - n : e].copy()
    if not np.any(~np.isnan(target)):
        raise InvalidRequest("context", f"no observed PM2.5 value in the {n} hours before {when}")

    past = {name: arr[e - n : e].copy() for name, arr in s.covariates.items()} if covariates else None
    future = {name: arr[e : e + h].copy() for name, arr in s.covariates.items()} if known_future else None
    actual: FloatArray | None = None
    if available > 0:
        actual = np.full(h, np.nan, dtype=np.float32)
        k = min(h, available)
        actual[:k] = s.target[e : e + k]
    return Window(
        series=s.info.id,
        target=target,
        past_covariates=past,
        future_covariates=future,
        context_start=end_dt - n * HOUR,
        context_end=end_dt - HOUR,
        horizon=h,
        actual=actual,
    )
