"""chronoserve on a two-node Ray cluster on 127.0.0.1 (``ray.cluster_utils.Cluster``: a head and a
second node; each engine replica asks for all of a node's CPUs, so each lands on its own node): requests follow their
models across nodes, and a replica killed mid-burst loses no accepted request silently."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

ray = pytest.importorskip("ray")
pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(300), pytest.mark.xdist_group("ray")]

from ray import serve  # noqa: E402
from ray_cluster import BODY, MODELS, NODE_CPUS, PATIENT_REPLICAS, RayCluster, fake_loader  # noqa: E402
from test_ray import ONE_EACH, SETTLE_SECONDS, settled  # noqa: E402
from waiting import until  # noqa: E402

from chronoserve.ray.ingress import ingress_app  # noqa: E402
from chronoserve.testing import server_settings  # noqa: E402


@pytest.fixture(scope="module")
def url(ray_cluster: RayCluster) -> Iterator[str]:
    """Two engine replicas, one on each node (each asks for all of a node's CPUs), behind the HTTP
    API, whose fake batches take 0.05 s."""
    settings = server_settings(default_model="a", models=("b",), **ONE_EACH)
    loader = fake_loader(predict_seconds=0.05)
    options = {**PATIENT_REPLICAS, "ray_actor_options": {"num_cpus": NODE_CPUS}}
    app = ingress_app(settings, replicas=2, loader=loader, stats_period=0.2, engine_options=options)
    serve.run(app, name="cluster", route_prefix="/")
    yield ray_cluster.url
    serve.delete("cluster")


def test_the_two_replicas_are_on_the_two_nodes(url: str) -> None:
    nodes = [n for n in ray.nodes() if n["Alive"]]
    assert [n["NodeManagerAddress"] for n in nodes] == ["127.0.0.1"] * 2  # loopback only
    replicas = [a for a in ray.util.list_named_actors(all_namespaces=True) if "chronoserve-engine" in a["name"]]
    handles = [ray.get_actor(a["name"], namespace=a["namespace"]) for a in replicas]
    where = ray.get([h.__ray_call__.remote(lambda _: ray.get_runtime_context().get_node_id()) for h in handles])
    assert sorted(where) == sorted(n["NodeID"] for n in nodes)  # each asked for a whole node


async def test_requests_follow_their_models_across_the_nodes(url: str) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        await until(lambda: _ready(client), "every replica ready", deadline=SETTLE_SECONDS)

        async def replica_of(model: str) -> str:
            r = await client.post("/forecast", json={**BODY, "model_name": model})
            assert r.status_code == 200, r.text
            return str(r.json()["served_by"])

        a, b = await settled(replica_of)
        answers = [await replica_of(m) for m in MODELS * 5]
        assert answers == [a, b] * 5  # every request where its model is resident: no load, no eviction


async def test_a_replica_killed_mid_burst_loses_no_accepted_request(url: str) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        await until(lambda: _ready(client), "every replica ready", deadline=SETTLE_SECONDS)
        burst = [
            asyncio.create_task(client.post("/forecast", json={**BODY, "model_name": MODELS[i % 2], "seed": i}))
            for i in range(40)
        ]
        await until(lambda: sum(t.done() for t in burst) >= 4, "the burst under way", deadline=SETTLE_SECONDS)
        (victim, *_) = [a for a in ray.util.list_named_actors(all_namespaces=True) if "chronoserve-engine" in a["name"]]
        ray.kill(ray.get_actor(victim["name"], namespace=victim["namespace"]), no_restart=True)
        answers = await asyncio.gather(*burst)  # every one ends: none hangs
        for r in answers:
            # Served (by the replica that lived, or retried there), or failed clearly: 503 with a
            # reason and when to retry. Never a 500, never silence.
            assert r.status_code in (200, 503), r.text
            if r.status_code == 503:
                assert "replica" in r.json()["detail"] and int(r.headers["retry-after"]) >= 1
        assert sum(r.status_code == 200 for r in answers) >= len(answers) // 2
        # Serve replaces the replica; requests go on.
        await until(lambda: _ready(client), "two replicas again", deadline=SETTLE_SECONDS)
        r = await client.post("/forecast", json=BODY)
        assert r.status_code == 200, r.text


async def _ready(client: httpx.AsyncClient) -> bool:
    r = await client.get("/models")
    return (
        r.status_code == 200
        and len(r.json().get("replicas", [])) == 2
        and (await client.get("/readyz")).status_code == 200
    )
