"""chronoserve's HTTP API on Ray Serve: an ingress deployment in front of the engine deployment.

The ingress runs the front end of ``serve --http-workers`` (:func:`~chronoserve.server.frontend.create_frontend_app`:
the same routes, validation and OpenAPI schema as ``chronoserve serve``, one app, not a copy)
with the engine deployment's replicas as its engines (:class:`~.frontdoor.ReplicaEngines`):
Ray's HTTP proxy hands it requests, it parses and validates them and sends ready forecasts to
the replica where their model will be ready soonest. Serve's proxy and the hop into a
deployment cost far more CPU per request than ``serve --ray``'s own front end (measured in
docs/scale-out.md); this is for Ray users who run everything from a Serve config file.

:func:`ingress_app` builds the application; :func:`build` is the same for ``serve run`` with a
Serve config file (``import_path: chronoserve.ray.ingress:build``, ``args`` the options of
``chronoserve serve`` by name); ``chronoserve serve --ray --ray-proxy`` runs it (:mod:`.run`).
"""

from __future__ import annotations

import argparse
import contextlib
import io
from collections.abc import Callable, Mapping
from typing import Any

from ray import serve

from chronoserve.errors import ChronoserveError
from chronoserve.models.base import ModelLoader
from chronoserve.server.frontend import create_frontend_app
from chronoserve.server.runtime import ServerSettings

from .frontdoor import ReplicaEngines
from .replica import engine_deployment

#: Logical CPUs Ray reserves for each ingress replica (it parses HTTP; the engines compute).
INGRESS_CPUS = 0.0


@serve.deployment
@serve.ingress()
class Ingress:
    """chronoserve's HTTP API, over the engine deployment behind ``engines``."""

    def __init__(
        self,
        settings: ServerSettings,
        engines: Any,
        loader: Callable[[], ModelLoader] | None = None,
        max_held: int = -1,
    ) -> None:
        self.settings = settings
        self.engines = engines
        self.loader = loader
        self.max_held = max_held

    def __serve_build_asgi_app__(self) -> Any:
        replica = serve.get_replica_context().replica_id.unique_id
        app = create_frontend_app(
            self.settings,
            lambda names: ReplicaEngines(
                self.engines, names, max_held=self.max_held, placement=self.settings.placement
            ),
            loader=self.loader() if self.loader is not None else None,
            name=f"ingress-{replica}",
        )
        return _with_state(app, {"runtime": app.state.runtime})


def _with_state(app: Any, state: Mapping[str, Any]) -> Any:
    """``app`` with its lifespan ``state`` in every request's scope: Serve runs the app's lifespan
    but, unlike uvicorn, does not hand the state it yields to the requests."""

    async def with_state(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            scope["state"] = dict(state)
        await app(scope, receive, send)

    return with_state


def ingress_app(
    settings: ServerSettings,
    *,
    replicas: int = 1,
    autoscale: tuple[int, int] | None = None,
    replica_cpus: float = 1.0,
    max_queued_requests: int = -1,
    ingress_replicas: int = 1,
    loader: Callable[[], ModelLoader] | None = None,
    stats_period: float | None = None,
    engine_options: Mapping[str, Any] | None = None,
) -> Any:
    """The application (``serve.run`` it with ``route_prefix="/"``): ``ingress_replicas`` ingresses
    in front of ``replicas`` engine replicas (or ``autoscale`` = (min, max) of them), each with
    ``replica_cpus`` logical CPUs.

    ``max_queued_requests``: requests an ingress holds for the engine replicas (sent, not yet
    answered) before more are answered 429 with ``Retry-After`` (-1: no bound; each replica's
    ``max_queue`` refuses too); the same bound on the deployment's Ray queue for callers of its
    handle. ``engine_options``: more of :func:`~.replica.engine_deployment`'s options.
    """
    options: dict[str, Any] = {"stats_period": stats_period} if stats_period is not None else {}
    engines = engine_deployment(
        settings,
        replicas=replicas,
        autoscale=autoscale,
        replica_cpus=replica_cpus,
        max_queued_requests=max_queued_requests,
        loader=loader,
        **options,
        **(engine_options or {}),
    )
    front = Ingress.options(  # type: ignore[attr-defined]  # serve.deployment's wrapper
        num_replicas=ingress_replicas, ray_actor_options={"num_cpus": INGRESS_CPUS}, max_ongoing_requests=10_000
    )
    return front.bind(settings, engines, loader, max_queued_requests)


#: ``build``'s arguments that are not ``chronoserve serve`` options.
_RAY_ARGS = ("replicas", "autoscale", "replica_cpus", "max_queued_requests", "ingress_replicas")


def build(args: Mapping[str, Any]) -> Any:
    """The application for ``serve run`` / a Serve config file: ``args`` are the options of
    ``chronoserve serve`` by name (``policy: batched``, ``max_queue: 2048``, ``models: a,b``...) and
    ``replicas``, ``autoscale`` (``"MIN:MAX"``), ``replica_cpus``, ``max_queued_requests``,
    ``ingress_replicas``. A bad option raises ``ValueError`` naming it."""
    from chronoserve._cli_common import UsageError
    from chronoserve._serve_options import parse_autoscale, serve_parser, serve_settings

    argv: list[str] = []
    ray_args: dict[str, Any] = {}
    for key, value in dict(args).items():
        name = str(key).replace("-", "_")
        if name in _RAY_ARGS:
            ray_args[name] = value
        elif value is True:
            argv.append("--" + name.replace("_", "-"))
        elif value is not False and value is not None:
            argv += ["--" + name.replace("_", "-"), str(value)]
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            parsed = serve_parser().parse_args(argv)
    except (SystemExit, argparse.ArgumentError) as exc:
        if isinstance(exc, argparse.ArgumentError):
            raise ValueError(f"chronoserve args: {exc}") from None
        raise ValueError(f"chronoserve args: {errors.getvalue().strip().splitlines()[-1]}") from None
    try:
        settings = serve_settings(parsed)
    except (ChronoserveError, UsageError) as exc:
        raise ValueError(f"chronoserve args: {exc}") from None

    def number(name: str, kind: type, default: Any) -> Any:
        try:
            return kind(ray_args.get(name, default))
        except (TypeError, ValueError):
            raise ValueError(f"chronoserve args: {name}: expected a number, got {ray_args[name]!r}") from None

    try:
        autoscale = parse_autoscale(str(ray_args["autoscale"])) if ray_args.get("autoscale") else None
    except argparse.ArgumentTypeError as exc:
        raise ValueError(f"chronoserve args: autoscale: {exc}") from None
    return ingress_app(
        settings,
        replicas=number("replicas", int, 1),
        autoscale=autoscale,
        replica_cpus=number("replica_cpus", float, 1.0),
        max_queued_requests=number("max_queued_requests", int, -1),
        ingress_replicas=number("ingress_replicas", int, 1),
    )


__all__ = ["Ingress", "build", "ingress_app"]
