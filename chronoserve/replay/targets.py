"""Where replayed requests go: an engine in this process, or a server at a URL.

Both answer with an :class:`Outcome` shaped like the HTTP API's answer, so records and
reports are the same whichever target ran them.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from pydantic import ValidationError

from chronoserve.data import SeriesStore
from chronoserve.engine import Engine
from chronoserve.models.base import ModelLoader


@dataclass(frozen=True)
class Outcome:
    status: int
    body: dict[str, Any] | None
    error_kind: str | None = None
    error: str | None = None

    @classmethod
    def failure(cls, status: int, kind: str, message: str) -> Outcome:
        return cls(status, None, kind, message)


class Target:
    """Sends one request (a ``TraceRequest``-like object with ``to_http_body()``)."""

    label: str = "target"

    async def start(self) -> None:
        """Get ready; may take long (loads). Not timed."""

    async def send(self, request: Any) -> Outcome:
        raise NotImplementedError

    async def close(self) -> None:
        """Finish; answer or fail whatever is still pending."""

    async def cpu_seconds(self) -> float | None:
        """CPU time the serving side has used so far (user + system, every thread), or None if unknown."""
        return None

    def describe(self) -> dict[str, Any]:
        return {"label": self.label}


def _error_outcome(status: int, detail: Any) -> Outcome:
    if isinstance(detail, list) and detail:
        first = detail[0]
        loc = ".".join(str(x) for x in first.get("loc", [])[1:])
        return Outcome.failure(status, str(first.get("type", "invalid")), f"{loc}: {first.get('msg', '')}")
    kind = {422: "invalid", 429: "queue_full", 503: "unavailable"}.get(status, f"http_{status}")
    return Outcome.failure(status, kind, str(detail))


class InProcessTarget(Target):
    """The engine in this process, with the server's own request building and error mapping."""

    def __init__(
        self,
        policy: str = "batched",
        *,
        store: SeriesStore | None = None,
        loader: ModelLoader | None = None,
        warm_models: Iterable[str] = (),
        **engine_options: Any,
    ) -> None:
        self.label = policy if isinstance(policy, str) else getattr(policy, "name", "policy")
        self.policy = policy
        self.store = store
        self.loader = loader
        self.warm_models = list(warm_models)
        self.engine_options = engine_options
        self.engine: Engine | None = None

    async def start(self) -> None:
        if self.store is None:
            self.store = SeriesStore.embedded()
        self.engine = Engine(self.policy, loader=self.loader, **self.engine_options)
        await self.engine.start()
        for name in self.warm_models:
            await self.engine.warm(name)

    async def send(self, request: Any) -> Outcome:
        import orjson

        from chronoserve.models.catalog import DEFAULT_MODEL
        from chronoserve.server.errors import HTTPError
        from chronoserve.server.handler import forecast_item
        from chronoserve.server.schemas import ForecastIn

        assert self.engine is not None and self.store is not None, "call start() first"
        try:  # the server's own parse: JSON bytes, strict types
            item = ForecastIn.model_validate_json(orjson.dumps(request.to_http_body()))
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            return Outcome.failure(422, first["type"], f"{'.'.join(map(str, first['loc']))}: {first['msg']}")
        try:
            body = await forecast_item(self.engine, self.store, item, [], default_model=DEFAULT_MODEL)
        except HTTPError as error:
            return _error_outcome(error.status, error.detail)
        return Outcome(200, body)

    async def close(self) -> None:
        if self.engine is not None:
            await self.engine.close()

    async def cpu_seconds(self) -> float | None:
        """This process's CPU time: the engine's workers and loop, and the replay's own sending."""
        return time.process_time()

    def describe(self) -> dict[str, Any]:
        if self.engine is None:
            return {"label": self.label, "mode": "in-process"}
        stats = self.engine.stats()
        return {
            "label": self.label,
            "mode": "in-process",
            "policy": dict(stats.policy),
            "workers": stats.workers,
            "torch_threads": stats.torch_threads,
        }


class HTTPTarget(Target):
    """A running server: ``POST {url}/forecast``. ``transport`` is for tests (an ASGI app)."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 600.0,
        max_connections: int = 1024,
        transport: httpx.AsyncBaseTransport | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.label = url
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.max_connections = max_connections
        self.transport = transport
        self.headers = dict(headers or {})
        self.client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        limits = httpx.Limits(max_connections=self.max_connections, max_keepalive_connections=self.max_connections)
        self.client = httpx.AsyncClient(
            base_url=self.url, timeout=self.timeout, limits=limits, transport=self.transport, headers=self.headers
        )

    async def send(self, request: Any) -> Outcome:
        assert self.client is not None, "call start() first"
        response = await self.client.post("/forecast", json=request.to_http_body())
        if response.status_code == 200:
            return Outcome(200, response.json())
        try:
            detail = response.json().get("detail")
        except ValueError:
            detail = response.text
        return _error_outcome(response.status_code, detail)

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()

    async def cpu_seconds(self) -> float | None:
        """The server's CPU seconds from its ``/metrics`` (None if absent): every process of it
        (``chronoserve_server_cpu_seconds_total``), else its one process's ``process_cpu_seconds_total``."""
        assert self.client is not None, "call start() first"
        try:
            response = await self.client.get("/metrics")
        except httpx.HTTPError:
            return None
        if response.status_code != 200:
            return None
        found: dict[str, float] = {}
        for line in response.text.splitlines():
            name, _, value = line.partition(" ")
            if name in ("chronoserve_server_cpu_seconds_total", "process_cpu_seconds_total"):
                try:
                    found[name] = float(value.split()[0])
                except (IndexError, ValueError):
                    continue
        return found.get("chronoserve_server_cpu_seconds_total", found.get("process_cpu_seconds_total"))

    def describe(self) -> dict[str, Any]:
        return {"label": self.label, "mode": "http", "url": self.url}


def preload_torch() -> None:
    """Import torch, transformers and the Chronos backends (seconds, once per process)."""
    importlib.import_module("chronoserve.models.chronos")
