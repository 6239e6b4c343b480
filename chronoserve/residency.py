"""Moving models between tiers for the engine: the imports, loads (promotions) and demotions.

The engine decides (as its policy says) which model to load or evict; this carries it out on
the load threads and keeps what it takes to do it well:

- **imports apart**: the loader's :meth:`~chronoserve.models.base.ModelLoader.import_modules`
  runs once, when the engine starts, timed on its own (:attr:`Residency.import_seconds`); a
  load waits for it, so a load's time is the load alone;
- **loads timed where they run**: on the load thread, on the engine's clock, from when the
  load starts to when it ends (not the wait behind another load);
- **demotion instead of dropping**: an evicted model's weights go to the host tier
  (:class:`~chronoserve.tiers.HostTier`) when the engine has one and the loader can keep them
  (:meth:`~chronoserve.models.base.ModelLoader.offload`); a later load promotes them. A load of
  a model still being demoted waits for the demotion, so it finds the copy.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from .clock import Clock
from .executor import Executor
from .models.base import HostCopy, ModelBackend, ModelLoader, ModelSpec
from .tiers import HostTier

logger = logging.getLogger("chronoserve.engine")


@dataclass(frozen=True, slots=True)
class Loaded:
    """A finished load: the backend, the tier it came from and when it ran (engine clock)."""

    backend: ModelBackend
    tier: str
    started: float
    finished: float

    @property
    def seconds(self) -> float:
        return self.finished - self.started


class Residency:
    """Imports, loads and demotions on ``executor`` (the engine's load threads).

    ``notify(event, *args)`` is the engine's: ``model_moved(model, source, target, seconds)``
    for every move between tiers (``seconds``: how long a promotion's load took; 0 for a demotion).
    """

    def __init__(
        self,
        loader: ModelLoader,
        executor: Executor,
        clock: Clock,
        host_budget: int | None,
        notify: Callable[..., None],
    ) -> None:
        self.loader = loader
        self.host = HostTier(host_budget)
        self._executor = executor
        self._clock = clock
        self._notify = notify
        self._imports: asyncio.Future[None] | None = None
        self._demoting: dict[str, asyncio.Future[None]] = {}
        self._base_tiers: dict[str, str] = {}
        self.import_seconds: float | None = None
        """How long the loader's imports took (None until they have run)."""

    # -- imports ---------------------------------------------------------------------------

    def start(self) -> asyncio.Future[None]:
        """Begin the imports on a load thread (once); the engine holds the returned task."""
        if self._imports is None:
            self._imports = asyncio.ensure_future(self._import())
        return self._imports

    async def _import(self) -> None:
        try:
            _, started, finished = await self._executor.run(partial(_timed, self._clock, self.loader.import_modules))
        except Exception:  # the first load will fail with the real error, where it is reported
            logger.warning("importing the model loader's modules failed", exc_info=True)
        else:
            self.import_seconds = finished - started
            logger.debug("the model loader's imports took %.2f s", self.import_seconds)

    # -- tiers -----------------------------------------------------------------------------

    def describe(self, name: str) -> tuple[ModelSpec, str]:
        """Resolve ``name`` and find its weights' tier (on the resolve thread: both may read files)."""
        spec = self.loader.resolve(name)
        return spec, self.loader.tier(spec)

    def known(self, name: str, tier: str) -> None:
        """Remember where a resolved model's weights are (``disk`` or ``hub``)."""
        self._base_tiers[name] = tier

    def tier(self, name: str) -> str:
        """Where a model that is not resident would load from: ``host``, ``disk`` or ``hub``."""
        if name in self.host:
            return "host"
        return self._base_tiers.get(name, "disk")

    # -- moves -----------------------------------------------------------------------------

    async def load(self, spec: ModelSpec) -> Loaded:
        """Load ``spec`` from the fastest tier that holds it (raises what the loader raises)."""
        if self._imports is not None:
            await asyncio.shield(self._imports)
        demoting = self._demoting.get(spec.name)
        if demoting is not None:
            await asyncio.shield(demoting)
        copy = self.host.take(spec.name)
        tier = "host" if copy is not None else self._base_tiers.get(spec.name, "disk")
        load = self.loader.load if copy is None else partial(self.loader.load, host=copy)
        backend, started, finished = await self._executor.run(partial(_timed, self._clock, load, spec))
        loaded = Loaded(backend, tier, started, finished)
        self._notify("model_moved", spec.name, tier, "resident", loaded.seconds)
        return loaded

    async def demote(self, name: str, backend: ModelBackend) -> None:
        """Keep what the loader keeps of an evicted ``backend`` in the host tier, then close it."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._demoting[name] = done
        try:
            keep = self.host.enabled
            try:
                copy = await self._executor.run(partial(_offload_and_close, self.loader, backend, keep))
            except Exception:
                logger.warning("closing the evicted model %s failed", name, exc_info=True)
                copy = None
            target = self._base_tiers.get(name, "disk")
            if copy is not None:
                for dropped in self.host.put(copy):
                    if dropped != name:
                        self._notify("model_moved", dropped, "host", self.tier(dropped), 0.0)
                if name in self.host:
                    target = "host"
            self._notify("model_moved", name, "resident", target, 0.0)
        finally:
            self._demoting.pop(name, None)
            done.set_result(None)

    def close(self) -> None:
        self.host.clear()


def _timed(clock: Clock, call: Callable[..., Any], *args: Any) -> tuple[Any, float, float]:
    """``call(*args)`` with when it started and ended on ``clock`` (on the thread that runs it)."""
    started = clock.now()
    result = call(*args)
    return result, started, clock.now()


def _offload_and_close(loader: ModelLoader, backend: ModelBackend, keep: bool) -> HostCopy | None:
    """On a load thread: the loader's host copy of ``backend`` (if ``keep``), then close it."""
    copy = None
    if keep:
        try:
            copy = loader.offload(backend)
        except Exception:
            logger.warning("keeping %s in host memory failed; it is dropped", backend.spec.name, exc_info=True)
    backend.close()
    return copy


__all__ = ["Loaded", "Residency"]
