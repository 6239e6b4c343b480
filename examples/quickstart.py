"""chronoserve in-process: many concurrent forecasts through one engine.

    python examples/quickstart.py [--policy batched|lru|naive] [--requests 200]

Uses the random-weight `random/chronos-bolt-tiny` (materialised into the cache on first
use: no download). Its numbers are NOT forecasts; the point is the serving path and the
timings. Point `--model` at a trained checkpoint directory for real forecasts.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # quiet checkpoint loading

from chronoserve import Engine, ForecastRequest

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "pm25"


def histories(n: int, length: int) -> list[np.ndarray]:
    """Hourly PM2.5 windows from the Beijing data when it is beside the project, else random walks."""
    files = sorted(DATA.glob("*.csv")) if DATA.is_dir() else []
    if files:
        series = []
        for path in files:
            with path.open() as handle:
                series.append(
                    np.array([float(r["pm25"]) if r["pm25"] else np.nan for r in csv.DictReader(handle)], np.float32)
                )
        rng = np.random.default_rng(0)
        out = []
        for i in range(n):
            s = series[i % len(series)]
            end = int(rng.integers(length, len(s)))
            out.append(s[end - length : end])
        return out
    rng = np.random.default_rng(0)
    return [(50 + np.cumsum(rng.normal(size=length))).astype(np.float32) for _ in range(n)]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", default="batched")
    parser.add_argument("--model", default="random/chronos-bolt-tiny")
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()

    requests = [
        ForecastRequest(model=args.model, target=h, horizon=24, quantile_levels=[0.1, 0.5, 0.9])
        for h in histories(args.requests, 240)
    ]
    async with Engine(args.policy, policy_options={"max_batch": 32} if args.policy == "batched" else None) as engine:
        # The first request loads the model: in a new process that includes importing torch,
        # transformers and chronos (about 4 s on 2 cores), and the first time ever, writing the
        # random checkpoint into the cache.
        first = await engine.forecast(requests[0])
        start = time.perf_counter()
        results = await engine.forecast_many(requests[1:])
        elapsed = time.perf_counter() - start
        stats = engine.stats()

    note = "  (RANDOM weights: the numbers below are not forecasts)" if first.random_weights else ""
    print(f"model {first.model}{note}")
    print(
        f"first request: cold start={first.cold_start}, load {first.timings.load:.2f} s, "
        f"total {first.timings.total:.2f} s. Next 6 hours (median [q0.1, q0.9]):"
    )
    for h in range(6):
        print(f"  +{h + 1}h  {first.median[h]:8.2f}  [{first.quantiles[h, 0]:.2f}, {first.quantiles[h, 2]:.2f}]")
    total = np.array([r.timings.total for r in results]) * 1000
    print(
        f"then {len(results)} requests at once, policy {stats.policy['name']}: {elapsed:.2f} s, "
        f"{len(results) / elapsed:.0f} forecasts/s, {stats.batches - 1} batches "
        f"(mean size {np.mean([r.batch_size for r in results]):.1f}), "
        f"cold starts {sum(r.cold_start for r in results)}"
    )
    print(f"latency ms: p50 {np.percentile(total, 50):.1f}  p99 {np.percentile(total, 99):.1f}  max {total.max():.1f}")


if __name__ == "__main__":
    asyncio.run(main())
