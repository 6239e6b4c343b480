"""A front end's view of the engine replicas (``ReplicaEngines``), without a Ray cluster: real engine
servers on ZeroMQ ipc sockets in this process, found through a router registry as Ray's request
router would fill it. Replicas come and go; what one held is answered, or sent once more to
another when it is lost; ``max_held`` refuses early; no replica is a 503 at once."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("ray")

from test_frontends import MODEL, Pair, fake_loader
from waiting import until

from chronoserve import ForecastRequest
from chronoserve.errors import EngineUnavailable, QueueFull
from chronoserve.ray import _routers
from chronoserve.ray.frontdoor import ReplicaEngines

SERIES = [1.0, 2.0, 3.0]


@dataclass(frozen=True)
class _ReplicaID:
    unique_id: str


class _Router:
    def __init__(self, replicas: dict[_ReplicaID, Any]) -> None:
        self.curr_replicas = replicas


@dataclass
class FakeDeployment:
    """What ``ReplicaEngines`` asks of a deployment handle, and the router registry it reads."""

    app_name: str
    deployment_name: str = "chronoserve-engine"
    calls: int = 0
    replicas: dict[_ReplicaID, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.address = SimpleNamespace(remote=self._first_call)
        self.router = _Router(self.replicas)  # the registry holds routers weakly
        _routers.ROUTERS[(self.app_name, self.deployment_name)] = self.router

    async def _first_call(self) -> str:
        self.calls += 1
        return "a replica's address"

    def add(self, name: str, pair: Pair) -> None:
        self.replicas[_ReplicaID(name)] = SimpleNamespace(routing_stats={"address": pair.address})

    def remove(self, name: str) -> None:
        del self.replicas[_ReplicaID(name)]

    def close(self) -> None:
        _routers.ROUTERS.pop((self.app_name, self.deployment_name), None)


@contextlib.asynccontextmanager
async def replicas(tmp_path: Any, *loaders: Any, **options: Any) -> AsyncIterator[tuple[list[Pair], FakeDeployment]]:
    """One engine server per loader (each a replica: ``r0``, ``r1``, ...), none yet in the deployment."""
    pairs = []
    deployment = FakeDeployment(app_name=str(tmp_path))
    try:
        for i, loader in enumerate(loaders):
            p = Pair(f"ipc://{tmp_path}/replica-{i}.ipc", loader, drain_timeout=0.5, **options)
            await p.start_engine()
            pairs.append(p)
        yield pairs, deployment
    finally:
        deployment.close()
        for p in pairs:
            if p.server is not None:
                await p.kill_engine()


@contextlib.asynccontextmanager
async def front(deployment: FakeDeployment, **options: Any) -> AsyncIterator[ReplicaEngines]:
    engines = ReplicaEngines(deployment, fake_loader(), **options)
    await engines.start()
    try:
        yield engines
    finally:
        await engines.close()


def request() -> ForecastRequest:
    return ForecastRequest(model=MODEL, target=SERIES, horizon=2)


async def test_requests_follow_the_replicas_as_they_come_and_go(tmp_path: Any) -> None:
    async with replicas(tmp_path, fake_loader(), fake_loader()) as (pairs, deployment):
        deployment.add("r0", pairs[0])
        async with front(deployment) as engines:
            await until(engines.connected.is_set, "connected to the first replica")
            assert (await engines.forecast(request())).served_by == "r0"
            deployment.add("r1", pairs[1])
            await until(lambda: engines.names == ["r0", "r1"] and engines.connected.is_set(), "the second replica")
            deployment.remove("r0")
            await until(lambda: engines.names == ["r1"], "the first replica gone from the set")
            answers = [await engines.forecast(request()) for _ in range(4)]
            assert {a.served_by for a in answers} == {"r1"}
            assert list(answers[0].median) == [3.0, 3.0]  # the fake model's answer, from the replica
        assert deployment.calls == 1  # one call through the handle, to make its router


async def test_a_replica_that_leaves_still_answers_what_it_holds(tmp_path: Any) -> None:
    async with replicas(tmp_path, fake_loader(predict_seconds=0.5)) as (pairs, deployment):
        deployment.add("r0", pairs[0])
        async with front(deployment) as engines:
            await until(engines.connected.is_set, "connected to the replica")
            held = asyncio.create_task(engines.forecast(request()))
            await until(lambda: pairs[0].engine.counters["submitted"] >= 1, "the request in the replica")
            deployment.remove("r0")  # Serve stops routing to it, and drains it
            await until(lambda: engines.names == [], "the replica gone from the set")
            assert (await held).served_by == "r0"  # answered, not failed when it left the set
            with pytest.raises(EngineUnavailable):  # and with no replica left: 503 at once
                await engines.forecast(request())


async def test_a_request_lost_with_its_replica_is_sent_once_more_to_another(tmp_path: Any) -> None:
    async with replicas(tmp_path, fake_loader(hang={MODEL}), fake_loader()) as (pairs, deployment):
        deployment.add("r0", pairs[0])
        async with front(deployment) as engines:
            await until(engines.connected.is_set, "connected to the first replica")
            lost = asyncio.create_task(engines.forecast(request()))
            await until(lambda: pairs[0].engine.counters["submitted"] >= 1, "the request in the hanging replica")
            deployment.add("r1", pairs[1])
            await until(lambda: len(engines.names) == 2 and engines.connected.is_set(), "the second replica")
            await pairs[0].kill_engine()  # its process dies, the request in it
            assert (await lost).served_by == "r1"


async def test_beyond_max_held_requests_are_refused_at_once(tmp_path: Any) -> None:
    async with replicas(tmp_path, fake_loader(hang={MODEL})) as (pairs, deployment):
        deployment.add("r0", pairs[0])
        async with front(deployment, max_held=2) as engines:
            await until(engines.connected.is_set, "connected to the replica")
            held = [asyncio.create_task(engines.forecast(request())) for _ in range(2)]
            await until(lambda: engines.held == 2, "two requests held")
            with pytest.raises(QueueFull) as refused:
                await engines.forecast(request())
            assert refused.value.limit == 2
            await pairs[0].kill_engine()  # nothing to retry on: both end with 503, none hangs
            for outcome in await asyncio.gather(*held, return_exceptions=True):
                assert isinstance(outcome, EngineUnavailable)
            assert engines.held == 0


async def test_the_request_router_waits_for_the_replica_holding_the_model() -> None:
    # Ray's RequestRouter, without a cluster: only what choose_replicas reads of itself and its replicas.
    from chronoserve.placement import Readiness
    from chronoserve.ray.router import PATIENCE, ReadinessRouter

    router = object.__new__(ReadinessRouter)
    router._turn, router._views, router._sent = 0, {}, {}
    holds = {
        name: SimpleNamespace(
            replica_id=_ReplicaID(name),
            routing_stats=Readiness(
                backlog=0.1, models={name: 0.0, "other": 0.5}, tiers={name: "resident"}, new_model=0.5
            ).to_dict(),
        )
        for name in ("a", "b")
    }

    async def ranks(model: str) -> list[str]:
        pending = SimpleNamespace(metadata=SimpleNamespace(multiplexed_model_id=model))
        return [r.replica_id.unique_id for (r,) in await router.choose_replicas(list(holds.values()), pending)]

    # Where the model is: that replica alone (Ray asks it again rather than copy the model elsewhere).
    assert [await ranks(m) for m in ("a", "b", "a")] == [["a"], ["b"], ["a"]]
    # A model nobody holds: every replica, the best PATIENCE times first (Ray moves on when a probe is late).
    nobody = await ranks("other")
    assert len(nobody) == PATIENCE + 1 and nobody[:PATIENCE] == [nobody[0]] * PATIENCE and set(nobody) == {"a", "b"}
    assert await router.choose_replicas([], None) == []
