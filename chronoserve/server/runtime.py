"""The server's settings and its shared state: the engine, series, metrics, readiness, the drain.

:class:`ServerSettings` is everything ``chronoserve serve`` can set (the engine's own settings
embedded as one :class:`~chronoserve.settings.EngineSettings`); :class:`ServerRuntime` is what
the routes share once the app has started; :func:`warm_up` loads the models before ready.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypedDict

from chronoserve.data import DEFAULT_LAYOUT, Layout, SeriesStore
from chronoserve.engine import Engine
from chronoserve.errors import ChronoserveError, ModelLoadError
from chronoserve.events import EngineObserver
from chronoserve.models.base import ModelLoader
from chronoserve.models.catalog import DEFAULT_MODEL, find_entry
from chronoserve.request import ForecastRequest, ForecastResult
from chronoserve.settings import SERVE_BACKEND, EngineSettings

from .body import BodyReaders
from .metrics import HTTPCounts, ServerMetrics

logger = logging.getLogger("chronoserve.server")


@dataclass
class ServerSettings:
    """Everything ``chronoserve serve`` can set. Defaults give a server that answers at once.

    ``engine`` is the engine's settings (policy, threads, queue bound, per-request limits, the
    loader's device, dtype and backend: :data:`~chronoserve.settings.SERVE_BACKEND` unless told
    otherwise): the same value every front end builds its engine from.
    """

    engine: EngineSettings = field(default_factory=lambda: EngineSettings(max_queue=1024, backend=SERVE_BACKEND))
    models: tuple[str, ...] = ()
    """Models HTTP may name beyond the catalog (names or local directories), loaded at start-up."""
    default_model: str = DEFAULT_MODEL
    warmup: bool = True
    """Load the default model and ``models`` before reporting ready."""
    exit_on_error: bool = True
    """The default model failing to load at start-up stops the server (``serve`` exits 1 with
    one line saying why), as Triton's ``--exit-on-error``; False: keep retrying it with the
    engine's backoff, ``/readyz`` 503 ``default_model_failed`` meanwhile."""
    data: str | None = None
    """A file (CSV, Parquet) or directory of series instead of the embedded Beijing PM2.5 data."""
    data_layout: Layout = DEFAULT_LAYOUT
    """How ``data``'s files map onto series (columns, timestamps, dialect, lower bound)."""
    max_body_bytes: int = 1 << 20
    drain_timeout: float = 30.0
    log_predictions: str | None = None
    """A CSV path: one row per batch, the cost model's predicted and the actual latency."""
    default_deadline_ms: float | None = None
    """The deadline of requests that give none (body or header); None: no deadline."""
    api_keys: tuple[str, ...] = ()
    """Bearer tokens that open every route but the probes and the scrape (none: open; :mod:`.auth`)."""
    admin_keys: tuple[str, ...] = ()
    """Bearer tokens that open model management too (none: model management is off)."""
    model_roots: tuple[str, ...] = ()
    """Directories whose checkpoints model management may load (absolute; none: catalog names only)."""
    ssl_certfile: str | None = None
    """TLS: the certificate chain (PEM); with ``ssl_keyfile``, the server speaks HTTPS only."""
    ssl_keyfile: str | None = None
    log_format: str = "text"
    """``text`` or ``json`` (one object per line: :mod:`chronoserve.logs`)."""
    access_log: bool = True
    """One line per HTTP request (:mod:`chronoserve.server.access`)."""
    placement: str = "readiness"
    """How a front end over several engines (``--engines K``, ``--ray``) places each request:
    ``readiness``; ``round-robin`` and ``random`` are there to compare against."""
    # -- connections (see chronoserve.server.protocol) ------------------------------------------
    header_timeout: float = 10.0
    """Seconds a connection has to send a request's headers, from its first byte (or from
    opening, for a new connection); then 408 and the connection is closed."""
    body_timeout: float = 30.0
    """Seconds a request has to send its whole body once its headers are in; then 408."""
    keep_alive_timeout: float = 5.0
    """Seconds an idle keep-alive connection stays open between requests."""
    max_header_bytes: int = 16 * 1024
    """The largest request line plus headers; larger gets 431 and the connection is closed."""
    max_connections: int = 1000
    """Open connections beyond this are answered 503 with ``Retry-After`` and closed."""


class Forecaster(Protocol):
    """What the forecast routes need from an engine: :class:`~chronoserve.engine.Engine` itself,
    or in a front-end process the engine process (:class:`~chronoserve.server.frontend.RemoteEngine`)."""

    def canonical(self, name: object) -> str: ...

    async def forecast(self, request: ForecastRequest) -> ForecastResult: ...


@dataclass
class ServerRuntime:
    """What the handlers share: settings, engine, series, metrics, and the server's state."""

    settings: ServerSettings
    loader: ModelLoader | None = None
    store: SeriesStore | None = None
    engine: Engine | None = None
    metrics: ServerMetrics | None = None
    forecaster: Forecaster | None = None
    """Where forecasts go: ``engine``, or the engine process of a front end."""
    counts: HTTPCounts | None = None
    """Where HTTP answers are counted: ``metrics``, or the engine process's metrics."""
    ready: bool = False
    draining: bool = False
    warmup_error: str | None = None
    fatal: str | None = None
    """Why the server cannot serve at all (the default model failed to load at start-up, with
    ``exit_on_error``): set once, and ``on_fatal`` called, which stops the server."""
    on_fatal: Callable[[], None] | None = None
    default_model: str = ""
    """The canonical name of the default model (set when the engine starts)."""
    extra_models: tuple[str, ...] = ()
    """The canonical names of the operator's ``--models``."""
    managed: set[str] = field(default_factory=set)
    """Checkpoint directories loaded through model management (:mod:`.manage`), served until unloaded."""
    loop: asyncio.AbstractEventLoop | None = None
    readers: BodyReaders = field(default_factory=BodyReaders)
    """The handlers reading a body: when draining begins they answer 503 at once."""
    _drain_task: asyncio.Task[None] | None = None

    def allowed(self, name: str) -> bool:
        """HTTP may name catalog models (``random/...``, short names, hub ids), the operator's
        models, and directories loaded through model management.

        ``name`` is canonical (:meth:`Engine.canonical`), so no spelling of a name gets past
        this check that the pool and metrics would not see as the same model.
        """
        return (
            name == self.default_model
            or name in self.extra_models
            or name in self.managed
            or find_entry(name) is not None
        )

    def start(self) -> None:
        """At the start of the app's lifespan: the running loop, and the series (unless given)."""
        self.loop = asyncio.get_running_loop()
        if self.store is None:
            s = self.settings
            self.store = SeriesStore.from_dir(s.data, s.data_layout) if s.data else SeriesStore.embedded()

    def name_models(self, canonical: Callable[[object], str]) -> None:
        """The canonical names of the default model and the operator's ``--models``, by ``canonical``
        (the engine's, or in a front end its loader's: the same names either way)."""
        self.default_model = canonical(self.settings.default_model)
        self.extra_models = tuple(dict.fromkeys(canonical(m) for m in self.settings.models))

    def mark_ready(self) -> None:
        """The server is ready: say so (``/readyz``), and how long the process took to get here."""
        self.ready = True
        if self.metrics is not None:
            from chronoserve.forkserver import process_age, started

            how = started()
            self.metrics.process_ready(process_age(), "process" if how is None else how.method)

    def fail(self, why: str) -> None:
        """The server cannot serve: say why in one line and stop it (``on_fatal``), once."""
        if self.fatal is not None:
            return
        self.fatal = why
        logger.error("%s; stopping (exit_on_error)", why)
        if self.on_fatal is not None:
            self.on_fatal()

    def begin_drain(self) -> None:
        """Stop accepting (readyz 503), run what is queued within the drain timeout, fail the rest with 503."""
        if self.draining:
            return
        self.draining = True
        self.readers.drain()
        logger.info("draining: finishing queued requests within %.0f s", self.settings.drain_timeout)
        if self.engine is not None:
            self._drain_task = asyncio.get_running_loop().create_task(
                self.engine.close(drain=True, timeout=self.settings.drain_timeout)
            )

    async def finish(self) -> None:
        self.begin_drain()
        if self._drain_task is not None:
            await self._drain_task


class State(TypedDict):
    runtime: ServerRuntime


def load_failures(runtime: ServerRuntime, names: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Models whose last load failed (of ``names``, or all): the error and when it is tried again."""
    engine = runtime.engine
    if engine is None:
        return []
    now = engine.clock.now()
    return [
        {
            "name": f.model,
            "error": f.error,
            "failures": f.failures,
            "retry_in_seconds": round(max(0.0, f.retry_at - now), 3),
            "permanent": f.permanent,
        }
        for f in sorted(engine.load_failures().values(), key=lambda f: f.model)
        if names is None or f.model in names
    ]


class HeapFreezer(EngineObserver):
    """``gc.freeze()`` once a model has loaded: what exists then (torch, transformers, the models:
    about 450,000 objects) is long-lived, and moved out of the collector's sight.

    Without it every full collection walks all of them, about 0.1 s on this project's machine,
    while every request waits: the p99 of a loaded server was that pause. Freezing is O(1);
    objects frozen are still freed by reference counting (only cycles among them would stay).
    """

    def model_loaded(self, model: str, seconds: float, nbytes: int) -> None:
        gc.freeze()


async def warm_up(runtime: ServerRuntime) -> None:
    """Load the default model, then the extras.

    The server is ready once the default model serves. If it fails to load, ``exit_on_error``
    stops the server (:meth:`ServerRuntime.fail`); otherwise the load is retried with the
    engine's backoff (unless the failure is permanent: then the server stays not ready). An
    operator's extra model that fails to load is listed in ``/readyz`` and ``/models`` and
    retried at its next request after its backoff, but never keeps the server from serving the
    others.
    """
    engine = runtime.engine
    assert engine is not None
    default = runtime.default_model
    while True:
        try:
            await engine.warm(default)
            break
        except ModelLoadError as exc:
            runtime.warmup_error = f"{default}: {exc}"
            if runtime.settings.exit_on_error:
                runtime.fail(f"the default model {default} failed to load: {exc.message}")
                return
            if exc.permanent:  # no retry can help: not ready until the operator acts
                logger.error("the default model %s failed to load, and no retry can help: %s", default, exc.message)
                return
            wait = exc.retry_after if exc.retry_after is not None else engine.load_retry[0]
            logger.error("the default model %s failed to load (next try in %.0f s): %s", default, wait, exc.message)
            await asyncio.sleep(wait)
        except ChronoserveError as exc:  # not a model at all: no retry can help
            runtime.warmup_error = f"{default}: {exc}"
            if runtime.settings.exit_on_error:
                runtime.fail(f"the default model {default} cannot be served: {exc}")
            else:
                logger.error("the default model %s cannot be served: %s", default, exc)
            return
    runtime.mark_ready()
    runtime.warmup_error = None
    logger.info("ready: %s", default)
    for name in runtime.extra_models:
        if name == default:
            continue
        try:
            await engine.warm(name)
        except ChronoserveError as exc:
            logger.error("model %s failed to load; serving the others: %s", name, exc)
        else:
            logger.info("loaded: %s", name)
