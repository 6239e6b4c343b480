"""chronoserve on Ray Serve (the ``ray`` extra: ``pip install "chronoserve[ray]"``).

Each replica of the engine deployment (:mod:`.replica`) runs a chronoserve engine, with any
policy and the same settings as ``serve``; requests reach the replica where their model will be
ready soonest through :class:`~.router.ReadinessRouter`, Ray Serve's request router fed with
each replica's :meth:`~chronoserve.engine.Engine.readiness` (its ``record_routing_stats``);
:class:`~.handle.RayEngines` is that deployment as a :class:`~chronoserve.server.runtime.Forecaster`.

Nothing else in chronoserve imports this package: the core never needs Ray.
"""
