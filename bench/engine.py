"""Engine throughput against the raw model loop, and the engine's own overhead per request.

    python bench/engine.py                       # defaults of the core issue
    python bench/engine.py --requests 500 --naive-requests 50   # quicker

In one process, on one materialised ``random/chronos-bolt-tiny`` (random weights: only the
timings mean anything), with context 240 and horizon 24, every request submitted at once:

1. the raw model loop: the backend's ``predict`` on batches of B, from the same number of
   worker threads with the same torch threads as the engine, with no engine at all (the limit);
2. the engine with ``batched`` (max batch B), with ``lru`` and with ``naive``;
3. the engine's overhead per request: the engine on a fake model that answers at once,
   minus the fake model's own time;
4. the scheduling cost of a burst (``--bursts``): N requests submitted at once while their
   model loads (the worst case: every worker is free, nothing can be dispatched), on a fake
   model; event-loop time per request spent submitting and deciding, and the decisions taken.

    python bench/engine.py --only-bursts         # just 4., bursts of 1k, 8k and 32k

It prints the ratios against the raw loop. Timings vary with the machine and its load:
compare only numbers from one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from chronoserve import Engine, ForecastRequest
from chronoserve.engine import default_workers
from chronoserve.models.loader import ChronosLoader
from chronoserve.request import prepare
from chronoserve.testing import FakeLoader, fake_spec

MODEL = "random/chronos-bolt-tiny"


def make_requests(n: int, context: int, horizon: int, model: str = MODEL) -> list[ForecastRequest]:
    rng = np.random.default_rng(0)
    return [
        ForecastRequest(
            model=model,
            target=(50 + np.cumsum(rng.normal(size=context))).astype(np.float32),
            horizon=horizon,
            request_id=str(i),
        )
        for i in range(n)
    ]


def raw_loop(requests: list[ForecastRequest], batch: int, workers: int, torch_threads: int) -> float:
    """Seconds for the backend alone to forecast ``requests`` in batches of ``batch``.

    The requests are validated (``prepare``) before the clock starts: the raw loop is the
    model's limit, with nothing else in it.
    """
    import torch

    loader = ChronosLoader()
    spec = loader.resolve(MODEL)
    backend = loader.load(spec)
    prepared = [prepare(r, spec) for r in requests]
    batches = [prepared[i : i + batch] for i in range(0, len(prepared), batch)]

    def init() -> None:
        torch.set_num_threads(torch_threads)

    with ThreadPoolExecutor(workers, initializer=init) as pool:
        list(pool.map(backend.predict, batches[:workers]))  # warm-up
        start = time.perf_counter()
        results = list(pool.map(backend.predict, batches))
        elapsed = time.perf_counter() - start
    assert sum(len(r) for r in results) == len(requests)
    return elapsed


async def engine_run(
    policy: str, options: dict[str, Any], requests: list[ForecastRequest], **engine_kwargs: Any
) -> tuple[float, dict[str, Any]]:
    """Seconds for the engine to answer every request submitted at once (model warmed up first)."""
    async with Engine(policy, policy_options=options, **engine_kwargs) as engine:
        await engine.forecast(requests[0])  # load and warm up
        start = time.perf_counter()
        results = await engine.forecast_many(requests)
        elapsed = time.perf_counter() - start
        stats = engine.stats()
    assert len(results) == len(requests)
    sizes = [r.batch_size for r in results]
    return elapsed, {"mean_batch": float(np.mean(sizes)), "batches": stats.batches - 1}


def fake_overhead(n: int, batch: int, workers: int) -> dict[str, float]:
    """Engine time per request beyond the model's own, on a fake model (threads as in production)."""
    loader = FakeLoader(specs={"fake": fake_spec("fake")})
    requests = make_requests(n, 240, 24, model="fake")
    options = {"max_batch": batch, "max_wait": 0.0}
    elapsed, _ = asyncio.run(engine_run("batched", options, requests, loader=loader, workers=workers))
    # The fake model's own time on the same batches, measured directly.
    spec = loader.specs["fake"]
    backend = loader.load(spec)
    prepared = [prepare(r, spec) for r in requests]
    start = time.perf_counter()
    for i in range(0, n, batch):
        backend.predict(prepared[i : i + batch])
    model_time = time.perf_counter() - start
    return {
        "engine_seconds": elapsed,
        "fake_model_seconds": model_time,
        "overhead_us_per_request": (elapsed - model_time) / n * 1e6,
    }


async def _burst(n: int) -> dict[str, float]:
    gate = threading.Event()

    class LoadingLoader(FakeLoader):
        def load(self, spec: Any) -> Any:  # the model loads until the burst is in
            gate.wait(60)
            return super().load(spec)

    loader = LoadingLoader(specs={"fake": fake_spec("fake", max_horizon=64)})
    requests = make_requests(n, 64, 8, model="fake")
    engine = Engine("batched", policy_options={"max_batch": 32, "max_wait": 0.01}, loader=loader, workers=2)
    ticks = [0, 0.0]
    tick = engine._tick  # the snapshot, the policy's decide and carrying it out

    def timed_tick() -> float | None:
        start = time.perf_counter()
        try:
            return tick()
        finally:
            ticks[0] += 1
            ticks[1] += time.perf_counter() - start

    engine._tick = timed_tick  # type: ignore[method-assign]
    async with engine:
        await engine.submit(requests[0])  # names the model: its load starts
        ticks[:] = [0, 0.0]
        start = time.perf_counter()
        futures = [await engine.submit(r) for r in requests[1:]]
        for _ in range(3):  # the decisions the burst woke
            await asyncio.sleep(0)
        loop_seconds = time.perf_counter() - start
        gate.set()
        await asyncio.gather(*futures)
    return {
        "requests": n,
        "decisions": ticks[0],
        "decide_us_per_request": ticks[1] / n * 1e6,
        "loop_us_per_request": loop_seconds / n * 1e6,
    }


def bursts(sizes: list[int]) -> list[dict[str, float]]:
    print("\nscheduling a burst submitted while its model loads (fake model, batched B=32):")
    rows = []
    for n in sizes:
        row = asyncio.run(_burst(n))
        rows.append(row)
        print(
            f"  {n:>6d} requests: {row['decisions']:>6.0f} decisions, {row['decide_us_per_request']:8.2f} us of "
            f"deciding and {row['loop_us_per_request']:8.2f} us of event loop per request",
            flush=True,
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--naive-requests", type=int, default=200, help="naive reloads per request: fewer")
    parser.add_argument("--batch", type=int, default=32, help="B for the raw loop and batched")
    parser.add_argument("--max-wait-ms", type=float, default=10.0)
    parser.add_argument("--context", type=int, default=240)
    parser.add_argument("--horizon", type=int, default=24)
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--torch-threads", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=3, help="raw loop and batched alternate this many times")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    parser.add_argument(
        "--bursts", type=lambda t: [int(x) for x in t.split(",")], default=[1000, 8000, 32000], help="burst sizes"
    )
    parser.add_argument("--only-bursts", action="store_true", help="only the burst scheduling cost")
    args = parser.parse_args(argv)
    if args.only_bursts:
        bursts(args.bursts)
        return 0
    torch_threads = args.torch_threads or max(1, (os.cpu_count() or 1) // args.workers)
    engine_kwargs = {"workers": args.workers, "torch_threads": torch_threads}
    requests = make_requests(args.requests, args.context, args.horizon)

    print(
        f"# {MODEL} (RANDOM weights: timings only), context {args.context}, horizon {args.horizon}, "
        f"B={args.batch}, {args.workers} workers x {torch_threads} torch threads, "
        f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}",
        flush=True,
    )
    rows: list[dict[str, Any]] = []

    def record(name: str, n: int, seconds: float, **extra: Any) -> None:
        rows.append({"name": name, "requests": n, "seconds": seconds, "per_second": n / seconds, **extra})
        print(f"  {name:<28s} {n:>6d} requests  {seconds:8.2f} s  {n / seconds:8.1f} req/s", flush=True)

    options = {"max_batch": args.batch, "max_wait": args.max_wait_ms / 1000}
    # The raw loop and batched alternate, so a machine that gets busier or quieter during the
    # run affects both alike; the ratio reported is the median of the per-round ratios.
    round_ratios = []
    for r in range(args.rounds):
        raw_seconds = raw_loop(requests, args.batch, args.workers, torch_threads)
        record(f"raw model loop (round {r + 1})", len(requests), raw_seconds)
        seconds, info = asyncio.run(engine_run("batched", options, requests, **engine_kwargs))
        record(f"engine batched (round {r + 1})", len(requests), seconds, **info)
        round_ratios.append(raw_seconds / seconds)
    seconds, info = asyncio.run(engine_run("lru", {}, requests, **engine_kwargs))
    record("engine lru", len(requests), seconds, **info)
    naive = requests[: args.naive_requests]
    seconds, info = asyncio.run(engine_run("naive", {}, naive, **engine_kwargs))
    record("engine naive", len(naive), seconds, **info)
    overhead = fake_overhead(args.requests, args.batch, args.workers)

    raw = float(np.median([row["per_second"] for row in rows if row["name"].startswith("raw")]))
    batched_ratio = float(np.median(round_ratios))
    print("\nthroughput relative to the raw model loop (same run; raw = median of its rounds):")
    print(
        f"  {'engine batched':<28s} {batched_ratio:6.3f}x   (median of {args.rounds} rounds: "
        + ", ".join(f"{x:.3f}" for x in round_ratios)
        + ")"
    )
    for row in rows:
        if row["name"].startswith("raw") or row["name"].startswith("engine batched"):
            continue
        row["ratio_to_raw"] = row["per_second"] / raw
        print(f"  {row['name']:<28s} {row['ratio_to_raw']:6.3f}x   (mean batch {row['mean_batch']:.1f})")
    print(
        f"\nengine overhead with a fake model: {overhead['overhead_us_per_request']:.1f} us per request "
        f"({args.requests} requests, B={args.batch}, real worker threads)"
    )
    print(f"target: batched >= 0.9x raw: {'met' if batched_ratio >= 0.9 else 'NOT met'}; ", end="")
    print(f"overhead <= 100 us: {'met' if overhead['overhead_us_per_request'] <= 100 else 'NOT met'}")
    burst_rows = bursts(args.bursts)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        meta = {"model": MODEL, "random_weights": True, "argv": sys.argv, **vars(args), "out": str(args.out)}
        summary = {"batched_ratio_median": batched_ratio, "batched_round_ratios": round_ratios}
        args.out.write_text(
            json.dumps(
                {"meta": meta, "rows": rows, "summary": summary, "overhead": overhead, "bursts": burst_rows},
                indent=2,
                default=str,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
