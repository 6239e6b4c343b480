"""The fork server's preload: what every worker process needs, imported once, before any fork.

Imported only in the fork server of :mod:`chronoserve.forkserver` (``set_forkserver_preload``),
never elsewhere: its import sets environment variables and takes seconds. It

1. keeps the process single-threaded (forking a process that has threads can deadlock the
   child, pytorch issue 2245): numpy's OpenBLAS would start a thread at import unless
   ``OPENBLAS_NUM_THREADS=1``, pyarrow's jemalloc a ``jemalloc_bg_thd`` one unless
   ``JE_ARROW_MALLOC_CONF=background_thread:false`` (each set only where the environment
   leaves it unset); onnxruntime starts a thread at import, so it is not preloaded (its
   import takes ~30 ms in a worker);
2. imports numpy, torch, transformers, chronos and its pipelines, and chronoserve's model,
   engine, server, edge-bench and profile modules (a module that fails to import is listed in
   :data:`MISSING`, the others still load);
3. runs no torch work (no thread pool exists yet, so a worker may still size torch's pools),
   and moves what the imports built out of the garbage collector's sight (``gc.freeze``, as
   gunicorn's ``--preload`` users do), so collections in a worker do not touch, and copy,
   the pages it shares with the fork server;
4. records in module globals what a worker (or the probe) reads: the fork server's pid, how
   long the imports took, its threads afterwards, the thread-sizing environment they saw.
"""

from __future__ import annotations

import gc
import importlib
import os
import time

from .forkserver import os_threads

#: Set before the imports, where unset: without them numpy and pyarrow start threads at import.
SINGLE_THREADED_ENV = {"OPENBLAS_NUM_THREADS": "1", "JE_ARROW_MALLOC_CONF": "background_thread:false"}
#: What the fork server imports, in this order.
MODULES = (
    "numpy",
    "torch",
    "transformers",
    "chronos",
    "chronos.chronos_bolt",
    "chronos.chronos2",
    "chronos.chronos",
    "chronoserve.models.chronos",
    "chronoserve.models.loader",
    "chronoserve.engine",
    "chronoserve.sync",
    "chronoserve.server.app",
    "chronoserve.server.process",
    "chronoserve.server.frontend",
    "chronoserve.server.engine_process",
    "chronoserve.edge.runner",
    "chronoserve.profile.runner",
)
#: Environment variables that size thread pools when a library is imported (recorded as seen).
IMPORT_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "JE_ARROW_MALLOC_CONF")


def _preload() -> tuple[str, ...]:
    for name, value in SINGLE_THREADED_ENV.items():
        os.environ.setdefault(name, value)
    missing = []
    for name in MODULES:
        try:
            importlib.import_module(name)
        except Exception as exc:  # a worker then imports it itself, and meets the same error there
            missing.append(f"{name} ({type(exc).__name__}: {exc})")
    return tuple(missing)


#: The process that imported this module: the fork server (a worker sees another pid).
PID = os.getpid()
_started = time.perf_counter()
#: The modules of :data:`MODULES` that failed to import, each with its error.
MISSING = _preload()
#: Seconds the imports took.
IMPORT_SECONDS = time.perf_counter() - _started
#: The fork server's OS threads once the imports were done (1 is the only safe count to fork).
THREADS = os_threads()
#: :data:`IMPORT_ENV` as the imported libraries saw it (None: unset).
ENVIRONMENT = {name: os.environ.get(name) for name in IMPORT_ENV}
gc.collect()
gc.freeze()
