"""The backends side by side: eager torch, ONNX Runtime, and int8 on both (see docs/backends.md).

    python bench/backends.py                           # the four models of the docs' table (minutes)
    python bench/backends.py --models random/chronos-bolt-tiny --batches 1,8 --repeats 5
    python bench/backends.py --models none --eval results/backends-eval    # the accuracy table only

For each model, four backends are loaded through ``ChronosLoader`` (as ``--backend`` and
``--dtype`` load them): torch float32 (eager, the reference), onnx float32, torch int8 and onnx
int8, with one thread each (torch's intra-op threads and ONNX Runtime's session). Each runs the
same batches of B requests (context 240 points with a few gaps, horizon 24); the variants take
turns batch by batch, so a slower minute on a shared machine hits them all alike. Reported: the
median seconds per batch at each B, the ratio of eager's time to it (above 1 is faster), and
the largest difference of the answers (every quantile of every request of the largest batch)
from eager's: absolute, and relative to the answer's scale (``max |a - e| / max |e|`` per
request), the measure the onnx backend's load-time check uses. A backend that fell back to
torch (a failed export, a family ONNX does not serve) is shown with what actually ran.

``--eval OUT`` scores the shipped ``chronos-2-pm25`` under each backend and dtype with
``chronoserve eval`` (a small grid: 12 sites, contexts of 2 and 10 days, horizons 4, 24 and 48
hours, 64 windows each) and prints MASE and WQL relative to seasonal naive over the whole grid,
and their change from torch float32.

Timings vary with the machine and its load: compare only numbers from one run.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

MODELS = ("random/chronos-bolt-tiny", "random/chronos-bolt-small", "random/chronos-2", "chronos-2-pm25")
VARIANTS = (("torch", "float32"), ("onnx", "float32"), ("torch", "int8"), ("onnx", "int8"))
EVAL_MODEL = "chronos-2-pm25"
EVAL_GRID = ("--context-days", "2,10", "--horizons", "4,24,48", "--max-windows", "64")


@dataclass
class Row:
    model: str
    asked: tuple[str, str]
    ran: tuple[str, str]
    load_seconds: float
    seconds: dict[int, float] = field(default_factory=dict)
    max_abs: float = 0.0
    max_rel: float = 0.0


def batch(size: int, context: int, horizon: int, seed: int = 0) -> list[Any]:
    from chronoserve.models import PreparedRequest

    rng = np.random.default_rng(seed)
    out = []
    for i in range(size):
        t = np.arange(context)
        values = (50 + 10 * np.sin(t / 12 + i) + rng.normal(size=context)).astype(np.float32)
        values[rng.random(context) < 0.02] = np.nan
        out.append(PreparedRequest(values, horizon, (0.1, 0.5, 0.9)))
    return out


def measure(model: str, batches: Sequence[int], repeats: int, context: int, horizon: int, threads: int) -> list[Row]:
    """Load the four variants of ``model`` and time them batch by batch, in turns."""
    import torch

    from chronoserve.models import ChronosLoader
    from chronoserve.models.onnx import relative_difference

    rows, backends = [], []
    for runtime, dtype in VARIANTS:
        loader = ChronosLoader(backend=runtime, dtype=dtype, torch_threads=threads)
        started = time.perf_counter()
        backend = loader.load(loader.resolve(model))
        rows.append(Row(model, (runtime, dtype), (backend.backend, backend.dtype), time.perf_counter() - started))
        backends.append(backend)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for size in batches:
            requests = batch(size, context, min(horizon, backends[0].spec.max_horizon))
            answers = [b.predict(requests) for b in backends]  # warm-up, and the answers compared
            times: list[list[float]] = [[] for _ in backends]
            for _ in range(repeats):
                for i, backend in enumerate(backends):
                    started = time.perf_counter()
                    backend.predict(requests)
                    times[i].append(time.perf_counter() - started)
            for row, spent, answer in zip(rows, times, answers, strict=True):
                row.seconds[size] = statistics.median(spent)
                if size == max(batches):
                    pairs = list(zip(answer, answers[0], strict=True))
                    row.max_abs = max(float(np.abs(a.quantiles - e.quantiles).max()) for a, e in pairs)
                    row.max_rel = relative_difference(answer, answers[0])
    finally:
        torch.set_num_threads(previous)
        for backend in backends:
            backend.close()
    return rows


def print_speed(rows: Sequence[Row], batches: Sequence[int], context: int, threads: int) -> None:
    print(f"seconds per batch (median), context {context}, {threads} thread; x eager = eager's time / this one's")
    head = " | ".join([f"B={b} s" for b in batches] + [f"x eager B={b}" for b in batches])
    print(f"| model | backend | dtype | load s | {head} | max abs diff | max rel diff |")
    print("|---" * (6 + 2 * len(batches)) + "|")
    eager: dict[str, Row] = {}
    for row in rows:
        if row.asked == ("torch", "float32"):
            eager[row.model] = row
        ref = eager[row.model]
        ran = row.ran[0] if row.ran[0] == row.asked[0] else f"{row.ran[0]} (asked {row.asked[0]})"
        speed = [f"{row.seconds[b]:.4f}" for b in batches]
        ratios = [f"{ref.seconds[b] / row.seconds[b]:.2f}" for b in batches]
        print(
            f"| {row.model} | {ran} | {row.ran[1]} | {row.load_seconds:.1f} | {' | '.join(speed + ratios)} "
            f"| {row.max_abs:.2g} | {row.max_rel:.2g} |"
        )


def run_eval(out: Path, runtime: str, dtype: str, series: str | None) -> Path:
    """``chronoserve eval`` of the shipped model on one backend and dtype; its output directory."""
    target = out / f"{runtime}-{dtype}"
    command = [sys.executable, "-m", "chronoserve", "eval", "--models", EVAL_MODEL, *EVAL_GRID]
    if series:
        command += ["--series", series]
    command += ["--backend", runtime, "--dtype", dtype, "--torch-threads", "1", "--workers", "2"]
    command += ["--no-plots", "--quiet", "--overwrite", "--out", str(target)]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return target


def read_eval(target: Path, model: str = EVAL_MODEL) -> dict[str, float]:
    """The model's MASE and WQL relative to seasonal naive over the whole grid, and its mean absolute ones."""
    with open(target / "relative.csv", newline="") as f:
        (overall,) = [
            r
            for r in csv.DictReader(f)
            if r["model"] == model and r["context_days"] == "all" and r["horizon_hours"] == "all"
        ]
    with open(target / "summary.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["model"] == model and r["covariates"] == "none"]
    return {
        "relative_mase": float(overall["relative_mase"]),
        "relative_wql": float(overall["relative_wql"]),
        "mase": statistics.fmean(float(r["mase"]) for r in rows),
        "wql": statistics.fmean(float(r["wql"]) for r in rows),
        "windows": float(sum(int(r["scored"]) for r in rows)),
    }


def print_eval(results: dict[tuple[str, str], dict[str, float]]) -> None:
    ref = results.get(("torch", "float32"))
    print(f"{EVAL_MODEL} through chronoserve eval ({' '.join(EVAL_GRID)}); relative = to seasonal naive")
    print("| backend | dtype | MASE rel. | WQL rel. | mean MASE | mean WQL | Δ MASE vs torch fp32 | Δ WQL | windows |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (runtime, dtype), r in results.items():
        d_mase = f"{r['mase'] - ref['mase']:+.4f}" if ref else "-"
        d_wql = f"{r['wql'] - ref['wql']:+.4f}" if ref else "-"
        print(
            f"| {runtime} | {dtype} | {r['relative_mase']:.4f} | {r['relative_wql']:.4f} | {r['mase']:.4f} "
            f"| {r['wql']:.4f} | {d_mase} | {d_wql} | {r['windows']:.0f} |"
        )


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated models, or none")
    parser.add_argument("--batches", type=_ints, default=[1, 8, 32], help="batch sizes (default 1,8,32)")
    parser.add_argument("--repeats", type=int, default=20, help="timed batches per variant and size (default 20)")
    parser.add_argument("--context", type=int, default=240, help="context points (default 240)")
    parser.add_argument("--horizon", type=int, default=24, help="horizon (default 24)")
    parser.add_argument("--threads", type=int, default=1, help="threads per backend (default 1)")
    parser.add_argument("--eval", type=Path, default=None, metavar="OUT", help="also score chronos-2-pm25 into OUT")
    parser.add_argument("--eval-series", default=None, help="--series of the eval (default: every site)")
    args = parser.parse_args(argv)
    models = [] if args.models.strip() == "none" else [m.strip() for m in args.models.split(",") if m.strip()]
    rows: list[Row] = []
    for model in models:
        rows += measure(model, args.batches, args.repeats, args.context, args.horizon, args.threads)
    if rows:
        print_speed(rows, args.batches, args.context, args.threads)
    if args.eval is not None:
        results = {v: read_eval(run_eval(args.eval, *v, args.eval_series)) for v in VARIANTS}
        if rows:
            print()
        print_eval(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
