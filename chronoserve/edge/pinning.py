"""Pinning a benchmark to k cores, and checking that it stuck.

On Linux the CPU affinity is a property of each *thread*, inherited when a thread is
created; threads that already exist keep their old mask. torch (OpenMP), numpy (OpenBLAS)
and the engine create their thread pools early, so the child process pins itself, and every
thread it has at that moment (normally only the interpreter's), first thing: before it
imports any of them, or, forked from chronoserve's fork server (which imported them and
stays single-threaded), before any of their pools exists (:func:`pin`). The pools are sized
to ``k`` by :func:`set_torch_threads` (the environment sizes them only in a freshly spawned
child). After the model is loaded, and again at the end, it reads back the mask of the
process and of every thread in ``/proc/self/task`` (:func:`inspect_pinning`). (A
``preexec_fn`` in the parent would pin even earlier, but is unsafe when the parent has
threads, as a test runner may.)

torch's default thread count comes from the core count and ignores the affinity mask
(pytorch #64864), so the thread counts are always set explicitly (:func:`set_torch_threads`)
and recorded.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import Any

#: Environment variables that size thread pools at import time (OpenMP, OpenBLAS, MKL).
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def allowed_cores() -> list[int]:
    """The cores this process may run on, sorted."""
    return sorted(os.sched_getaffinity(0))


def parse_core_counts(text: str) -> list[int]:
    """``"1,2,3"`` -> ``[1, 2, 3]``: core counts of a sweep, each >= 1, no duplicates."""
    counts: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            value = int(part)
        except ValueError:
            raise ValueError(f"expected comma-separated core counts, got {text!r}") from None
        if value < 1:
            raise ValueError(f"a core count must be at least 1, got {value}")
        if value in counts:
            raise ValueError(f"core count {value} is listed twice")
        counts.append(value)
    if not counts:
        raise ValueError("no core count given")
    return counts


def choose_cores(k: int, allowed: Collection[int]) -> list[int]:
    """The ``k`` cores to pin to: the highest-numbered ``k`` of ``allowed``.

    Core 0 takes most interrupts and housekeeping on Linux and on the Raspberry Pi, so a
    1-core run on a 4-core Pi runs on core 3, and the cores left free for the rest of the
    system are the low ones. Raises :class:`ValueError` when ``k`` is more than allowed.
    """
    cores = sorted(allowed)
    if k < 1:
        raise ValueError(f"a core count must be at least 1, got {k}")
    if k > len(cores):
        raise ValueError(f"{k} cores asked for, but this process may use only {len(cores)} ({format_cores(cores)})")
    return cores[-k:]


def format_cores(cores: Iterable[int]) -> str:
    return ",".join(str(c) for c in sorted(cores))


def pin(cores: Collection[int]) -> int:
    """Pin this process, and every thread it has now, to ``cores``; return how many threads that was.

    Threads created later inherit the mask. Called first thing in the child, before torch,
    numpy's BLAS or the engine exist, there is normally one thread (the interpreter's). Also
    sizes the OpenMP/OpenBLAS/MKL pools through the environment, if nothing set them.
    """
    wanted = set(cores)
    os.sched_setaffinity(0, wanted)
    threads = 0
    for task in Path("/proc/self/task").iterdir():
        try:
            os.sched_setaffinity(int(task.name), wanted)
            threads += 1
        except (ValueError, OSError):
            continue  # the thread ended meanwhile
    for name in THREAD_ENV:
        os.environ.setdefault(name, str(len(wanted)))
    return threads


def set_torch_threads(k: int) -> dict[str, int]:
    """``torch.set_num_threads(k)`` and (once per process, before any inter-op work)
    ``torch.set_num_interop_threads(k)``; returns what torch reports afterwards."""
    import torch

    torch.set_num_threads(k)
    # Already set, or inter-op work already ran: then the value read below says what holds.
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(k)
    return {"num_threads": int(torch.get_num_threads()), "num_interop_threads": int(torch.get_num_interop_threads())}


def thread_affinities() -> dict[int, list[int]]:
    """The affinity mask of every thread of this process (``/proc/self/task/*``), by thread id."""
    out: dict[int, list[int]] = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            tid = int(task.name)
            out[tid] = sorted(os.sched_getaffinity(tid))
        except (ValueError, OSError):
            continue  # the thread ended while we looked
    return out


def parse_parallel_info(text: str) -> dict[str, Any]:
    """``torch.__config__.parallel_info()`` as a dict: its ``name : value`` lines (thread counts,
    environment variables, the parallel backend) and, under ``libraries``, the lines naming
    the OpenMP, MKL and oneDNN builds."""
    summary: dict[str, Any] = {}
    libraries: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.endswith(":"):
            continue  # empty, or a section header ("ATen/Parallel:")
        if " : " in line:
            key, _, value = line.rpartition(" : ")
        elif ": " in line:
            key, _, value = line.partition(": ")
        else:
            libraries.append(line)
            continue
        summary[key.strip()] = value.strip()
    summary["libraries"] = libraries
    return summary


def parallel_info_summary() -> dict[str, Any]:
    """:func:`parse_parallel_info` of the loaded torch (empty if torch is not imported)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return {}
    return parse_parallel_info(torch.__config__.parallel_info())


def inspect_pinning(cores: Collection[int]) -> dict[str, Any]:
    """What actually holds, to record after the model is loaded, and whether it is what was asked."""
    wanted = sorted(cores)
    process = sorted(os.sched_getaffinity(0))
    threads = thread_affinities()
    stray = {tid: mask for tid, mask in threads.items() if mask != wanted}
    info: dict[str, Any] = {
        "requested_cores": wanted,
        "process_affinity": process,
        "threads": len(threads),
        "thread_affinities": sorted({tuple(mask) for mask in threads.values()}),
        "threads_off_the_pinned_set": {str(tid): mask for tid, mask in stray.items()},
        "ok": process == wanted and not stray,
    }
    torch = sys.modules.get("torch")
    if torch is not None:
        info["torch_num_threads"] = int(torch.get_num_threads())
        info["torch_num_interop_threads"] = int(torch.get_num_interop_threads())
        info["parallel_info"] = parallel_info_summary()
    info["thread_env"] = {name: os.environ.get(name) for name in THREAD_ENV}
    return info
