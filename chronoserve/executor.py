"""Where blocking work runs: the one seam between the event loop and torch.

The engine hands every model load and every batch to an :class:`Executor`. The default,
:class:`ThreadExecutor`, runs them in worker threads, so the event loop never blocks on
torch. :class:`InlineExecutor` runs them on the loop itself, for fake models in tests.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class Executor:
    """Runs blocking callables for the engine.

    :meth:`submit` hands the work over at once (so a batch dispatched in the middle of a
    burst of submissions starts running right away) and returns a future of its result.
    """

    def submit(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        raise NotImplementedError

    async def run(self, fn: Callable[[], T]) -> T:
        return await self.submit(fn)

    def shutdown(self) -> None:
        """Release the workers. Work already started finishes first."""


class InlineExecutor(Executor):
    """Calls ``fn`` directly on the event loop. Only for callables that never block."""

    def submit(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        try:
            future.set_result(fn())
        except Exception as exc:
            future.set_exception(exc)
        return future


class ThreadExecutor(Executor):
    """A pool of ``workers`` threads; each sets torch's intra-op threads to ``torch_threads``.

    torch is never imported here: the thread count is applied in a thread the first time it
    runs work after torch has been imported (by a model load).
    """

    def __init__(self, workers: int, torch_threads: int | None = None, name: str = "chronoserve") -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers = workers
        self.torch_threads = torch_threads
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
        self._local = threading.local()

    def _call(self, fn: Callable[[], T]) -> T:
        if self.torch_threads and not getattr(self._local, "threads_set", False) and "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(self.torch_threads)
            self._local.threads_set = True
        return fn()

    def submit(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        return asyncio.get_running_loop().run_in_executor(self._pool, self._call, fn)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=False)
