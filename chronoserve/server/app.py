"""The HTTP app: the routes over one engine, created (or adopted) in the app's lifespan.

``create_app(settings)`` returns an ASGI app. The engine, the series store and the metrics
live in a :class:`~chronoserve.server.runtime.ServerRuntime` shared through the lifespan's
typed state; the routes are in :mod:`chronoserve.server.routes`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware

from chronoserve.data import SeriesStore
from chronoserve.engine import Engine
from chronoserve.models.base import ModelLoader
from chronoserve.perf import PREDICTION_FIELDS, CsvMetricsLogger, PredictionRecorder

from .access import AccessLog
from .auth import Auth, Keys
from .body import BodyReaders
from .metrics import ServerMetrics
from .routes import ROUTES, http_exception
from .runtime import HeapFreezer, ServerRuntime, ServerSettings, State, warm_up

__all__ = ["ServerRuntime", "ServerSettings", "create_app"]


def create_app(
    settings: ServerSettings | None = None,
    *,
    engine: Engine | None = None,
    loader: ModelLoader | None = None,
    store: SeriesStore | None = None,
    engine_options: Mapping[str, Any] | None = None,
) -> Starlette:
    """The ASGI app over an engine built from ``settings.engine`` when it starts, or over ``engine``.

    An ``engine`` given here is the app's from then on: the app starts it, adds its metrics
    observer, and drains and closes it at shutdown (``settings.engine`` is then unused).
    ``loader`` (instead of ``settings.engine.loader()``), ``store`` and ``engine_options``
    (more :class:`Engine` arguments: a clock, executors, ``load_retry``) are for tests and
    embedding.
    """
    runtime = ServerRuntime(settings or ServerSettings(), loader=loader, store=store)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[State]:
        s = runtime.settings
        runtime.start()
        runtime.metrics = ServerMetrics(lambda: runtime.engine)
        # A fresh state for every start (an app may be started again after a shutdown).
        runtime.readers = BodyReaders()
        runtime.draining, runtime.ready, runtime.warmup_error, runtime._drain_task = False, False, None, None
        runtime.fatal = None
        if engine is not None:
            engine.add_observer(runtime.metrics)
            runtime.engine = engine
        else:
            runtime.engine = s.engine.engine(
                loader=runtime.loader, observers=[runtime.metrics], **dict(engine_options or {})
            )
        predictions = None
        if s.log_predictions is not None:
            predictions = CsvMetricsLogger(s.log_predictions, PREDICTION_FIELDS)
            runtime.engine.add_observer(PredictionRecorder(predictions))
        runtime.name_models(runtime.engine.canonical)
        runtime.engine.add_observer(HeapFreezer())
        runtime.forecaster, runtime.counts = runtime.engine, runtime.metrics
        await runtime.engine.start()
        warm: asyncio.Task[None] | None = None
        if s.warmup:
            warm = asyncio.create_task(warm_up(runtime))
        else:
            runtime.mark_ready()
        try:
            yield {"runtime": runtime}
        finally:
            if warm is not None:
                warm.cancel()
            await runtime.finish()
            if predictions is not None:
                predictions.close()

    app = Starlette(
        routes=ROUTES,
        lifespan=lifespan,
        exception_handlers={HTTPException: http_exception},
        middleware=[
            Middleware(AccessLog, enabled=runtime.settings.access_log),  # outermost: refusals are logged too
            Middleware(Auth, keys=Keys(runtime.settings.api_keys, runtime.settings.admin_keys)),
        ],
    )
    app.state.runtime = runtime
    return app
