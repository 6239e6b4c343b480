"""The engine processes a front end serves from (``serve --engines K``): each request placed by readiness.

With ``--engines K`` the supervisor runs K engine processes, each with its own models (pool and
host tier), queue and workers, and every front end talks to all of them through an
:class:`EngineSet`, which the forecast routes see as one engine (a
:class:`~.runtime.Forecaster`):

- **placement by readiness** (:mod:`chronoserve.placement`): every :data:`VIEW_SECONDS` it asks
  each engine for its :class:`~chronoserve.placement.Readiness` (backlog, each model's load
  estimate by tier) and sends each request to the engine that would start it first; in between,
  its :class:`~chronoserve.placement.Router` counts what it sent. An engine that is away (dead,
  restarting) is skipped; with none there, 503 ``engine_unavailable``.
- **the other routes, merged**: ``/metrics`` is every engine's, each sample labelled
  ``engine="i"``; ``/models`` lists every engine's resident models (each with its ``engine``),
  their tiers and, per engine, its own view (``engines``); ``/readyz`` is ready when every
  engine is. Other routes (``/series``, ``/openapi.json``, ...) are engine 0's.

With one engine (the default) it is that engine, and every route is its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

import chronoserve.server.wire as wire
from chronoserve.errors import EngineUnavailable
from chronoserve.models.base import ModelLoader
from chronoserve.placement import Readiness, Router
from chronoserve.request import ForecastRequest, ForecastResult

from .inprocess import Answer
from .remote import ENGINE_RETRY_AFTER, RemoteEngine

logger = logging.getLogger("chronoserve.server")

#: Seconds between two views of each engine's readiness.
VIEW_SECONDS = 0.05
#: The tier ranks ``/models`` merges by: a model's tier is its closest one on any engine.
_CLOSEST = ("resident", "host", "disk", "hub")


class _AllConnected:
    """Set while every engine is connected (what a starting front end waits for)."""

    def __init__(self, remotes: Sequence[RemoteEngine]) -> None:
        self._remotes = remotes

    def is_set(self) -> bool:
        return all(r.connected.is_set() for r in self._remotes)

    async def wait(self) -> None:
        for remote in self._remotes:
            await remote.connected.wait()


class EngineSet:
    """The engine processes at ``addresses``, as one engine: each request placed by readiness."""

    def __init__(self, addresses: Sequence[str], loader: ModelLoader) -> None:
        if not addresses:
            raise ValueError("an engine set needs at least one engine address")
        self.remotes = [RemoteEngine(address, loader) for address in addresses]
        self.router = Router(len(self.remotes))
        self.connected = _AllConnected(self.remotes)
        self._viewing: asyncio.Task[None] | None = None

    async def start(self) -> None:
        for remote in self.remotes:
            await remote.start()
        if len(self.remotes) > 1:
            self._viewing = asyncio.get_running_loop().create_task(self._view())

    async def close(self) -> None:
        if self._viewing is not None:
            self._viewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._viewing
        for remote in self.remotes:
            await remote.close()

    # -- the Forecaster protocol ------------------------------------------------------------

    def canonical(self, name: object) -> str:
        return self.remotes[0].canonical(name)

    async def forecast(self, request: ForecastRequest) -> ForecastResult:
        """Forecast on the engine that would start ``request`` first (raises that engine's errors);
        with several engines the answer says which (``served_by``: ``engine-<i>``)."""
        i = self.place(self.canonical(request.model))
        result = await self.remotes[i].forecast(request)
        return result if len(self.remotes) == 1 else dataclasses.replace(result, served_by=f"engine-{i}")

    def place(self, model: str) -> int:
        """The engine for a request for ``model``: by readiness, among the engines connected now."""
        if len(self.remotes) == 1:
            return 0
        there = [i for i, remote in enumerate(self.remotes) if remote.connected.is_set()]
        if not there:
            raise EngineUnavailable(
                "no engine process is reachable; they are starting or restarting", ENGINE_RETRY_AFTER
            )
        return self.router.place(model, among=there)

    async def _view(self) -> None:
        while True:
            for i, remote in enumerate(self.remotes):
                if remote.connected.is_set():
                    with contextlib.suppress(EngineUnavailable):  # gone meanwhile: skipped until it is back
                        (view,) = await remote.call([wire.VIEW, 0])
                        self.router.update(i, Readiness.from_dict(view))
            await asyncio.sleep(VIEW_SECONDS)

    # -- the other routes ----------------------------------------------------------------------

    def send(self, frame: list[Any]) -> None:
        """A frame that needs no answer (the front end's HTTP counts), to engine 0."""
        self.remotes[0].send(frame)

    async def http(self, frame: list[Any]) -> tuple[int, list[list[bytes]], bytes]:
        """Answer any route but the forecasts: engine 0's app, or for ``/metrics``, ``/models`` and
        ``/readyz`` with several engines, every engine's answer merged (``/metrics`` and ``/models``
        of the engines that are there; ``/readyz`` is 503 while one is away)."""
        path = frame[3]
        if len(self.remotes) == 1 or path not in _MERGED:
            status, headers, body = await self.remotes[0].call(frame)
            return status, headers, body
        answers: list[tuple[object, Answer]] = []
        for i, remote in enumerate(self.remotes):
            try:
                status, headers, body = await remote.call(list(frame))
            except EngineUnavailable:
                if path == "/readyz" or (i == len(self.remotes) - 1 and not answers):
                    raise  # not ready while an engine is away; nothing at all to merge
                continue  # /metrics and /models: the engines that are there
            answers.append((i, (int(status), headers, bytes(body))))
        return merge(path, answers)


def merge(path: str, answers: Sequence[tuple[object, Answer]], label: str = "engine") -> Answer:
    """Several engines' answers to ``path`` (one of :data:`MERGED`) as one, each engine named by
    ``label`` (``engine``: its index; ``replica``: a Ray Serve replica's id)."""
    return _MERGED[path](answers, label)


def _merge_metrics(answers: Sequence[tuple[object, Answer]], label: str) -> Answer:
    """Every engine's metrics as one exposition, each sample labelled with its engine (``label``)."""
    families: dict[str, Any] = {}
    for i, answer in answers:
        status, _, body = answer
        if status != 200:
            return answer
        for family in text_string_to_metric_families(body.decode()):
            merged = families.setdefault(family.name, family)
            samples = [s._replace(labels={**s.labels, label: str(i)}) for s in family.samples]
            if merged is family:
                family.samples = samples
            else:
                merged.samples.extend(samples)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(list(families.values())))
    headers = [[b"content-type", b"text/plain; version=0.0.4; charset=utf-8"]]
    return 200, headers, generate_latest(registry)


class _Families(Collector):
    def __init__(self, families: list[Any]) -> None:
        self._families = families

    def collect(self) -> Any:
        return iter(self._families)


def _merge_models(answers: Sequence[tuple[object, Answer]], label: str) -> Answer:
    """The first engine's ``/models``, with every engine's resident models (each with its engine,
    ``label``), failed loads, tiers (a model's closest tier on any engine; the host tiers added up)
    and, per engine, its own ``tiers`` and ``policy`` (in ``label`` + ``s``)."""
    bodies: list[tuple[object, Any]] = []
    for i, (status, headers, body) in answers:
        if status != 200:
            return status, headers, body
        bodies.append((i, json.loads(body)))
    merged = dict(bodies[0][1])
    merged["resident"] = [{**m, label: i} for i, b in bodies for m in b["resident"]]
    merged["failed"] = [{**f, label: i} for i, b in bodies for f in b["failed"]]
    tiers: dict[str, str] = {}
    for _, b in bodies:
        for model, tier in b["tiers"]["models"].items():
            if model not in tiers or _rank(tier) < _rank(tiers[model]):
                tiers[model] = tier
    merged["tiers"] = {
        "models": dict(sorted(tiers.items())),
        "host_models": sorted({m for _, b in bodies for m in b["tiers"]["host_models"]}),
        "host_bytes": sum(b["tiers"]["host_bytes"] for _, b in bodies),
        "host_budget": sum(b["tiers"]["host_budget"] for _, b in bodies),
        "import_seconds": max((b["tiers"]["import_seconds"] or 0.0 for _, b in bodies), default=None),
    }
    merged[label + "s"] = [{label: i, "tiers": b["tiers"], "policy": b["policy"]} for i, b in bodies]
    headers = [[b"content-type", b"application/json"]]
    return 200, headers, json.dumps(merged).encode()


def _rank(tier: str) -> int:
    return _CLOSEST.index(tier) if tier in _CLOSEST else len(_CLOSEST)


def _merge_ready(answers: Sequence[tuple[object, Answer]], label: str) -> Answer:
    """Ready (200) when every engine is; else the first engine's answer that is not."""
    for _, answer in answers:
        if answer[0] != 200:
            return answer
    return answers[0][1]


_MERGED = {"/metrics": _merge_metrics, "/models": _merge_models, "/readyz": _merge_ready}
#: The routes whose answers are merged over the engines (the others are one engine's).
MERGED = frozenset(_MERGED)


__all__ = ["MERGED", "VIEW_SECONDS", "EngineSet", "merge"]
