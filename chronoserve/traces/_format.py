"""The trace file format: JSONL, one request a line, an optional ``{"meta": {...}}`` first line.

See docs/traces.md for the format. Only the standard library, numpy and
:mod:`chronoserve.limits` (the HTTP API's bounds on ``deadline_ms`` and ``priority``):
``chronoserve replay`` reads a trace before it imports any model code.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from chronoserve.limits import MAX_DEADLINE_SECONDS, MAX_PRIORITY

#: The keys a request line may have; the first seven are required.
REQUIRED_KEYS: tuple[str, ...] = (
    "t",
    "request_id",
    "model_name",
    "city",
    "context_hours",
    "horizon_hours",
    "use_covariates",
)
OPTIONAL_KEYS: tuple[str, ...] = (
    "end",
    "known_future_covariates",
    "quantile_levels",
    "seed",
    "deadline_ms",
    "priority",
    "deadline_class",
)
KNOWN_KEYS: frozenset[str] = frozenset(REQUIRED_KEYS + OPTIONAL_KEYS)
#: ``t`` is written rounded to this many decimals (microseconds).
T_DECIMALS = 6
MAX_REQUEST_ID = 200  # as the HTTP API's ``request_id``
#: The largest ``deadline_ms``: the HTTP API's bound (``MAX_DEADLINE_SECONDS``, a day).
MAX_DEADLINE_MS = MAX_DEADLINE_SECONDS * 1000.0
#: The longest ``deadline_class`` name.
MAX_CLASS_NAME = 64


class TraceError(ValueError):
    """A trace file that cannot be read: ``str(e)`` is ``path:line: message``."""

    def __init__(self, path: str, line: int | None, message: str) -> None:
        where = path if line is None else f"{path}:{line}"
        super().__init__(f"{where}: {message}")
        self.path = path
        self.line = line
        self.message = message


@dataclass(frozen=True)
class TraceRequest:
    """One request of a trace: when to send it (``t``) and what to send."""

    t: float
    """Send offset in seconds from the start of the replay (>= 0)."""
    request_id: str
    model_name: str
    city: str
    context_hours: int
    horizon_hours: int
    use_covariates: bool = False
    end: datetime | None = None
    """The first forecast hour (naive local time, on the hour); ``None``: the server's default."""
    known_future_covariates: bool = False
    quantile_levels: tuple[float, ...] | None = None
    seed: int | None = None
    deadline_ms: float | None = None
    """The request's latency budget in milliseconds (sent: the server's ``deadline_ms``)."""
    priority: int | None = None
    """Priority class, 1 (highest) to ``MAX_PRIORITY`` (sent: the server's ``priority``)."""
    deadline_class: str | None = None
    """The name of the generator's deadline class the request was drawn from; not sent."""

    def to_http_body(self) -> dict[str, Any]:
        """The JSON body of ``POST /forecast`` (``ForecastIn``): every field but ``t`` and ``deadline_class``.

        ``deadline_ms`` and ``priority`` are sent when set, so the server (or the in-process
        engine) enforces the deadline and orders by priority as it would for a real client.
        """
        body: dict[str, Any] = {
            "request_id": self.request_id,
            "model_name": self.model_name,
            "city": self.city,
            "context_hours": self.context_hours,
            "horizon_hours": self.horizon_hours,
            "use_covariates": self.use_covariates,
        }
        if self.end is not None:
            body["end"] = self.end.isoformat()
        if self.known_future_covariates:
            body["known_future_covariates"] = True
        if self.quantile_levels is not None:
            body["quantile_levels"] = list(self.quantile_levels)
        if self.seed is not None:
            body["seed"] = self.seed
        if self.deadline_ms is not None:
            body["deadline_ms"] = float(self.deadline_ms)
        if self.priority is not None:
            body["priority"] = self.priority
        return body

    def to_json(self) -> dict[str, Any]:
        """The request's line as a dict, in the file's key order (absent optional keys left out)."""
        line: dict[str, Any] = {
            "t": round(float(self.t), T_DECIMALS),
            "request_id": self.request_id,
            "model_name": self.model_name,
            "city": self.city,
        }
        if self.end is not None:
            line["end"] = self.end.isoformat()
        line["context_hours"] = self.context_hours
        line["horizon_hours"] = self.horizon_hours
        line["use_covariates"] = self.use_covariates
        if self.known_future_covariates:
            line["known_future_covariates"] = True
        if self.quantile_levels is not None:
            line["quantile_levels"] = list(self.quantile_levels)
        if self.seed is not None:
            line["seed"] = self.seed
        if self.deadline_ms is not None:
            line["deadline_ms"] = float(self.deadline_ms)
        if self.priority is not None:
            line["priority"] = self.priority
        if self.deadline_class is not None:
            line["deadline_class"] = self.deadline_class
        return line


def _counts(values: Iterator[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


@dataclass(frozen=True, eq=False)
class Trace:
    """A trace: its requests, sorted by ``t``, and the free-form ``meta`` of its first line."""

    requests: tuple[TraceRequest, ...]
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "requests", tuple(self.requests))
        seen: set[str] = set()
        prev = 0.0
        for i, r in enumerate(self.requests):
            if not (math.isfinite(r.t) and r.t >= 0):
                raise ValueError(f"request {i} ({r.request_id!r}): t must be a finite number >= 0, got {r.t!r}")
            if r.t < prev:
                raise ValueError(f"request {i} ({r.request_id!r}): t={r.t} is before the previous t={prev}")
            if r.request_id in seen:
                raise ValueError(f"request {i}: duplicate request_id {r.request_id!r}")
            seen.add(r.request_id)
            prev = r.t

    def __len__(self) -> int:
        return len(self.requests)

    def __iter__(self) -> Iterator[TraceRequest]:
        return iter(self.requests)

    def times(self) -> npt.NDArray[np.float64]:
        """Every request's ``t``, in order."""
        return np.fromiter((r.t for r in self.requests), dtype=np.float64, count=len(self.requests))

    def gaps(self) -> npt.NDArray[np.float64]:
        """The ``n - 1`` inter-arrival gaps, in seconds."""
        return np.diff(self.times())

    @property
    def duration(self) -> float:
        """The last request's ``t``: seconds from the start until everything has been sent."""
        return self.requests[-1].t if self.requests else 0.0

    @property
    def rate(self) -> float:
        """Measured arrival rate, requests per second: gaps / (last t - first t).

        ``inf`` when every request has the same ``t`` (a burst); ``nan`` with fewer than 2 requests.
        """
        n = len(self.requests)
        if n < 2:
            return math.nan
        span = self.requests[-1].t - self.requests[0].t
        return math.inf if span == 0 else (n - 1) / span

    @property
    def gap_cv(self) -> float:
        """Coefficient of variation of the gaps (population std / mean); ``nan`` when undefined."""
        gaps = self.gaps()
        if gaps.size < 2:
            return math.nan
        mean = float(gaps.mean())
        return math.nan if mean == 0 else float(gaps.std()) / mean

    def models(self) -> dict[str, int]:
        """Model name -> number of requests, in order of first appearance."""
        return _counts(r.model_name for r in self.requests)

    def cities(self) -> dict[str, int]:
        """Series id -> number of requests, in order of first appearance."""
        return _counts(r.city for r in self.requests)

    def classes(self) -> dict[str, int]:
        """Deadline class -> number of requests, in order of first appearance (requests without one left out)."""
        return _counts(r.deadline_class for r in self.requests if r.deadline_class is not None)

    def head(self, n: int) -> Trace:
        """The first ``n`` requests (same meta)."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        return Trace(self.requests[:n], dict(self.meta))

    def timing(self) -> str:
        """One line: requests, duration, mean rate, CV of the gaps."""
        rate, cv = self.rate, self.gap_cv
        rate_s = "n/a" if math.isnan(rate) else ("inf (burst)" if math.isinf(rate) else f"{rate:.2f}/s")
        cv_s = "n/a" if math.isnan(cv) else f"{cv:.3f}"
        return f"{len(self.requests)} requests, duration {self.duration:.3f} s, mean rate {rate_s}, gap CV {cv_s}"

    def summary(self) -> str:
        """One line: :meth:`timing`, covariate share, models, and the deadline classes if any."""
        cov = sum(r.use_covariates for r in self.requests)
        models = ", ".join(f"{m} {c}" for m, c in self.models().items())
        classes = self.classes()
        tail = "; classes: " + ", ".join(f"{k} {c}" for k, c in classes.items()) if classes else ""
        return f"{self.timing()}, {cov} with covariates; models: {models}{tail}"


# ---------------------------------------------------------------------------------------------
# Writing


def dumps_trace(trace: Trace) -> str:
    """The trace as JSONL text (meta line first when ``trace.meta`` is not empty)."""
    lines = []
    if trace.meta:
        lines.append(json.dumps({"meta": dict(trace.meta)}, ensure_ascii=False, allow_nan=False))
    lines.extend(json.dumps(r.to_json(), ensure_ascii=False, allow_nan=False) for r in trace.requests)
    return "".join(line + "\n" for line in lines)


def write_trace(trace: Trace, path: str | Path) -> None:
    """Write ``trace`` to ``path`` (UTF-8, ``\\n`` line ends)."""
    Path(path).write_text(dumps_trace(trace), encoding="utf-8", newline="\n")


# ---------------------------------------------------------------------------------------------
# Reading


class _LineError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _no_constants(name: str) -> Any:
    raise _LineError(f"{name} is not valid JSON (numbers must be finite)")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _LineError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list"}.get(
        type(value), "an object" if isinstance(value, dict) else type(value).__name__
    )


def _number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _LineError(f"{key!r} must be a number, got {_type_name(value)} ({value!r})")
    return float(value)


def _int(key: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _LineError(f"{key!r} must be an integer, got {_type_name(value)} ({value!r})")
    if value < minimum:
        raise _LineError(f"{key!r} must be >= {minimum}, got {value}")
    return value


def _str(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise _LineError(f"{key!r} must be a string, got {_type_name(value)} ({value!r})")
    if not value.strip():
        raise _LineError(f"{key!r} must not be empty")
    return value


def _bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _LineError(f"{key!r} must be true or false, got {_type_name(value)} ({value!r})")
    return value


def _end(value: Any) -> datetime:
    if not isinstance(value, str):
        raise _LineError(f"'end' must be an ISO 8601 hour (a string), got {_type_name(value)} ({value!r})")
    try:
        end = datetime.fromisoformat(value)
    except ValueError:
        raise _LineError(f"'end' must be an ISO 8601 hour such as 2016-12-01T00:00:00, got {value!r}") from None
    if end.tzinfo is not None:
        raise _LineError(f"'end' must be a naive local hour (no UTC offset), got {value!r}")
    if end.minute or end.second or end.microsecond:
        raise _LineError(f"'end' must be on the hour, got {value!r}")
    return end


def _levels(value: Any) -> tuple[float, ...]:
    if not isinstance(value, list) or not value:
        raise _LineError(f"'quantile_levels' must be a non-empty list of numbers, got {value!r}")
    levels = tuple(_number("quantile_levels", q) for q in value)
    if any(not 0.0 < q < 1.0 for q in levels):
        raise _LineError(f"'quantile_levels' must lie strictly between 0 and 1, got {value!r}")
    if len(set(levels)) != len(levels):
        raise _LineError(f"'quantile_levels' must be distinct, got {value!r}")
    return levels


def _request(obj: dict[str, Any]) -> TraceRequest:
    unknown = [k for k in obj if k not in KNOWN_KEYS]
    if unknown:
        import difflib

        key = unknown[0]
        close = difflib.get_close_matches(key, sorted(KNOWN_KEYS), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise _LineError(f"unknown key {key!r}{hint} (known: {', '.join(REQUIRED_KEYS + OPTIONAL_KEYS)})")
    missing = [k for k in REQUIRED_KEYS if k not in obj]
    if missing:
        raise _LineError(f"missing key{'s' if len(missing) > 1 else ''} {', '.join(repr(k) for k in missing)}")
    t = _number("t", obj["t"])
    if t < 0:
        raise _LineError(f"'t' must be >= 0, got {t}")
    request_id = _str("request_id", obj["request_id"])
    if len(request_id) > MAX_REQUEST_ID:
        raise _LineError(f"'request_id' is longer than {MAX_REQUEST_ID} characters")
    use_covariates = _bool("use_covariates", obj["use_covariates"])
    known_future = _bool("known_future_covariates", obj.get("known_future_covariates", False))
    if known_future and not use_covariates:
        raise _LineError("'known_future_covariates' needs 'use_covariates': true")
    end = obj.get("end")
    levels = obj.get("quantile_levels")
    seed = obj.get("seed")
    deadline = obj.get("deadline_ms")
    deadline_ms = None if deadline is None else _number("deadline_ms", deadline)
    if deadline_ms is not None and not 0 < deadline_ms <= MAX_DEADLINE_MS:
        raise _LineError(f"'deadline_ms' must be > 0 and at most {MAX_DEADLINE_MS:.0f} (a day), got {deadline}")
    priority = obj.get("priority")
    if priority is not None:
        priority = _int("priority", priority, 1)
        if priority > MAX_PRIORITY:
            raise _LineError(f"'priority' must be <= {MAX_PRIORITY} (1 is the highest), got {priority}")
    deadline_class = obj.get("deadline_class")
    if deadline_class is not None:
        deadline_class = _str("deadline_class", deadline_class)
        if len(deadline_class) > MAX_CLASS_NAME:
            raise _LineError(f"'deadline_class' is longer than {MAX_CLASS_NAME} characters")
    return TraceRequest(
        t=t,
        request_id=request_id,
        model_name=_str("model_name", obj["model_name"]),
        city=_str("city", obj["city"]),
        context_hours=_int("context_hours", obj["context_hours"], 1),
        horizon_hours=_int("horizon_hours", obj["horizon_hours"], 1),
        use_covariates=use_covariates,
        end=None if end is None else _end(end),
        known_future_covariates=known_future,
        quantile_levels=None if levels is None else _levels(levels),
        seed=None if seed is None else _int("seed", seed, 0),
        deadline_ms=deadline_ms,
        priority=priority,
        deadline_class=deadline_class,
    )


def loads_trace(text: str, source: str = "<trace>") -> Trace:
    """Parse JSONL ``text``; errors are :class:`TraceError` naming ``source`` and the line."""
    meta: dict[str, Any] = {}
    requests: list[TraceRequest] = []
    first_line: dict[str, int] = {}
    prev_t, prev_line = 0.0, 0
    seen_content = False
    lines: Sequence[str] = text.split("\n")
    for number, raw in enumerate(lines, start=1):
        line = raw[1:] if number == 1 and raw.startswith("\ufeff") else raw
        if not line.strip():
            continue
        try:
            try:
                obj = json.loads(line, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
            except json.JSONDecodeError as exc:
                raise _LineError(f"not valid JSON: {exc.msg} (column {exc.colno})") from None
            if not isinstance(obj, dict):
                raise _LineError(f"expected a JSON object, got {_type_name(obj)}")
            if "meta" in obj:
                if seen_content:
                    raise _LineError("a 'meta' line may only be the first line")
                if len(obj) != 1:
                    raise _LineError(f"the meta line has only the key 'meta', got {sorted(obj)}")
                if not isinstance(obj["meta"], dict):
                    raise _LineError(f"'meta' must be an object, got {_type_name(obj['meta'])}")
                meta = obj["meta"]
                seen_content = True
                continue
            seen_content = True
            request = _request(obj)
            if request.t < prev_t:
                raise _LineError(
                    f"out of order: t={request.t} is before t={prev_t} on line {prev_line}; lines must be sorted by t"
                )
            if request.request_id in first_line:
                raise _LineError(
                    f"duplicate request_id {request.request_id!r} (first on line {first_line[request.request_id]})"
                )
        except _LineError as exc:
            raise TraceError(source, number, exc.message) from None
        first_line[request.request_id] = number
        prev_t, prev_line = request.t, number
        requests.append(request)
    if not requests:
        raise TraceError(source, None, "no requests")
    return Trace(tuple(requests), meta)


def read_trace(path: str | Path) -> Trace:
    """Read a trace file. Raises :class:`TraceError` (``path:line: message``) when it is not valid."""
    source = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise TraceError(source, None, f"cannot read ({exc.strerror or exc})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise TraceError(source, line, f"not UTF-8 (byte {exc.start})") from None
    return loads_trace(text, source)
