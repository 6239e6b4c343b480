"""How well the engine's cost model predicts a batch's latency, measured the way Zhao & Georgantas do.

    python bench/costs.py                    # collect (about 6 min on 2 cores), then evaluate
    python bench/costs.py collect --quick    # a short collection (about 2 min)
    python bench/costs.py evaluate           # evaluate what results/costs/batches.csv holds
    python bench/costs.py hot-path           # what predicting and learning cost per batch

**Collect.** One engine as ``chronoserve serve`` runs it (``batched``, 2 workers x 1 torch
thread, so batches run side by side) serves streams of requests: each stream picks a model, a
query class (context, horizon, covariates) and a batch size, submits that many requests at once,
waits for them and starts again. Every batch the engine runs is recorded with the features the
cost model sees (estimated GFLOP, rows, the co-located load expected at dispatch and the one it
met) and its measured inference time, in five phases:

- ``train``: models S (random bolt-tiny, random bolt-small, random t5-tiny and the shipped
  chronos-2-pm25), 1 or 2 streams (alternating), so batches run alone and beside another;
- ``loads`` (test set 1, changed loads): models S, 4 streams (queues, merged batches, always a
  neighbour);
- ``unseen`` (test set 2): models U never seen in training (random bolt-mini, t5-small,
  chronos-2), 1 or 2 streams;
- ``mix`` (test set 3, heterogeneous): S and U together, 1 to 3 streams;
- ``drift``: models S, 2 streams; half-way two processes that keep a core busy each start (the
  load changes under the model), to see how fast the online learners recover.

**Evaluate.** Learners are trained on ``train`` and then, for each test set from that same
trained state, predict each batch before learning from it (prequential, as online learning is
used): offline least squares (frozen), online SGD (normalised LMS) and online RLS with a
forgetting factor (:class:`chronoserve.costs.CostModel`, the engine's own), each static (no
co-location feature) and co-location aware (with the load expected at dispatch; "known" uses the
load the batch really met, a bound no scheduler has). MSE (ms^2) and the distribution of the
relative error (median, p90, share within 20 %), per test set; PNGs of the error distributions,
of the recovery after the load changed, and of predicted against measured latency.

Random weights: only the timings mean anything, which is all this measures. Timings vary with
the machine and its load: compare only numbers from one run.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from chronoserve import Engine, ForecastRequest
from chronoserve.costs import BatchCost, BatchFeatures, CostModel
from chronoserve.data import SeriesStore
from chronoserve.events import EngineObserver

SEEN = ("random/chronos-bolt-tiny", "random/chronos-bolt-small", "random/chronos-t5-tiny", "chronos-2-pm25")
UNSEEN = ("random/chronos-bolt-mini", "random/chronos-t5-small", "random/chronos-2")
FIELDS = (
    "phase", "seq", "time_s", "model", "batch", "gflop", "rows", "steps", "expected_colocated", "colocated",
    "seconds", "engine_predicted_s", "hog",
)  # fmt: skip
TEST_SETS = ("loads", "unseen", "mix")
#: Processes that each keep a core busy from half-way through the drift phase: with one per core,
#: the workers get about half the machine (one alone made the latency noisier, not slower).
HOGS = 2


# -- collect -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Phase:
    name: str
    models: tuple[str, ...]
    streams: tuple[int, ...]
    """Stream counts, cycled every ``switch`` batches."""
    batches: int
    switch: int = 40
    hog_after: int | None = None
    """Start a process that keeps one core busy after this many batches."""


def phases(quick: bool) -> list[Phase]:
    n = (lambda x: max(30, x // 4)) if quick else (lambda x: x)
    return [
        Phase("train", SEEN, (1, 2), n(600)),
        Phase("loads", SEEN, (4,), n(250)),
        Phase("unseen", UNSEEN, (1, 2), n(250)),
        Phase("mix", SEEN + UNSEEN, (1, 2, 3), n(300), switch=30),
        Phase("drift", SEEN, (2,), n(300), hog_after=n(300) // 2),
    ]


def shapes(family: str, max_horizon: int, params: int) -> tuple[list[int], list[int], list[int], list[int]]:
    """(contexts, horizons, covariate counts, batch sizes) a stream draws from, per model kind:
    Chronos-T5 decodes 20 samples a step, so its requests are kept short and its batches small."""
    if family == "chronos-t5":
        return [64, 240], [8, 16], [0], [1, 2, 4]
    contexts = [64, 240, 512]
    horizons = [h for h in (16, 64) if h <= max_horizon] or [max_horizon]
    covariates = [0, 2] if family == "chronos-2" else [0]
    batches = [1, 2, 4, 8, 16] if params > 40e6 else [1, 2, 4, 8, 16, 32]
    return contexts, horizons, covariates, batches


class Recorder(EngineObserver):
    def __init__(self, clock: Callable[[], float]) -> None:
        self.rows: list[dict[str, Any]] = []
        self.phase = ""
        self.hog = False
        self.clock = clock
        self.t0 = clock()

    def batch_cost(self, cost: BatchCost) -> None:
        f = cost.features
        self.rows.append(
            {
                "phase": self.phase,
                "seq": len(self.rows),
                "time_s": round(self.clock() - self.t0, 4),
                "model": f.model,
                "batch": cost.size,
                "gflop": f.gflop,
                "rows": f.rows,
                "steps": f.steps,
                "expected_colocated": cost.expected_colocated,
                "colocated": f.colocated,
                "seconds": cost.seconds,
                "engine_predicted_s": cost.predicted_seconds,
                "hog": int(self.hog),
            }
        )


def _requests(
    rng: np.random.Generator, model: str, spec: Any, values: np.ndarray, covariates: dict[str, np.ndarray]
) -> list[ForecastRequest]:
    contexts, horizons, covs, batches = shapes(spec.family, spec.max_horizon, spec.num_params or 0)
    context, horizon, cov, size = (int(rng.choice(x)) for x in (contexts, horizons, covs, batches))
    out = []
    for _ in range(size):
        start = int(rng.integers(0, len(values) - context - horizon))
        end = start + context
        names = list(covariates)[:cov]
        out.append(
            ForecastRequest(
                model=model,
                target=values[start:end],
                horizon=horizon,
                past_covariates={n: covariates[n][start:end] for n in names} or None,
                future_covariates={n: covariates[n][end : end + horizon] for n in names} or None,
            )
        )
    return out


def _hog() -> subprocess.Popen[bytes]:
    """A process that keeps a core busy (the load that changes under the cost model)."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


async def collect(
    out: Path,
    quick: bool,
    *,
    engine_factory: Callable[[list[EngineObserver]], Engine] | None = None,
    plan: Sequence[Phase] | None = None,
    hog: Callable[[], Any] = _hog,
) -> list[dict[str, Any]]:
    """Run every phase through one engine; write ``batches.csv``; return its rows."""
    store = SeriesStore.embedded()
    values = store.values("dongsi")
    values = np.where(np.isfinite(values), values, np.nanmean(values)).astype(np.float32)
    covariates = {
        name: np.nan_to_num(store.values("dongsi", name)).astype(np.float32)
        for name in store.info("dongsi").covariates[:2]
    }
    recorder = Recorder(time.monotonic)
    if engine_factory is None:
        from chronoserve.models.loader import ChronosLoader

        def engine_factory(observers: list[EngineObserver]) -> Engine:
            return Engine(
                "batched",
                policy_options={"max_batch": 64, "max_wait": 0.002, "max_resident": 8},
                loader=ChronosLoader(),
                workers=2,
                torch_threads=1,
                observers=observers,
            )

    plan = list(plan if plan is not None else phases(quick))
    rng = np.random.default_rng(0)
    async with engine_factory([recorder]) as engine:
        for phase in plan:  # loads are set-up, not measured: every model is loaded first
            for model in phase.models:
                await engine.warm(model)
        specs = {m: engine.spec(m) for phase in plan for m in phase.models}
        for phase in plan:
            recorder.phase = phase.name
            first = len(recorder.rows)
            started = time.monotonic()
            hogs: list[Any] = []
            print(f"{phase.name}: {phase.batches} batches of {', '.join(phase.models)} ...", file=sys.stderr)

            def done_count(first: int = first) -> int:
                return len(recorder.rows) - first

            async def stream(i: int, phase: Phase = phase, hogs: list[Any] = hogs) -> None:
                local = np.random.default_rng(rng.integers(2**32))
                while done_count() < phase.batches:
                    k = phase.streams[(done_count() // phase.switch) % len(phase.streams)]
                    if i >= k:  # this stream sits out while fewer streams run
                        await asyncio.sleep(0.01)
                        continue
                    model = str(local.choice(phase.models))
                    await engine.forecast_many(_requests(local, model, specs[model], values, covariates))
                    if phase.hog_after is not None and not hogs and done_count() >= phase.hog_after:
                        hogs.extend(hog() for _ in range(HOGS))
                        recorder.hog = True
                        print(
                            f"  {phase.name}: {HOGS} busy processes started after {done_count()} batches",
                            file=sys.stderr,
                        )

            tasks = [asyncio.create_task(stream(i)) for i in range(max(phase.streams))]
            try:
                await asyncio.gather(*tasks)
            finally:
                for process in hogs:
                    process.kill()
                    process.wait()
                hogs.clear()
                recorder.hog = False
            print(f"  {phase.name}: {done_count()} batches in {time.monotonic() - started:.0f} s", file=sys.stderr)
    write_rows(out / "batches.csv", recorder.rows)
    return recorder.rows


def write_rows(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)


# -- learners ------------------------------------------------------------------------------------


def features(row: dict[str, Any], colocation: str) -> BatchFeatures:
    """The batch's features as a learner sees them: ``colocation`` is ``static`` (none),
    ``expected`` (the load predicted at dispatch) or ``known`` (the load it really met)."""
    if colocation == "static":
        colocated = 0.0
    elif colocation == "expected":
        colocated = float(row["expected_colocated"])
    else:
        colocated = float(row["colocated"])
    return BatchFeatures(str(row["model"]), float(row["gflop"]), int(row["rows"]), colocated, int(row["steps"]))


def learned(row: dict[str, Any], colocation: str) -> BatchFeatures:
    """What a learner learns from: the load the batch met (none for the static ones)."""
    return features(row, "static" if colocation == "static" else "known")


class Learner:
    name = "learner"

    def train(self, rows: Sequence[dict[str, Any]]) -> None:
        for row in rows:
            self.learn(row)

    def predict(self, row: dict[str, Any]) -> float:
        raise NotImplementedError

    def learn(self, row: dict[str, Any]) -> None:
        pass


class RLS(Learner):
    """The engine's own cost model (recursive least squares, per model, a shared prior)."""

    def __init__(self, colocation: str, machine: bool = True) -> None:
        self.colocation = colocation
        self.name = f"online RLS, {colocation}"
        self.model = CostModel()
        if not machine:
            self.model.MACHINE_RATE = 0.0  # per-model estimators only

    def predict(self, row: dict[str, Any]) -> float:
        return self.model.predict_batch(features(row, self.colocation))

    def learn(self, row: dict[str, Any]) -> None:
        self.model.observe_batch(learned(row, self.colocation), float(row["seconds"]))


@dataclass
class _Linear:
    """Per model where seen, shared otherwise: the same structure as the cost model's."""

    shared: np.ndarray
    models: dict[str, np.ndarray] = field(default_factory=dict)

    def theta(self, model: str) -> np.ndarray:
        return self.models.get(model, self.shared)


def _least_squares(rows: Sequence[dict[str, Any]], colocation: str) -> _Linear:
    def fit(subset: Sequence[dict[str, Any]]) -> np.ndarray:
        x = np.array([learned(r, colocation).vector() for r in subset])
        y = np.array([float(r["seconds"]) for r in subset])
        return np.linalg.lstsq(x, y, rcond=None)[0]

    linear = _Linear(fit(rows))
    for model in sorted({str(r["model"]) for r in rows}):
        linear.models[model] = fit([r for r in rows if r["model"] == model])
    return linear


class Offline(Learner):
    """Least squares on the training set, then frozen (the paper's offline learner)."""

    def __init__(self, colocation: str) -> None:
        self.colocation = colocation
        self.name = f"offline least squares, {colocation}"
        self.linear = _Linear(np.zeros(CostModel.FEATURES))

    def train(self, rows: Sequence[dict[str, Any]]) -> None:
        self.linear = _least_squares(rows, self.colocation)

    def predict(self, row: dict[str, Any]) -> float:
        f = features(row, self.colocation)
        return max(0.0, float(self.linear.theta(f.model) @ f.vector()))


class SGD(Offline):
    """Starts from the offline fit, then a normalised-LMS step per batch (the paper's online SGD)."""

    def __init__(self, colocation: str, rate: float = 0.1) -> None:
        super().__init__(colocation)
        self.name = f"online SGD, {colocation}"
        self.rate = rate

    def learn(self, row: dict[str, Any]) -> None:
        f = learned(row, self.colocation)
        x = f.vector()
        for key in (f.model, None):
            theta = self.linear.shared if key is None else self.linear.models.setdefault(key, self.linear.shared.copy())
            error = float(row["seconds"]) - float(theta @ x)
            theta += self.rate * error * x / (1e-9 + float(x @ x))


LEARNERS: dict[str, Callable[[], Learner]] = {
    "offline, static": lambda: Offline("static"),
    "offline, co-located": lambda: Offline("expected"),
    "SGD, static": lambda: SGD("static"),
    "SGD, co-located": lambda: SGD("expected"),
    "RLS, static": lambda: RLS("static"),
    "RLS, co-located": lambda: RLS("expected"),
    "RLS, co-located (known)": lambda: RLS("known"),
    "RLS, no machine factor": lambda: RLS("expected", machine=False),
}


def prequential(learner: Learner, rows: Iterable[dict[str, Any]]) -> np.ndarray:
    """Predict each batch, then learn from it; returns the predictions."""
    out = []
    for row in rows:
        out.append(learner.predict(row))
        learner.learn(row)
    return np.array(out)


# -- evaluate ------------------------------------------------------------------------------------


def read_rows(path: Path) -> list[dict[str, Any]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def scores(predicted: np.ndarray, actual: np.ndarray) -> dict[str, float]:
    relative = np.abs(predicted - actual) / actual
    return {
        "batches": int(len(actual)),
        "mse_ms2": float(np.mean(((predicted - actual) * 1000.0) ** 2)),
        "median_rel": float(np.median(relative)),
        "p90_rel": float(np.percentile(relative, 90)),
        "within_20": float(np.mean(relative <= 0.2)),
    }


def evaluate(rows: Sequence[dict[str, Any]], learners: dict[str, Callable[[], Learner]] = LEARNERS) -> dict[str, Any]:
    """Train every learner on ``train``; score it on each test set from the trained state."""
    by_phase: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_phase.setdefault(str(row["phase"]), []).append(row)
    train = by_phase.get("train", [])
    if not train:
        raise ValueError("no 'train' batches to learn from")
    results: dict[str, Any] = {"tables": {}, "predictions": {}}
    for name, make in learners.items():
        for test in (*TEST_SETS, "drift"):
            batches = by_phase.get(test, [])
            if not batches:
                continue
            learner = make()
            learner.train(train)
            predicted = prequential(learner, batches)
            actual = np.array([float(r["seconds"]) for r in batches])
            results["tables"].setdefault(name, {})[test] = scores(predicted, actual)
            results["predictions"][(name, test)] = (predicted, actual)
    return results


def rolling_median(values: np.ndarray, window: int) -> np.ndarray:
    """The median of each value and the ``window - 1`` before it (fewer at the start)."""
    return np.array([float(np.median(values[max(0, i - window + 1) : i + 1])) for i in range(len(values))])


def recovery(predicted: np.ndarray, actual: np.ndarray, change: int, window: int = 10, hold: int = 20) -> int | None:
    """Batches after ``change`` until the error is back: the rolling median of the relative error
    (``window`` batches) within 5 points of its median over the 50 batches before the change, and
    staying there for ``hold`` batches. None if it never is."""
    relative = np.abs(predicted - actual) / actual
    before = float(np.median(relative[max(0, change - 50) : change])) if change > 0 else 0.0
    back = rolling_median(relative, window) <= before + 0.05
    for i in range(change, len(relative) - hold + 1):
        if back[i : i + hold].all():
            return i - change
    return None


def neighbour_slowdowns(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """How much slower a batch ran beside a neighbour than the same batch (model, work, rows,
    steps) alone, by its main neighbour's model; and how much identical batches spread, alone
    and beside one neighbour. Runs are rebuilt from each row's end (``time_s``) and ``seconds``;
    batches run while the busy processes of the drift phase ran are left out."""
    runs = [(float(r["time_s"]) - float(r["seconds"]), float(r["time_s"]), r) for r in rows if str(r["hog"]) != "1"]
    runs.sort(key=lambda run: run[0])

    def key(r: dict[str, Any]) -> tuple[Any, ...]:
        return (r["model"], r["gflop"], r["rows"], r["steps"])

    alone: dict[tuple[Any, ...], list[float]] = {}
    beside_one: dict[tuple[Any, ...], list[float]] = {}
    main: dict[int, str] = {}
    for i, (start, end, r) in enumerate(runs):
        overlaps = {}
        for other_start, other_end, other in runs:
            if other_start >= end:
                break
            if other is not r and other_end > start:
                overlaps[str(other["model"])] = (
                    overlaps.get(str(other["model"]), 0.0) + min(other_end, end) - max(other_start, start)
                )
        share = sum(overlaps.values()) / max(end - start, 1e-9)
        if share < 0.05:
            alone.setdefault(key(r), []).append(float(r["seconds"]))
        elif 0.9 <= share <= 1.1:
            beside_one.setdefault(key(r), []).append(float(r["seconds"]))
            main[i] = max(overlaps, key=lambda m: overlaps[m])
    base = {k: float(np.median(v)) for k, v in alone.items() if len(v) >= 2}
    slowdowns: dict[tuple[str, str], list[float]] = {}
    for i, (_, _, r) in enumerate(runs):
        if i in main and key(r) in base:
            slowdowns.setdefault((str(r["model"]), main[i]), []).append(float(r["seconds"]) / base[key(r)])

    def spread(groups: dict[tuple[Any, ...], list[float]]) -> float:
        deviations = [abs(x - np.median(v)) / np.median(v) for v in groups.values() if len(v) >= 3 for x in v]
        return float(np.percentile(deviations, 90)) if deviations else float("nan")

    return {
        "slowdown": {
            f"{a} beside {b}": (float(np.median(v)), len(v)) for (a, b), v in slowdowns.items() if len(v) >= 4
        },
        "spread_p90_alone": spread(alone),
        "spread_p90_beside_one": spread(beside_one),
    }


def format_tables(tables: dict[str, dict[str, dict[str, float]]]) -> str:
    lines = []
    for test in (*TEST_SETS, "drift"):
        present = [(n, t[test]) for n, t in tables.items() if test in t]
        if not present:
            continue
        lines.append(f"\n{test} ({present[0][1]['batches']} batches)")
        lines.append(f"  {'learner':<26} {'MSE ms^2':>10} {'median':>8} {'p90':>8} {'<=20%':>7}")
        for name, s in present:
            cells = f"{s['mse_ms2']:>10.1f} {s['median_rel']:>8.1%} {s['p90_rel']:>8.1%} {s['within_20']:>7.0%}"
            lines.append(f"  {name:<26} {cells}")
    return "\n".join(lines)


def plot(out: Path, rows: Sequence[dict[str, Any]], results: dict[str, Any]) -> list[Path]:
    from chronoserve._plotting import pyplot, save

    plt = pyplot()
    files = []
    shown = ("offline, co-located", "SGD, co-located", "RLS, static", "RLS, co-located")
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5), sharey=True)
    for ax, test in zip(axes, TEST_SETS, strict=True):
        for name in shown:
            if (name, test) not in results["predictions"]:
                continue
            p, a = results["predictions"][(name, test)]
            rel = np.sort(np.abs(p - a) / a)
            ax.plot(rel * 100, np.arange(1, len(rel) + 1) / len(rel), label=name)
        ax.axvline(20, color="0.6", ls=":", lw=1)
        ax.set_xlim(0, 100)
        ax.set_ylim(0, 1)
        ax.set_xlabel("|relative error| of the batch latency, %")
        ax.set_title({"loads": "1: changed loads", "unseen": "2: models not seen", "mix": "3: heterogeneous mix"}[test])
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("share of batches")
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle("Batch-latency prediction error, trained on 4 models, 2 workers (bench/costs.py)")
    files.append(save(fig, out / "prediction_error_cdf.png"))

    drift = [r for r in rows if r["phase"] == "drift"]
    change = next((i for i, r in enumerate(drift) if str(r["hog"]) == "1"), None)
    if drift and change is not None:
        fig, ax = plt.subplots(figsize=(11, 4.5))
        for name in ("offline, co-located", "SGD, co-located", "RLS, no machine factor", "RLS, co-located"):
            p, a = results["predictions"][(name, "drift")]
            rel = np.abs(p - a) / a * 100
            ax.plot(np.arange(len(rel)) - change, rolling_median(rel, 10), label=f"{name} (rolling median of 10)")
        ax.axvline(0, color="k", lw=1)
        ax.axvspan(0, 50, color="0.92", zorder=0, label="the first 50 batches after the change")
        ax.text(1, ax.get_ylim()[1] * 0.92, f" {HOGS} processes keep a core busy each from here", fontsize=8)
        ax.set_xlabel("batches since the load changed")
        ax.set_ylabel("|relative error|, %")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper right")
        ax.set_title("Recovery after the load changes (2 workers; random weights, timings only)")
        files.append(save(fig, out / "recovery.png"))

    if ("RLS, co-located", "mix") in results["predictions"]:
        p, a = results["predictions"][("RLS, co-located", "mix")]
        mix = [r for r in rows if r["phase"] == "mix"]
        models = sorted({str(r["model"]) for r in mix})
        fig, ax = plt.subplots(figsize=(7, 6.5))
        for i, model in enumerate(models):
            idx = [j for j, r in enumerate(mix) if r["model"] == model]
            seen = "" if model in SEEN else " (not seen in training)"
            ax.scatter(a[idx] * 1000, p[idx] * 1000, s=8, alpha=0.6, color=f"C{i}", label=model + seen)
        lo, hi = max(0.5, float(a.min()) * 1000 * 0.8), float(a.max()) * 1000 * 1.2
        ax.plot([lo, hi], [lo, hi], color="k", lw=1)
        ax.plot([lo, hi], [lo * 1.2, hi * 1.2], color="0.6", lw=1, ls=":")
        ax.plot([lo, hi], [lo * 0.8, hi * 0.8], color="0.6", lw=1, ls=":", label="±20 %")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("measured batch latency, ms")
        ax.set_ylabel("predicted at dispatch, ms")
        ax.set_title("Heterogeneous mix: online RLS, co-located", fontsize=10)
        ax.legend(fontsize=7, loc="upper left")
        ax.grid(alpha=0.3, which="both")
        files.append(save(fig, out / "predicted_vs_measured.png"))
    return files


def report(out: Path, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    results = evaluate(rows)
    drift = [r for r in rows if r["phase"] == "drift"]
    change = next((i for i, r in enumerate(drift) if str(r["hog"]) == "1"), None)
    recoveries = {}
    if change is not None:
        for name in LEARNERS:
            p, a = results["predictions"][(name, "drift")]
            recoveries[name] = recovery(p, a, change)
    neighbours = neighbour_slowdowns(rows)
    summary = {
        "tables": results["tables"],
        "neighbours": neighbours,
        "recovery_batches": recoveries,
        "drift_change_at": change,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "phases": {p: sum(1 for r in rows if r["phase"] == p) for p in ("train", *TEST_SETS, "drift")},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(format_tables(results["tables"]))
    print("\nslowdown beside one neighbour against the same batch alone (median, batches), by the neighbour's model:")
    for pair, (slowdown, n) in sorted(neighbours["slowdown"].items()):
        print(f"  {pair:<62} {slowdown:5.2f}x  ({n})")
    print(
        f"identical batches spread (p90 of |x - median| / median): {neighbours['spread_p90_alone']:.0%} alone, "
        f"{neighbours['spread_p90_beside_one']:.0%} beside one neighbour"
    )
    if recoveries:
        print("\nbatches until the error is back to its level before the load changed, and stays")
        print("(rolling median of 10 within 5 points of the median before, for 20 batches):")
        for name, n in recoveries.items():
            print(f"  {name:<26} {'never' if n is None else n}")
    files = plot(out, rows, results)
    print(f"\nwrote summary.json and {len(files)} PNGs to {out}")
    return summary


def hot_path(repeat: int = 20_000) -> dict[str, float]:
    """Microseconds per call of what the engine does per batch: predict at dispatch (features of
    32 queued requests and the prediction), learn when it ends, and the co-location update."""
    from chronoserve.costs import Colocation, CostView
    from chronoserve.testing import queued

    model = CostModel()
    colocation = Colocation()
    view = CostView(model, colocation, lambda: 0.5, lambda name: 8_652_672)
    requests = [queued("m", 0.0, gflop=0.5, rows=1) for _ in range(32)]
    features = view.features("m", requests)
    for _ in range(50):
        model.observe_batch(features, 0.05)
    timings = {}
    calls: dict[str, Callable[[], object]] = {
        "predict a batch of 32 (features + prediction)": lambda: view.batch_seconds("m", requests),
        "learn from a finished batch": lambda: model.observe_batch(features, 0.05),
        "co-location update when a batch ends": lambda: colocation.finished(1, 0.0, 0.05, 0.2, {2: (0.01, 0.3)}),
    }
    for name, call in calls.items():
        start = time.perf_counter()
        for _ in range(repeat):
            call()
        timings[name] = (time.perf_counter() - start) / repeat * 1e6
    return timings


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("step", nargs="?", default="all", choices=["all", "collect", "evaluate", "hot-path"])
    parser.add_argument("--out", default="results/costs", help="where batches.csv, summary.json and PNGs go")
    parser.add_argument("--quick", action="store_true", help="a quarter of the batches")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.step == "hot-path":
        for name, micros in hot_path().items():
            print(f"{name}: {micros:.1f} µs")
        return 0
    if args.step in ("all", "collect"):
        asyncio.run(collect(out, args.quick))
    if args.step in ("all", "evaluate"):
        path = out / "batches.csv"
        if not path.is_file():
            print(f"{path}: no batches; run `python bench/costs.py collect` first", file=sys.stderr)
            return 2
        report(out, read_rows(path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
