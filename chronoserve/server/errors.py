"""Error answers of the HTTP API: :class:`HTTPError` and the mapping from engine errors to it.

Every refusal is JSON ``{"detail": ...}``: a string, or a list of ``{loc, msg, type}`` whose
``loc`` starts with ``"body"`` and names the field at fault.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from chronoserve.errors import (
    ChronoserveError,
    DeadlineExpired,
    DeadlineUnmeetable,
    EngineClosed,
    EngineUnavailable,
    InferenceTimeout,
    InvalidRequest,
    ModelLoadError,
    QueueFull,
    Rejected,
)

logger = logging.getLogger("chronoserve.server")


class HTTPError(Exception):
    """An error answer: status, ``detail`` (a string or a list of ``{loc, msg, type}``), headers."""

    def __init__(self, status: int, detail: Any, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"detail": self.detail}

    @property
    def kind(self) -> str:
        """The ``type`` of the first detail, or ``""`` for a plain-string detail."""
        if isinstance(self.detail, list) and self.detail and isinstance(self.detail[0], dict):
            return str(self.detail[0].get("type", ""))
        return ""


def invalid(field_path: list[str | int], message: str, kind: str, status: int = 422) -> HTTPError:
    """A refusal naming one field of the body (``field_path`` below ``body``)."""
    return HTTPError(status, [{"loc": ["body", *field_path], "msg": message, "type": kind}])


def validation_error(exc: ValidationError, prefix: list[str | int]) -> HTTPError:
    details = []
    for err in exc.errors(include_url=False):
        loc = [*prefix, *err["loc"]]
        details.append({"loc": ["body", *loc], "msg": err["msg"], "type": err["type"]})
    return HTTPError(422, details)


def retry_after(seconds: float | None, default: int = 1) -> str:
    """A ``Retry-After`` value: whole seconds, rounded up, at least 1."""
    if seconds is None or not math.isfinite(seconds):
        return str(default)
    return str(max(1, math.ceil(seconds)))


def error_for(exc: BaseException, prefix: list[str | int], field: str | None = None) -> HTTPError:
    """The HTTP answer for an engine error. ``field`` is the HTTP name of an invalid field."""
    if isinstance(exc, InvalidRequest):
        return invalid([*prefix, field or exc.field], exc.message, exc.reason)
    if isinstance(exc, QueueFull):
        return HTTPError(429, f"queue full ({exc.limit} requests waiting); retry later", {"Retry-After": "1"})
    if isinstance(exc, EngineClosed):
        return HTTPError(503, "the server is shutting down", {"Connection": "close"})
    if isinstance(exc, ModelLoadError):  # permanent: no Retry-After, so clients do not retry it
        return HTTPError(503, str(exc), {} if exc.permanent else {"Retry-After": retry_after(exc.retry_after)})
    if isinstance(exc, InferenceTimeout):
        return HTTPError(504, str(exc))
    if isinstance(exc, DeadlineUnmeetable):
        item: dict[str, Any] = {"loc": ["body", *prefix, "deadline_ms"], "msg": str(exc), "type": exc.reason}
        item["budget_ms"] = exc.budget * 1000.0
        item["predicted_ms"] = None if exc.predicted is None else exc.predicted * 1000.0
        return HTTPError(503, [item], {"Retry-After": retry_after(exc.retry_after)})
    if isinstance(exc, DeadlineExpired):
        item = {
            "loc": ["body", *prefix, "deadline_ms"],
            "msg": str(exc),
            "type": exc.reason,
            "budget_ms": exc.budget * 1000.0,
        }
        return HTTPError(504, [item])
    if isinstance(exc, EngineUnavailable):
        return HTTPError(503, str(exc), {"Retry-After": retry_after(exc.retry_after)})
    if isinstance(exc, Rejected):
        return HTTPError(503, str(exc))
    if isinstance(exc, ChronoserveError):
        return HTTPError(500, str(exc))
    logger.exception("unexpected error", exc_info=exc)
    return HTTPError(500, f"internal error: {type(exc).__name__}")
