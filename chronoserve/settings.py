"""``EngineSettings``: everything that shapes an engine, in one frozen value.

Built once, from the command line (:func:`chronoserve._cli_common.engine_settings`) or by
hand, and handed down as it is: ``chronoserve serve`` embeds it in its
:class:`~chronoserve.server.ServerSettings`, replay, eval and ``forecast`` build their engines
from it. The model loader is built here, outside the engine, from the loader's own settings
(device, dtype, backend); the engine only receives it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from .limits import DEFAULT_LIMITS, Limits

if TYPE_CHECKING:
    from .costs import CostModel
    from .engine import Engine
    from .models.base import ModelLoader
    from .profile import Profile


#: What runs the models of ``chronoserve serve`` unless told otherwise: ONNX Runtime, measured faster
#: than eager torch at every batch size with the same answers (docs/backends.md, docs/results.md).
#: The library, replay, eval and ``forecast`` default to torch, the reference answers.
SERVE_BACKEND = "onnx"


@dataclass(frozen=True)
class EngineSettings:
    """The engine's policy, threads, queue bound and per-request limits, and the loader's device and dtype.

    ``policy`` is a policy name (``naive``, ``lru``, ``batched``, a plugin) or
    ``"module:Class"``; ``policy_options`` its constructor's keyword arguments. ``workers``
    and ``torch_threads``: None for the engine's defaults (2 workers, cores / workers).
    ``max_queue``: requests waiting before :class:`~chronoserve.errors.QueueFull` (None: no
    bound). ``device``, ``dtype`` (``float32``, ``bfloat16``, ``int8``) and ``backend``
    (``torch``, ``onnx``) are the :class:`~chronoserve.models.loader.ChronosLoader`'s.
    ``profile``: a cost table (``chronoserve profile``) the engine's cost model starts from.
    ``host_budget``: bytes of evicted models' weights the engine keeps in host memory (the
    ``host`` tier, :mod:`chronoserve.tiers`; None: none). ``load_workers``: models that load at
    once (local checkpoints load without a process-wide lock). ``allow_hub``: what may be
    downloaded from the Hugging Face hub.
    """

    policy: str = "batched"
    policy_options: Mapping[str, Any] = field(default_factory=dict)
    workers: int | None = None
    torch_threads: int | None = None
    max_queue: int | None = None
    device: str = "cpu"
    dtype: str = "float32"
    backend: str = "torch"
    limits: Limits = DEFAULT_LIMITS
    profile: Profile | None = None
    host_budget: int | None = None
    load_workers: int = 1
    allow_hub: tuple[str, ...] = ()
    """Hub ids the loader may download (``*``: any; empty: none, only the local cache and local
    checkpoints: :mod:`chronoserve.models.hub`)."""

    def with_options(self, **changes: Any) -> EngineSettings:
        """A copy with some fields changed (``policy_options`` are merged, not replaced)."""
        if "policy_options" in changes:
            changes["policy_options"] = {**self.policy_options, **changes["policy_options"]}
        return replace(self, **changes)

    def loader(self) -> ModelLoader:
        """The Chronos model loader for ``device``, ``dtype`` and ``backend`` (no torch is imported yet).

        Its ONNX Runtime sessions get as many threads as each of the engine's workers gets torch
        threads (:meth:`threads_per_worker`).
        """
        from .models.loader import ChronosLoader

        return ChronosLoader(
            device=self.device,
            dtype=self.dtype,
            backend=self.backend,
            onnx_threads=self.threads_per_worker(),
            allow_hub=self.allow_hub,
        )

    def threads_per_worker(self) -> int:
        """The torch threads each inference worker runs: ``torch_threads``, else the engine's
        default (the cores over the workers)."""
        if self.torch_threads is not None:
            return self.torch_threads
        from .engine import default_workers

        return max(1, (os.cpu_count() or 1) // (self.workers or default_workers()))

    def engine_kwargs(self, loader: ModelLoader | None = None) -> dict[str, Any]:
        """:class:`~chronoserve.Engine`'s keyword arguments: policy, threads, queue, limits and a loader."""
        return {
            "policy": self.policy,
            "policy_options": dict(self.policy_options),
            "workers": self.workers,
            "torch_threads": self.torch_threads,
            "max_queue": self.max_queue,
            "limits": self.limits,
            "loader": loader if loader is not None else self.loader(),
            "costs": self.cost_model(),
            "host_budget": self.host_budget,
            "load_workers": self.load_workers,
        }

    def cost_model(self) -> CostModel:
        """A fresh cost model, taught ``profile``'s rows when there is one."""
        from .costs import CostModel

        costs = CostModel()
        if self.profile is not None:
            self.profile.seed(costs)
        return costs

    def engine(self, *, loader: ModelLoader | None = None, **parts: Any) -> Engine:
        """An engine with these settings; ``parts`` are the rest of its arguments (observers, clock, ...)."""
        from .engine import Engine

        return Engine(**{**self.engine_kwargs(loader), **parts})  # parts win (a cost model of your own)
