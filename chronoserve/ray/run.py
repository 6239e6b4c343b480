"""``chronoserve serve --ray``: the HTTP API on Ray Serve, until SIGTERM or SIGINT.

It loads the default model once here (:func:`prepare`: the ONNX export and random checkpoints
are made once, before the replicas start), joins the Ray cluster at ``--ray-address`` (or starts
a local Ray, kept on 127.0.0.1 when the server binds a loopback address) and deploys the engine
deployment (:mod:`.replica`). HTTP is served on ``--host``/``--port`` by this process: the front
end of ``serve --http-workers`` (:func:`~chronoserve.server.frontend.create_frontend_app`) over
the replicas, reached directly (:class:`~.frontdoor.ReplicaEngines`). With ``--ray-proxy``
Serve's own HTTP proxy serves it instead, in front of the ingress deployment of :mod:`.ingress`
(what ``serve run`` with a config file runs). It says ``ready``
once ``/readyz`` answers 200 (every engine replica has loaded the default model).

On SIGTERM or SIGINT the front end drains (it answers what it holds), then the application is
deleted, which drains the replicas: each engine runs what is queued within ``--drain-timeout``;
a local Ray it started is shut down.
"""

from __future__ import annotations

import logging
import signal
import ssl
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import ray
from ray import serve
from ray.serve.config import HTTPOptions
from ray.serve.schema import LoggingConfig

from chronoserve.logs import configure_logging
from chronoserve.server.frontend import create_frontend_app
from chronoserve.server.process import draining_server
from chronoserve.server.runtime import ServerSettings

from . import local_on_loopback
from .frontdoor import ReplicaEngines
from .ingress import ingress_app
from .replica import engine_deployment

logger = logging.getLogger("chronoserve.ray")

#: The application's name in Ray Serve.
APP = "chronoserve"
#: Seconds between two looks at ``/readyz`` while the replicas warm up.
READY_POLL_S = 0.5


def _ready(url: str) -> bool:
    # Our own URL (https with the operator's certificate, which may be self-signed: not verified here).
    context = ssl._create_unverified_context() if url.startswith("https:") else None
    try:
        with urllib.request.urlopen(url, timeout=5, context=context) as answer:
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
    proxy: bool = False,
    ingress_replicas: int = 1,
) -> int:
    """Serve on Ray until SIGTERM/SIGINT, then drain; the exit status. ``proxy``: HTTP through
    Serve's proxy and ``ingress_replicas`` ingress replicas (:mod:`.ingress`), not this process."""
    configure_logging(log_level, log_format=settings.log_format)
    stop = threading.Event()
    if settings.warmup:
        prepare(settings)
    local = address is None
    where = {"address": "local", "_node_ip_address": "127.0.0.1"} if local_on_loopback(host, address) else {}
    ray.init(
        **(where or {"address": address or "local"}),
        include_dashboard=False,
        logging_level=log_level.upper(),
    )
    for sig in (signal.SIGTERM, signal.SIGINT):  # after ray.init, which sets its own
        signal.signal(sig, lambda *_: stop.set())
    scale = f"{autoscale[0]}..{autoscale[1]} (autoscaled)" if autoscale else str(replicas)
    scheme = "https" if settings.ssl_certfile else "http"
    url = f"{scheme}://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}/readyz"
    logging_config = LoggingConfig(log_level=log_level.upper(), enable_access_log=False)
    scaled: dict[str, Any] = {
        "replicas": replicas,
        "autoscale": autoscale,
        "replica_cpus": replica_cpus,
        "max_queued_requests": max_queued_requests,
    }
    try:
        if proxy:
            serve.start(http_options=HTTPOptions(host=host, port=port))
            app = ingress_app(settings, ingress_replicas=ingress_replicas, **scaled)
            serve.run(app, name=APP, route_prefix="/", logging_config=logging_config)
            _say_ready(url, stop, f"ready on Ray Serve's proxy: http://{host}:{port}, {scale} engine replica(s)")
            stop.wait()
        else:
            serve.start(proxy_location="Disabled")  # HTTP is this process's: no Serve proxy (if Serve is new here)
            handle = serve.run(
                engine_deployment(settings, **scaled), name=APP, route_prefix=None, logging_config=logging_config
            )
            front = create_frontend_app(
                settings,
                lambda names: ReplicaEngines(handle, names, max_held=max_queued_requests, placement=settings.placement),
                name="http-0",
            )
            server = draining_server(front, settings, log_level, host=host, port=port)
            if not stop.is_set():  # uvicorn's own signal handlers from here: it drains this front end
                threading.Thread(
                    target=_say_ready,
                    args=(url, stop, f"ready: {scheme}://{host}:{port}, {scale} engine replica(s) on Ray Serve"),
                    daemon=True,
                ).start()
                server.run()
                stop.set()
        logger.info("draining: deleting the application (replicas finish what they hold)")
        started = time.monotonic()
        serve.delete(APP)
        logger.info("drained in %.1f s", time.monotonic() - started)
    finally:
        if local:
            serve.shutdown()
            ray.shutdown()
    return 0


def _say_ready(url: str, stop: threading.Event, line: str) -> None:
    """Log ``line`` once ``url`` (``/readyz``) answers 200: every engine replica has its default model."""
    while not stop.is_set():
        if _ready(url):
            logger.info(line)
            return
        stop.wait(READY_POLL_S)
