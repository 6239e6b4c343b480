"""chronoserve on Ray Serve (the ``ray`` extra: ``pip install "chronoserve[ray]"``).

Ray Serve places, starts, scales and stops the replicas of the engine deployment
(:mod:`.replica`), each a chronoserve engine with any policy and the same settings as
``serve``. Front ends (``serve --ray``'s own process, or the ingress deployment behind Serve's
proxy: :mod:`.run`, :mod:`.ingress`) reach them directly over ZeroMQ
(:class:`~.frontdoor.ReplicaEngines`), each request placed where its model will be ready
soonest; callers of the deployment's handle are placed so by :class:`~.router.ReadinessRouter`.

Nothing else in chronoserve imports this package: the core never needs Ray.
"""
