"""One validated item of ``POST /forecast`` (or of ``/forecast/batch``) through the engine.

The server and in-process replay both call :func:`forecast_item`, so a replayed trace meets
the same checks, in the same order, as HTTP traffic: which fields go together, the model's
canonical name and the allow-list, the series window and time axis, then the engine's own
bounds (:func:`chronoserve.request.prepare`) before anything is queued.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from chronoserve.data import SeriesStore
from chronoserve.errors import InvalidRequest, UnknownModel

from .convert import build_request, http_field, result_body
from .errors import HTTPError, error_for, invalid
from .runtime import Forecaster
from .schemas import ForecastIn, combination_errors


async def forecast_item(
    engine: Forecaster,
    store: SeriesStore,
    item: ForecastIn,
    prefix: list[str | int],
    *,
    default_model: str,
    allowed: Callable[[str], bool] | None = None,
) -> dict[str, Any]:
    """The answer body for ``item``; raises :class:`HTTPError` for every failure.

    ``prefix`` locates the item in the body (``["requests", 3]`` in a batch). ``allowed``
    says which canonical model names HTTP may use (None: every name the engine resolves).
    """
    problems = combination_errors(item)
    if problems:
        raise HTTPError(
            422, [{"loc": ["body", *prefix, f], "msg": msg, "type": "invalid_combination"} for f, msg in problems]
        )
    named = item.model_name if "model_name" in item.model_fields_set else default_model
    try:
        model = engine.canonical(named)
    except InvalidRequest as exc:
        raise invalid([*prefix, "model_name"], exc.message, exc.reason) from None
    if allowed is not None and not allowed(model):
        raise invalid(
            [*prefix, "model_name"],
            f"model {model!r} is not served here: use a catalog name (GET /models) or one the operator "
            "allowed at start-up",
            "unknown_model",
        )
    try:
        built = build_request(item, store, model)
        result = await engine.forecast(built.request)
    except asyncio.CancelledError:
        raise
    except UnknownModel as exc:
        raise invalid([*prefix, "model_name"], exc.message, exc.reason) from None
    except InvalidRequest as exc:
        raise error_for(exc, prefix, http_field(exc.field, item)) from None
    except Exception as exc:
        raise error_for(exc, prefix) from None
    return result_body(result, built)
