"""Model loads by tier and path: ``from_pretrained``, fastload, promotion from the host tier; and concurrency.

    python bench/coldstart_loads.py                                  # the four families, torch and onnx
    python bench/coldstart_loads.py --models random/chronos-bolt-tiny --backends torch --repeats 3
    python bench/coldstart_loads.py --concurrent 4 --tiers none      # the concurrency table only

:func:`measure_tiers`: for each model and backend, the seconds of ``ChronosLoader.load`` three ways,
in turns (one of each per repeat, so a slower moment of a shared machine hits them all alike):

- ``from_pretrained``: from disk through ``BaseChronosPipeline.from_pretrained`` under the
  process-wide lock (``ChronosLoader(fastload=False)``, the path before fastload);
- ``fastload_cold``: from disk through :mod:`chronoserve.models.fastload`, its template cache
  emptied first: the model is built on the meta device, then the tensors assigned (a model's
  first load in a process);
- ``fastload``: the same with the template of that checkpoint cached (a later load from disk:
  the meta model is cloned from it instead of built);
- ``host``: promotion from the copy :meth:`~chronoserve.models.ChronosLoader.offload` kept of
  the model the fastload run loaded (no read from disk; the template cached, as for ``fastload``).

For the onnx backend each load includes what a load does there (export key, opening the session,
the parity probe; the export itself is cached by a first, untimed load), and the host copy lets
promotion skip the key and the probe. Chronos-T5 has no onnx backend: its onnx rows run torch (the
``ran`` column). Every promoted model's answers are compared with the disk load's (``same``).

:func:`measure_concurrent`: N different models loaded one after another through ``from_pretrained``
(serialised by the lock) against all N at once on N threads through fastload, and, to show
where the gain comes from, N fastloads one after another. Wall seconds of the whole set.

Every model here is ``random/``: the published architectures with random weights (materialised
once into the cache, ``--cache`` or chronoserve's), so their forecasts are not forecasts; load
times are the real ones. Loads use one torch thread. Timings vary with the machine and its
load: compare only numbers from one run.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

FAMILY_MODELS = (
    "random/chronos-bolt-tiny",
    "random/chronos-bolt-small",
    "random/chronos-2",
    "random/chronos-t5-mini",
)
CONCURRENT_MODELS = (
    "random/chronos-bolt-tiny",
    "random/chronos-bolt-mini",
    "random/chronos-bolt-small",
    "random/chronos-t5-mini",
)
BACKENDS = ("torch", "onnx")
PATHS = ("from_pretrained", "fastload_cold", "fastload", "host")
#: The measurements of :func:`measure_concurrent`, in seconds.
CONCURRENT = (
    "serial_from_pretrained_s",
    "serial_fastload_cold_s",
    "concurrent_fastload_cold_s",
    "serial_fastload_s",
    "concurrent_fastload_s",
)


def _loader(backend: str = "torch", *, fastload: bool = True, cache: str | Path | None = None) -> Any:
    from chronoserve.models import ChronosLoader

    return ChronosLoader(backend=backend, torch_threads=1, fastload=fastload, cache_dir=cache)


def _requests() -> list[Any]:
    from chronoserve.models import PreparedRequest

    t = np.arange(200)
    return [PreparedRequest((20 + 5 * np.sin(t / 7)).astype(np.float32), 16, (0.1, 0.5, 0.9), seed=1)]


def _timed(load: Callable[[], Any]) -> tuple[Any, float]:
    gc.collect()  # the collector's pauses land outside the timed load
    started = time.perf_counter()
    backend = load()
    return backend, time.perf_counter() - started


def _answers(backend: Any) -> np.ndarray:
    return np.stack([f.quantiles for f in backend.predict(_requests())])


def measure_tiers(
    models: Sequence[str] = FAMILY_MODELS,
    repeats: int = 5,
    backends: Sequence[str] = BACKENDS,
    cache: str | Path | None = None,
) -> list[dict[str, Any]]:
    """One row per model and backend: median seconds of each path (:data:`PATHS`), what ran, whether
    promotion answered the same, and the host copy's bytes (see the module docstring)."""
    from chronoserve.models import fastload

    rows = []
    for model in models:
        for backend in backends:
            fast, old = _loader(backend, cache=cache), _loader(backend, fastload=False, cache=cache)
            spec = fast.resolve(model)
            first = fast.load(spec)  # materialises, exports and checks ONNX once: later loads find them
            ran = f"{first.backend} {first.dtype}"
            first.close()
            seconds: dict[str, list[float]] = {path: [] for path in PATHS}
            same, nbytes = True, 0
            for _ in range(repeats):
                loaded, took = _timed(partial(old.load, spec))
                seconds["from_pretrained"].append(took)
                loaded.close()
                fastload.clear_templates()
                loaded, took = _timed(partial(fast.load, spec))
                seconds["fastload_cold"].append(took)
                loaded.close()
                loaded, took = _timed(partial(fast.load, spec))
                seconds["fastload"].append(took)
                expected = _answers(loaded)
                copy = fast.offload(loaded)
                loaded.close()
                del loaded
                if copy is None:
                    raise RuntimeError(f"{model} ({backend}): the loader kept no host copy")
                nbytes = copy.nbytes
                promoted, took = _timed(partial(fast.load, spec, host=copy))
                seconds["host"].append(took)
                same = same and bool(np.array_equal(_answers(promoted), expected))
                promoted.close()
            medians = {path: statistics.median(values) for path, values in seconds.items()}
            rows.append(
                {
                    "model": model,
                    "backend": backend,
                    "ran": ran,
                    "random_weights": spec.random_weights,
                    "repeats": repeats,
                    **{f"{path}_s": medians[path] for path in PATHS},
                    "host_vs_fastload": medians["fastload"] / medians["host"],
                    "host_vs_fastload_cold": medians["fastload_cold"] / medians["host"],
                    "host_vs_from_pretrained": medians["from_pretrained"] / medians["host"],
                    "fastload_vs_from_pretrained": medians["from_pretrained"] / medians["fastload"],
                    "fastload_cold_vs_from_pretrained": medians["from_pretrained"] / medians["fastload_cold"],
                    "host_nbytes": nbytes,
                    "same_answers": same,
                }
            )
    return rows


def measure_concurrent(
    models: Sequence[str] = CONCURRENT_MODELS,
    n: int = 4,
    repeats: int = 3,
    cache: str | Path | None = None,
) -> dict[str, Any]:
    """Wall seconds (median of ``repeats``) to load the first ``n`` of ``models`` (:data:`CONCURRENT`):
    one after another through ``from_pretrained``; one after another through fastload; all at once
    on ``n`` threads through fastload; the fastload ones with the template cache emptied first
    (``_cold``: each model built on the meta device) and with it warm. With the ratios of each to
    the first, and of concurrent to serial fastload."""
    from chronoserve.models import fastload

    if len(models) < n:
        raise ValueError(f"{n} loads need {n} different models, got {len(models)}")
    chosen = list(models[:n])
    fast, old = _loader(cache=cache), _loader(fastload=False, cache=cache)
    specs = [fast.resolve(m) for m in chosen]
    for spec in specs:
        fast.load(spec).close()  # materialised once, outside the timings
    times: dict[str, list[float]] = {key: [] for key in CONCURRENT}
    for _ in range(repeats):
        times["serial_from_pretrained_s"].append(_serial(old, specs))
        fastload.clear_templates()
        times["serial_fastload_cold_s"].append(_serial(fast, specs))
        fastload.clear_templates()
        times["concurrent_fastload_cold_s"].append(_concurrent(fast, specs))
        times["serial_fastload_s"].append(_serial(fast, specs))
        times["concurrent_fastload_s"].append(_concurrent(fast, specs))
    medians = {key: statistics.median(values) for key, values in times.items()}
    serial = medians["serial_from_pretrained_s"]
    return {
        "models": chosen,
        "n": n,
        "repeats": repeats,
        "cores": os.cpu_count(),
        "random_weights": all(spec.random_weights for spec in specs),
        **medians,
        **{key.removesuffix("_s") + "_vs_serial_from_pretrained": medians[key] / serial for key in CONCURRENT},
        "concurrent_vs_serial_fastload": medians["concurrent_fastload_s"] / medians["serial_fastload_s"],
        "concurrent_vs_serial_fastload_cold": medians["concurrent_fastload_cold_s"] / medians["serial_fastload_cold_s"],
    }


def _serial(loader: Any, specs: Sequence[Any]) -> float:
    gc.collect()
    started = time.perf_counter()
    backends = [loader.load(spec) for spec in specs]
    took = time.perf_counter() - started
    for backend in backends:
        backend.close()
    return took


def _concurrent(loader: Any, specs: Sequence[Any]) -> float:
    gc.collect()
    barrier = threading.Barrier(len(specs) + 1)
    results: list[Any] = [None] * len(specs)

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = loader.load(specs[i])
        except BaseException as e:  # reported below
            results[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(specs))]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    took = time.perf_counter() - started
    for result in results:
        if isinstance(result, BaseException):
            raise result
        result.close()
    return took


def print_tiers(rows: Sequence[dict[str, Any]]) -> None:
    print("\nLoads by path, median seconds (random weights: not forecasts; one torch thread)\n")
    print(
        "| model | backend | ran | from_pretrained | fastload, cold | fastload | host "
        "| host vs from_pretrained | host vs fastload, cold | host vs fastload | fastload vs from_pretrained "
        "| cold vs from_pretrained | host copy | same answers |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['backend']} | {r['ran']} | {r['from_pretrained_s']:.4f} "
            f"| {r['fastload_cold_s']:.4f} | {r['fastload_s']:.4f} | {r['host_s']:.4f} "
            f"| {r['host_vs_from_pretrained']:.2f}x | {r['host_vs_fastload_cold']:.2f}x | {r['host_vs_fastload']:.2f}x "
            f"| {r['fastload_vs_from_pretrained']:.2f}x | {r['fastload_cold_vs_from_pretrained']:.2f}x "
            f"| {r['host_nbytes'] / 1e6:.1f} MB | {r['same_answers']} |"
        )


def print_concurrent(result: dict[str, Any]) -> None:
    n = result["n"]
    print(f"\n{n} different models, wall seconds, median of {result['repeats']} ({result['cores']} cores)\n")
    print(f"models: {', '.join(result['models'])} (random weights)\n")
    print("| loads | seconds | vs serial from_pretrained |")
    print("|---|---:|---:|")
    labels = {
        "serial_from_pretrained_s": f"{n} one after another, from_pretrained (the lock)",
        "serial_fastload_cold_s": f"{n} one after another, fastload, cold (no template)",
        "concurrent_fastload_cold_s": f"{n} at once on {n} threads, fastload, cold",
        "serial_fastload_s": f"{n} one after another, fastload",
        "concurrent_fastload_s": f"{n} at once on {n} threads, fastload",
    }
    serial = result["serial_from_pretrained_s"]
    for key, label in labels.items():
        print(f"| {label} | {result[key]:.4f} | {result[key] / serial:.2f}x |")
    print(
        f"\nconcurrent vs serial fastload: {result['concurrent_vs_serial_fastload']:.2f}x "
        f"(cold: {result['concurrent_vs_serial_fastload_cold']:.2f}x)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--models", default=",".join(FAMILY_MODELS), help="models of the tier table, comma-separated")
    parser.add_argument("--backends", default=",".join(BACKENDS), help="torch, onnx or both")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tiers", default="yes", choices=("yes", "none"), help="none: skip the tier table")
    parser.add_argument("--concurrent", type=int, default=4, help="N of the concurrency table (0: skip it)")
    parser.add_argument("--concurrent-models", default=",".join(CONCURRENT_MODELS))
    parser.add_argument("--cache", default=None, help="where random checkpoints are materialised")
    args = parser.parse_args(argv)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores")
    if args.tiers == "yes":
        models = [m for m in args.models.split(",") if m]
        print_tiers(measure_tiers(models, args.repeats, [b for b in args.backends.split(",") if b], args.cache))
    if args.concurrent:
        models = [m for m in args.concurrent_models.split(",") if m]
        print_concurrent(measure_concurrent(models, args.concurrent, max(1, args.repeats // 2 + 1), args.cache))
    return 0


if __name__ == "__main__":
    sys.exit(main())
