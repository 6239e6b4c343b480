"""``chronoserve serve --ray``: the HTTP API on Ray Serve, until SIGTERM or SIGINT.

It loads the default model once here (:func:`prepare`: the ONNX export and random checkpoints
are made once, before the replicas start), joins the Ray cluster at ``--ray-address`` (or starts
a local Ray, kept on 127.0.0.1 when the server binds a loopback address), starts Serve's HTTP
proxy on ``--host``/``--port``, deploys the application of :mod:`.ingress` and says ``ready``
once ``/readyz`` answers 200 (every engine replica has loaded the default model). On SIGTERM or
SIGINT it deletes the application, which drains: Serve lets each replica finish what it holds,
then each engine runs what is queued within ``--drain-timeout``; a local Ray it started is shut
down.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
import urllib.error
import urllib.request

import ray
from ray import serve
from ray.serve.config import HTTPOptions
from ray.serve.schema import LoggingConfig

from chronoserve.server.process import configure_logging
from chronoserve.server.runtime import ServerSettings

from .ingress import ingress_app

logger = logging.getLogger("chronoserve.ray")

#: The application's name in Ray Serve.
APP = "chronoserve"
#: Seconds between two looks at ``/readyz`` while the replicas warm up.
READY_POLL_S = 0.5


def _loopback(host: str) -> bool:
    return host in ("127.0.0.1", "localhost", "::1")


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:  # our own http:// URL
            return int(answer.status) == 200
    except (urllib.error.URLError, OSError):
        return False


def prepare(settings: ServerSettings) -> None:
    """Load the default model and ``--models`` once in this process before any replica starts:
    what is made once per machine (a random checkpoint materialised, the ONNX export) is then
    on disk for every replica here. Several replicas exporting at once on a 2-core machine kept
    Ray's health checks and queue-length probes waiting for minutes (measured)."""
    loader = settings.engine.loader()
    for name in dict.fromkeys((settings.default_model, *settings.models)):
        started = time.monotonic()
        loader.load(loader.resolve(loader.canonical(name))).close()
        logger.info("prepared %s in %.1f s", name, time.monotonic() - started)


def run_on_ray(
    settings: ServerSettings,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "info",
    address: str | None = None,
    replicas: int = 1,
    autoscale: tuple[int, int] | None = None,
    replica_cpus: float = 1.0,
    max_queued_requests: int = -1,
    ingress_replicas: int = 1,
) -> int:
    """Serve on Ray until SIGTERM/SIGINT, then drain; the exit status."""
    configure_logging(log_level)
    stop = threading.Event()
    if settings.warmup:
        prepare(settings)
    local = address is None
    where = {"address": "local", "_node_ip_address": "127.0.0.1"} if local and _loopback(host) else {}
    ray.init(
        **(where or {"address": address or "local"}),
        include_dashboard=False,
        logging_level=log_level.upper(),
    )
    for sig in (signal.SIGTERM, signal.SIGINT):  # after ray.init, which sets its own
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options=HTTPOptions(host=host, port=port))
        app = ingress_app(
            settings,
            replicas=replicas,
            autoscale=autoscale,
            replica_cpus=replica_cpus,
            max_queued_requests=max_queued_requests,
            ingress_replicas=ingress_replicas,
        )
        logging_config = LoggingConfig(log_level=log_level.upper(), enable_access_log=False)
        serve.run(app, name=APP, route_prefix="/", logging_config=logging_config)
        url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}/readyz"
        while not stop.is_set() and not _ready(url):
            stop.wait(READY_POLL_S)
        if not stop.is_set():
            scale = f"{autoscale[0]}..{autoscale[1]} (autoscaled)" if autoscale else str(replicas)
            logger.info("ready on Ray Serve: http://%s:%d, %s engine replica(s)", host, port, scale)
        stop.wait()
        logger.info("draining: deleting the application (replicas finish what they hold)")
        started = time.monotonic()
        serve.delete(APP)
        logger.info("drained in %.1f s", time.monotonic() - started)
    finally:
        if local:
            serve.shutdown()
            ray.shutdown()
    return 0
