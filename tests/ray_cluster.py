"""What the Ray tests share: Ray kept on 127.0.0.1 and patient on a loaded machine, fake engines.

Imported only by the tests marked ``ray`` (Ray is an extra). Every Ray test module is in the
xdist group ``ray`` (pytest runs with ``--dist loadgroup``), so one worker runs them one module
after the other and two Ray clusters never start at once.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

from test_serve_process import free_port

from chronoserve.testing import FakeLoader, fake_spec

#: Serve's proxy must be ready in 5 s and answer health checks in 10 s by default: on a loaded
#: 2-core machine it may not, and Serve kills it. Set before Ray starts (its processes inherit them).
PATIENT = {
    "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "300",
    "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S": "300",
    "RAY_SERVE_PROXY_HEALTH_CHECK_PERIOD_S": "60",
    "RAY_DEDUP_LOGS": "0",
}
#: Replicas' health checks, as patient (serve.deployment options); still every 10 s (Serve's
#: default), which is also how soon it notices a replica that died.
PATIENT_REPLICAS = {"health_check_timeout_s": 300}

MODELS = ("a", "b")
SERIES = [float(i % 24) for i in range(48)]
BODY = {"city": "dongsi", "horizon_hours": 4}


def fake_loader(**options: object) -> partial[FakeLoader]:
    """Each replica's loader: models ``a``, ``b`` and ``h`` (``hang={"h"}`` makes its batches run until
    stopped), loads of 0.2 s, more :class:`FakeLoader` ``options``. A partial of a class the replicas
    can import (a test module's function would not unpickle there)."""
    specs = {m: fake_spec(m) for m in (*MODELS, "h")}
    return partial(FakeLoader, specs=specs, load_seconds=0.2, **options)


def patient_environment() -> None:
    os.environ.update(PATIENT)


#: Logical CPUs of each of the two nodes (Ray's accounting: a replica asking for all of them gets
#: a node to itself, which is how the cluster tests put one replica on each).
NODE_CPUS = 8


@dataclass(frozen=True)
class RayCluster:
    address: str
    """The head's address (``ray.init(address=...)``, ``serve --ray-address``)."""
    port: int
    """Serve's HTTP proxy, on 127.0.0.1."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextmanager
def two_nodes() -> Iterator[RayCluster]:
    """A head and a second node on 127.0.0.1 (``NODE_CPUS`` each), this process connected, and
    Serve's proxy on the head on a free port. One for all the Ray tests: each start costs tens of
    seconds of both cores."""
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster
    from ray.serve.config import HTTPOptions

    patient_environment()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": NODE_CPUS, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=NODE_CPUS)
        ray.init(address=cluster.address, log_to_driver=False)
        port = free_port()
        serve.start(proxy_location="HeadOnly", http_options=HTTPOptions(host="127.0.0.1", port=port))
        yield RayCluster(cluster.address, port)
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()
