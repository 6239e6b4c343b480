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
import time
from collections.abc import Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

import chronoserve.server.wire as wire
from chronoserve.errors import EngineClosed, EngineUnavailable
from chronoserve.models.base import ModelLoader
from chronoserve.placement import Readiness, Router
from chronoserve.request import ForecastRequest, ForecastResult

from .auth import is_admin_route
from .inprocess import Answer
from .remote import ENGINE_RETRY_AFTER, RemoteEngine

logger = logging.getLogger("chronoserve.server")

#: Seconds between two views of each engine's readiness.
VIEW_SECONDS = 0.05
#: The tier ranks ``/models`` merges by: a model's tier is its closest one on any engine.
_CLOSEST = ("resident", "host", "disk", "hub")


class _AllConnected:
    """Set while every engine is connected and there is one (what a starting front end waits for)."""

    def __init__(self, engines: EngineSet) -> None:
        self._engines = engines

    def is_set(self) -> bool:
        return bool(self._engines.remotes) and all(r.connected.is_set() for r in self._engines.remotes)

    async def wait(self) -> None:
        while not self.is_set():
            waits = [asyncio.ensure_future(r.connected.wait()) for r in self._engines.remotes]
            waits.append(asyncio.ensure_future(self._engines._changed.wait()))
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()


class EngineSet:
    """The engine processes at ``addresses``, as one engine: each request placed by readiness.

    ``addresses``: a list (engine ``i`` is the ``i``-th: ``served_by`` says ``engine-<i>``, merged
    routes label it ``engine="<i>"``), or engines by name (each answer's ``served_by`` is its
    engine's name, merged routes label it ``label="<name>"``), which :meth:`update` may change
    while serving (the replicas of :mod:`chronoserve.ray`, as Ray Serve adds and removes them).
    ``placement``: ``readiness``, or (to compare against) ``round-robin`` or ``random``
    (:class:`~chronoserve.placement.Router`). ``retry``: a request whose engine was lost with it,
    or was away or closing, is sent once more, to another engine (forecasts are pure), and fails
    with 503 ``engine_unavailable`` naming both if that fails too; without it, it fails with the
    first engine's error.
    """

    def __init__(
        self,
        addresses: Sequence[str] | Mapping[str, str],
        loader: ModelLoader,
        *,
        label: str = "engine",
        retry: bool = False,
        placement: str = "readiness",
    ) -> None:
        self.loader = loader
        self.label = label
        self.retry = retry
        self.placement = placement
        self.named = isinstance(addresses, Mapping)
        self.names: list[str] = []
        self.remotes: list[RemoteEngine] = []
        self.router = Router(1, placement)
        self.connected = _AllConnected(self)
        self._viewing: asyncio.Task[None] | None = None
        self._started = False
        self._changed = asyncio.Event()
        self._retiring: set[asyncio.Task[None]] = set()
        if not self.named and not addresses:
            raise ValueError("an engine set needs at least one engine address")
        listed = addresses if isinstance(addresses, Mapping) else {f"engine-{i}": a for i, a in enumerate(addresses)}
        self._add(listed)

    async def start(self) -> None:
        self._started = True
        for remote in self.remotes:
            await remote.start()
        self._viewing = asyncio.get_running_loop().create_task(self._view())

    async def close(self) -> None:
        if self._viewing is not None:
            self._viewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._viewing
        for task in list(self._retiring):
            task.cancel()
        await asyncio.gather(*self._retiring, return_exceptions=True)
        for remote in self.remotes:
            await remote.close()

    async def update(self, addresses: Mapping[str, str]) -> None:
        """The engines are now ``addresses`` (by name): new ones are connected; gone ones get no
        new requests and are closed once they have answered what they hold (a draining replica
        answers it all) or are lost (what they held then fails with 503, or is retried with
        ``retry``); an engine whose address changed is a new one."""
        current = dict(zip(self.names, self.remotes, strict=True))
        keep = {n: r for n, r in current.items() if addresses.get(n) == r.address}
        closing = [r for n, r in current.items() if n not in keep]
        new = {n: a for n, a in addresses.items() if n not in keep}
        if not closing and not new:
            return
        views = {n: self.router.views[i] for i, n in enumerate(self.names) if n in keep}
        self.names, self.remotes = list(keep), list(keep.values())
        for remote in self._add(new, views):
            if self._started:
                await remote.start()
        for remote in closing:
            self._retire(remote)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _retire(self, remote: RemoteEngine) -> None:
        async def retire() -> None:
            await remote.settled()
            await remote.close()

        task = asyncio.get_running_loop().create_task(retire())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    def _add(self, addresses: Mapping[str, str], views: Mapping[str, Readiness] | None = None) -> list[RemoteEngine]:
        """Engines at ``addresses`` added (not started); the router keeps the ``views`` it had."""
        added = [RemoteEngine(address, self.loader) for address in addresses.values()]
        self.names += list(addresses)
        self.remotes += added
        self.router = Router(max(1, len(self.names)), self.placement)
        for i, name in enumerate(self.names):
            if views and name in views:
                self.router.update(i, views[name])
        return added

    # -- the Forecaster protocol ------------------------------------------------------------

    def canonical(self, name: object) -> str:
        return self.loader.canonical(name)

    async def forecast(self, request: ForecastRequest) -> ForecastResult:
        """Forecast on the engine that would start ``request`` first (raises that engine's errors);
        with several engines (or by name) the answer says which (``served_by``)."""
        model = self.canonical(request.model)
        i = self.place(model)
        remote, name = self.remotes[i], self.names[i]  # the set may change while it runs
        try:
            result = await remote.forecast(request)
        except (EngineUnavailable, EngineClosed) as exc:
            if not self.retry:
                raise
            # Lost with its engine, or refused by one that is away or closing: once more, elsewhere.
            logger.warning("%s %s: %s; sending request %s to another", self.label, name, exc, request.request_id)
            first = f"{self.label} {name}: {exc}"
            try:
                i = self.place(model, exclude=self.remotes.index(remote) if remote in self.remotes else None)
            except EngineUnavailable:
                raise EngineUnavailable(f"{first}; no other {self.label} is there", ENGINE_RETRY_AFTER) from exc
            remote, name = self.remotes[i], self.names[i]
            try:
                result = await remote.forecast(request)
            except (EngineUnavailable, EngineClosed) as again:
                raise EngineUnavailable(f"{first}; then {self.label} {name}: {again}", ENGINE_RETRY_AFTER) from again
        if len(self.remotes) == 1 and not self.named:
            return result
        return dataclasses.replace(result, served_by=name)

    def place(self, model: str, exclude: int | None = None) -> int:
        """The engine for a request for ``model``: by readiness, among the engines connected now
        (but ``exclude``)."""
        if len(self.remotes) == 1 and exclude is None:
            return 0
        there = [i for i, remote in enumerate(self.remotes) if remote.connected.is_set() and i != exclude]
        if not there:
            raise EngineUnavailable(
                f"no {self.label} is reachable; they are starting or restarting", ENGINE_RETRY_AFTER
            )
        return self.router.place(model, among=there, now=time.monotonic())

    async def _view(self) -> None:
        while True:
            if len(self.remotes) > 1:
                for name, remote in list(zip(self.names, self.remotes, strict=True)):
                    if remote.connected.is_set():
                        with contextlib.suppress(EngineUnavailable):  # gone meanwhile: skipped until it is back
                            asked = time.monotonic()
                            (view,) = await remote.call([wire.VIEW, 0])
                            if name in self.names:
                                # The engine saw what was sent before `asked` (one ordered socket), not since.
                                i, now = self.names.index(name), time.monotonic()
                                self.router.update(i, Readiness.from_dict(view), now, asked=asked)
            await asyncio.sleep(VIEW_SECONDS)

    # -- the other routes ----------------------------------------------------------------------

    async def _every_engine(self, frame: list[Any]) -> Answer:
        """Model management on every engine (each holds its own models): 200 with each engine's
        answer (``engines``) if every one succeeded, else the first failure's status with them all."""
        answers = {}
        for name, remote in list(zip(self.names, self.remotes, strict=True)):
            try:
                status, _, body = await remote.call(list(frame))
                answers[name] = (int(status), json.loads(bytes(body) or b"null"))
            except EngineUnavailable as exc:
                answers[name] = (503, {"detail": str(exc)})
        failed = [status for status, _ in answers.values() if status != 200]
        merged = {"engines": {name: body for name, (_, body) in answers.items()}}
        content = json.dumps(merged).encode()
        return (failed[0] if failed else 200), [[b"content-type", b"application/json"]], content

    def send(self, frame: list[Any]) -> None:
        """A frame that needs no answer (the front end's HTTP counts), to the first engine."""
        if self.remotes:
            self.remotes[0].send(frame)

    async def http(self, frame: list[Any]) -> tuple[int, list[list[bytes]], bytes]:
        """Answer any route but the forecasts: the first engine's app, or for ``/metrics``,
        ``/models`` and ``/readyz`` with several engines (or by name), every engine's answer
        merged (``/metrics`` and ``/models`` of the engines that are there; ``/readyz`` is 503
        while one is away)."""
        if not self.remotes:
            raise EngineUnavailable("no engine is there yet", ENGINE_RETRY_AFTER)
        path = frame[3]
        if is_admin_route(path) and (len(self.remotes) > 1 or self.named):
            return await self._every_engine(frame)
        if (len(self.remotes) == 1 and not self.named) or path not in _MERGED:
            status, headers, body = await self.remotes[0].call(frame)
            return status, headers, body
        answers: list[tuple[object, Answer]] = []
        members = list(zip(self.names, self.remotes, strict=True))
        for i, (name, remote) in enumerate(members):
            try:
                status, headers, body = await remote.call(list(frame))
            except EngineUnavailable:
                if path == "/readyz" or (i == len(members) - 1 and not answers):
                    raise  # not ready while an engine is away; nothing at all to merge
                continue  # /metrics and /models: the engines that are there
            answers.append((name if self.named else i, (int(status), headers, bytes(body))))
        return _MERGED[path](answers, self.label)


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


#: The routes whose answers are merged over the engines (the others are one engine's), each
#: engine named by the set's ``label`` (``engine``: its index; ``replica``: a replica's id).
_MERGED = {"/metrics": _merge_metrics, "/models": _merge_models, "/readyz": _merge_ready}


__all__ = ["VIEW_SECONDS", "EngineSet"]
