"""The engine deployment as the forecast routes see an engine: :class:`RayEngines`.

It is a :class:`~chronoserve.server.runtime.Forecaster` (what the forecast routes need) and the
:class:`~chronoserve.server.frontend.Engines` of a front end (what the ingress of :mod:`.ingress`
forwards the other routes to), over a handle to the engine deployment of :mod:`.replica`:

- each forecast carries its model's canonical name as Ray's ``multiplexed_model_id``, so the
  router of :mod:`.router` places it by readiness; the answer says which replica served it
  (``served_by``);
- Ray's refusals become chronoserve's: the deployment's ``max_queued_requests`` reached is a
  :class:`~chronoserve.errors.QueueFull` (HTTP 429 with ``Retry-After``); no replica there is
  :class:`~chronoserve.errors.EngineUnavailable` (503 with ``Retry-After``); a replica that dies
  with the request is retried once on another (forecasts are pure), then 503;
- ``/metrics``, ``/models`` and ``/readyz`` are every replica's answers merged, each replica named
  by its id (``replica="..."``: :func:`chronoserve.server.engines.merge`); other routes are any
  replica's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError

from chronoserve.errors import ChronoserveError, EngineUnavailable, QueueFull
from chronoserve.models.base import ModelLoader
from chronoserve.request import ForecastRequest, ForecastResult
from chronoserve.server.engines import MERGED, merge
from chronoserve.server.inprocess import Answer

from .router import PIN, replicas

logger = logging.getLogger("chronoserve.ray")

#: Seconds a client is told to wait when no replica can take its request.
RETRY_AFTER_S = 1.0
#: Seconds a request may wait while the deployment has no replica at all before it fails with 503
#: (Ray would hold it until one comes: forever, once the application is deleted).
NO_REPLICA_S = 30.0
#: Seconds between two looks at whether the deployment still has replicas, while a request waits.
WATCH_S = 0.5
#: Seconds a replica has to answer a forwarded route (``/metrics``, ``/models``, ...): once more
#: after that, then 503; for the merged ones, a replica that does not answer is left out.
REPLICA_ANSWER_S = 10.0


class _Always:
    """The deployment is there once ``serve.run`` returned (Ray queues requests while it scales)."""

    def is_set(self) -> bool:
        return True

    async def wait(self) -> None:
        return None


class RayEngines:
    """Forecasts through ``handle`` (the engine deployment's), each request placed by readiness."""

    def __init__(self, handle: Any, loader: ModelLoader, *, no_replica_timeout: float = NO_REPLICA_S) -> None:
        self.handle = handle
        self.loader = loader
        self.no_replica_timeout = no_replica_timeout
        self.connected = _Always()
        self._sending: set[asyncio.Task[None]] = set()
        self._none_since: float | None = None

    # -- the Forecaster protocol ------------------------------------------------------------

    def canonical(self, name: object) -> str:
        return self.loader.canonical(name)

    async def forecast(self, request: ForecastRequest) -> ForecastResult:
        """The answer of the replica where the model will be ready soonest (``served_by`` says which)."""
        to = self.handle.options(multiplexed_model_id=self.canonical(request.model))
        try:
            result: ForecastResult = await self._watched(to.forecast.remote(request))
            return result
        except ChronoserveError:
            raise  # the engine's own error (Ray raises it as its class)
        except BackPressureError as exc:  # the deployment's max_queued_requests: (num, max, ...) in args
            raise QueueFull(int(exc.args[1])) from exc
        except RayActorError:  # the replica died holding it: a forecast is pure, so once more
            logger.warning("a replica died with request %s; retrying it on another", request.request_id)
        except Exception as exc:  # Ray's own: no replica, the deployment deleted, ...
            raise EngineUnavailable(f"no engine replica could take it: {exc}", RETRY_AFTER_S) from exc
        try:
            retried: ForecastResult = await self._watched(to.forecast.remote(request))
        except ChronoserveError:
            raise
        except Exception as exc:
            raise EngineUnavailable(f"the replica serving it died, and the retry failed: {exc}", RETRY_AFTER_S) from exc
        return retried

    async def _watched(self, response: Any) -> Any:
        """``response``'s result; but once the deployment has had no replica for
        ``no_replica_timeout`` seconds, it is cancelled and fails with :class:`EngineUnavailable`."""
        waiting = asyncio.ensure_future(response)
        while True:
            try:
                done, _ = await asyncio.wait({waiting}, timeout=WATCH_S)
            except asyncio.CancelledError:  # the client left: so does the request, in its replica
                response.cancel()
                waiting.cancel()
                raise
            if done:
                return waiting.result()
            if self._no_replica_for() > self.no_replica_timeout:
                response.cancel()
                waiting.cancel()
                raise EngineUnavailable(
                    f"no engine replica for {self.no_replica_timeout:g} s (the deployment is deleted, "
                    "or its replicas cannot start)",
                    RETRY_AFTER_S,
                )

    def _no_replica_for(self) -> float:
        """Seconds the deployment has had no replica, as this process's router knows (0: it has one)."""
        if replicas(self.handle.app_name, self.handle.deployment_name):
            self._none_since = None
            return 0.0
        now = time.monotonic()
        if self._none_since is None:
            self._none_since = now
        return now - self._none_since

    async def served(self, request: ForecastRequest) -> tuple[str, ForecastResult]:
        """The answer and the id of the replica that served it (raises the engine's error)."""
        result = await self.forecast(request)
        assert result.served_by is not None
        return result.served_by, result

    # -- the Engines protocol (a front end's) ------------------------------------------------

    async def start(self) -> None:
        """One call through the handle before any other: it sets up the handle's router and waits
        for the first replica (requests sent at once to a handle that had not yet seen its replicas
        were seen to wait forever in Ray 2.60)."""
        await self._call(None, ("GET", "/healthz", b"", [], b""))

    async def close(self) -> None:
        for task in list(self._sending):
            with contextlib.suppress(Exception):
                await task

    async def http(self, frame: list[Any]) -> Answer:
        """A forwarded route: for ``/metrics``, ``/models``, ``/readyz`` every replica's answer merged
        (``replica`` names each), else any replica's."""
        _, _, method, path, query, headers, body = frame
        args = (method, path, bytes(query), headers, bytes(body))
        try:
            first, answer = await asyncio.wait_for(self._call(None, args), REPLICA_ANSWER_S)
        except asyncio.TimeoutError:  # once more (a call Ray did not deliver was seen to wait forever)
            logger.warning("no engine replica answered %s in %g s; asking again", path, REPLICA_ANSWER_S)
            try:
                first, answer = await asyncio.wait_for(self._call(None, args), REPLICA_ANSWER_S)
            except asyncio.TimeoutError:
                raise EngineUnavailable(f"no engine replica answered {path}", RETRY_AFTER_S) from None
        if path not in MERGED:
            return answer
        answers: dict[str, Answer] = {first: answer}
        others = [r for r in replicas(self.handle.app_name, self.handle.deployment_name) if r not in answers]
        calls = (asyncio.wait_for(self._call(r, args), REPLICA_ANSWER_S) for r in others)
        for got in await asyncio.gather(*calls, return_exceptions=True):
            if isinstance(got, BaseException):  # a replica gone meanwhile: the others' answers
                logger.debug("a replica did not answer %s: %s", path, got)
            elif got[0] not in answers:
                answers[got[0]] = got[1]
        return merge(path, sorted(answers.items()), label="replica")

    async def _call(self, replica: str | None, args: tuple[Any, ...]) -> tuple[str, Answer]:
        to = self.handle if replica is None else self.handle.options(multiplexed_model_id=PIN + replica)
        try:
            who, answer = await to.http.remote(*args)
        except Exception as exc:  # Ray's own (a replica gone, none there): the route answers 503
            raise EngineUnavailable(f"no engine replica answered: {exc}", RETRY_AFTER_S) from exc
        return who, answer

    def send(self, frame: list[Any]) -> None:
        """The ingress's HTTP counts, to one replica (the same while it lives: its CPU seconds are
        a running total, so one replica must hold them)."""
        known = replicas(self.handle.app_name, self.handle.deployment_name)
        to = self.handle.options(multiplexed_model_id=PIN + known[0]) if known else self.handle
        task = asyncio.get_running_loop().create_task(self._send(to, frame))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, to: Any, frame: list[Any]) -> None:
        try:
            await to.counts.remote(frame)
        except Exception as exc:  # counts are best effort: a replica gone takes its share with it
            logger.debug("HTTP counts not delivered: %s", exc)
