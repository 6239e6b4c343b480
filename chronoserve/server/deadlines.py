"""A request's deadline and priority when its body gives none: the headers, then the server's default.

``X-Deadline-Ms`` and ``X-Priority`` are for clients that cannot change the body (a proxy, a
dashboard that only sets headers); a field in the body wins over its header, and the header
over ``--default-deadline-ms``. Bad header values are refused like bad fields: 422 naming the
header.
"""

from __future__ import annotations

from collections.abc import Mapping

from chronoserve.errors import InvalidRequest
from chronoserve.limits import MAX_PRIORITY, check_deadline_ms

from .errors import HTTPError
from .schemas import ForecastIn

DEADLINE_HEADER = "x-deadline-ms"
PRIORITY_HEADER = "x-priority"


def _refuse(header: str, message: str) -> HTTPError:
    return HTTPError(422, [{"loc": ["header", header], "msg": message, "type": "invalid_header"}])


def header_defaults(headers: Mapping[str, str], default_deadline_ms: float | None) -> tuple[float | None, int | None]:
    """(deadline in ms, priority) from the headers, the deadline falling back on the server's default."""
    deadline = default_deadline_ms
    text = headers.get(DEADLINE_HEADER)
    if text is not None:
        try:
            deadline = check_deadline_ms(DEADLINE_HEADER, float(text))
        except ValueError as exc:  # not a number, or out of bounds (InvalidRequest is a ValueError)
            message = exc.message if isinstance(exc, InvalidRequest) else f"must be a number of ms, got {text[:40]!r}"
            raise _refuse(DEADLINE_HEADER, message) from None
    priority = None
    text = headers.get(PRIORITY_HEADER)
    if text is not None:
        if not text.strip().isdigit() or not 1 <= int(text) <= MAX_PRIORITY:
            raise _refuse(PRIORITY_HEADER, f"must be a whole number from 1 to {MAX_PRIORITY}, got {text[:40]!r}")
        priority = int(text)
    return deadline, priority


def with_defaults(item: ForecastIn, deadline_ms: float | None, priority: int | None) -> ForecastIn:
    """``item`` with the fields it left empty filled from the headers and the server's default."""
    changes: dict[str, object] = {}
    if item.deadline_ms is None and deadline_ms is not None:
        changes["deadline_ms"] = deadline_ms
    if item.priority is None and priority is not None:
        changes["priority"] = priority
    return item.model_copy(update=changes) if changes else item
