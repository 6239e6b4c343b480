"""chronoserve on Ray Serve (the ``ray`` extra: ``pip install "chronoserve[ray]"``).

Ray Serve places, starts, scales and stops the replicas of the engine deployment
(:mod:`.replica`), each a chronoserve engine with any policy and the same settings as
``serve``. Front ends (``serve --ray``'s own process, or the ingress deployment behind Serve's
proxy: :mod:`.run`, :mod:`.ingress`) reach them directly over ZeroMQ
(:class:`~.frontdoor.ReplicaEngines`), each request placed where its model will be ready
soonest; callers of the deployment's handle are placed so by :class:`~.router.ReadinessRouter`.

Nothing else in chronoserve imports this package: the core never needs Ray.
"""

from __future__ import annotations

import os


def local_on_loopback(host: str, address: str | None) -> bool:
    """Whether ``serve --ray`` starts its own Ray (no ``address``) for a server on a loopback
    ``host``; if so, Ray is kept on 127.0.0.1. Call it before ``ray`` is imported: Ray 2.60 reads
    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` then, and without it a node takes the machine's first
    address (and the replicas' sockets with it)."""
    local = address is None and host in ("127.0.0.1", "localhost", "::1")
    if local:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    return local
