"""The run rules of edge-bench, after MLPerf's, and the statistics a verdict is built from.

Everything here is a pure function of recorded numbers (latencies, sampler rows), so each
rule is tested on hand-made readings. The rules (see ``docs/edge.md``):

- warm-up is excluded from every statistic;
- the measured part ends when both the minimum duration and the minimum query count are
  reached, or at the maximum duration; too few queries make the run INVALID;
- a p90 early-stopping estimate needs at least 64 queries (LoadGen), else INVALID;
- load on cores outside the pinned set, or load on the pinned cores that is not this
  process's, above :data:`CONTAMINATION_PERCENT` on average makes the run INVALID
  (contaminated);
- Raspberry Pi throttling bits 0-3 ever set, or bits 16-19 changing during the run, make it
  INVALID (throttled);
- a failed query, or threads found off the pinned cores, make it INVALID.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: Latency percentiles reported (LoadGen's set, without p97).
PERCENTILES: tuple[float, ...] = (50.0, 90.0, 95.0, 99.0, 99.9)
#: Default contamination threshold: mean busy percent of one core.
CONTAMINATION_PERCENT = 10.0
#: ``vcgencmd get_throttled``: bits 0-3 (under-voltage, frequency capped, throttled, soft
#: temperature limit) now, bits 16-19 the same "has occurred since boot".
THROTTLE_NOW_MASK = 0x0000F
THROTTLE_STICKY_MASK = 0xF0000
THROTTLE_BITS = {
    0: "under-voltage",
    1: "ARM frequency capped",
    2: "throttled",
    3: "soft temperature limit",
}

Sample = Mapping[str, Any]


@dataclass(frozen=True)
class RunRules:
    """When a run ends and what makes it valid."""

    duration_s: float = 60.0
    """Minimum measured duration (after warm-up)."""
    min_queries: int = 1024
    """Minimum measured queries (SingleStream) or series (Offline)."""
    warmup_s: float = 10.0
    max_duration_s: float | None = None
    """Stop here even if the minimums are not met (default: twice ``duration_s``)."""
    contamination_percent: float = CONTAMINATION_PERCENT

    def __post_init__(self) -> None:
        if not self.duration_s > 0:
            raise ValueError(f"duration must be positive, got {self.duration_s}")
        if self.min_queries < 1:
            raise ValueError(f"min_queries must be at least 1, got {self.min_queries}")
        if self.warmup_s < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup_s}")
        if self.max_duration_s is not None and self.max_duration_s < self.duration_s:
            raise ValueError(f"max_duration ({self.max_duration_s}) is shorter than duration ({self.duration_s})")
        if not self.contamination_percent > 0:
            raise ValueError(f"contamination threshold must be positive, got {self.contamination_percent}")

    @property
    def stop_after_s(self) -> float:
        return self.max_duration_s if self.max_duration_s is not None else 2.0 * self.duration_s

    def done(self, elapsed_s: float, queries: int) -> bool:
        """Whether the measured part is over: both minimums met, or the maximum duration hit."""
        return (elapsed_s >= self.duration_s and queries >= self.min_queries) or elapsed_s >= self.stop_after_s


# -- latency -------------------------------------------------------------------------------------


def percentile(ordered: Sequence[float], p: float) -> float:
    """LoadGen's percentile of sorted values: ``ordered[floor(n * p / 100)]`` (nearest rank, no interpolation)."""
    return float(ordered[min(len(ordered) - 1, int(len(ordered) * p / 100.0))])


def latency_stats(latencies: Sequence[float]) -> dict[str, Any]:
    """count, mean, min, the :data:`PERCENTILES`, max, and the early-stopping p90 (seconds)."""
    if not latencies:
        return {"count": 0, "mean": None, "min": None, **{f"p{p:g}": None for p in PERCENTILES}, "max": None}
    ordered = sorted(latencies)
    stats: dict[str, Any] = {"count": len(ordered), "mean": math.fsum(ordered) / len(ordered), "min": ordered[0]}
    for p in PERCENTILES:
        stats[f"p{p:g}"] = percentile(ordered, p)
    stats["max"] = ordered[-1]
    return stats


def early_stopping_p90(latencies: Sequence[float]) -> dict[str, Any]:
    """MLPerf's early-stopping p90 estimate (see :mod:`chronoserve.edge.early_stopping`)."""
    from .early_stopping import early_stopping_estimate  # numpy: not on the CLI's --help path

    return early_stopping_estimate(latencies, 0.9).to_dict()


# -- the sampler's rows --------------------------------------------------------------------------


def in_window(samples: Sequence[Sample], start: float, end: float) -> list[Sample]:
    """The samples that mostly cover ``[start, end]``: each sample measures the interval since
    the previous one, so it counts when that interval's midpoint lies in the window."""
    chosen: list[Sample] = []
    previous = None
    for sample in samples:
        t = float(sample["time_s"])
        middle = t if previous is None else (previous + t) / 2.0
        if start <= middle <= end:
            chosen.append(sample)
        previous = t
    return chosen


def _mean(values: Iterable[Any]) -> float | None:
    numbers = [float(v) for v in values if v is not None and v != ""]
    return math.fsum(numbers) / len(numbers) if numbers else None


def numbers(samples: Sequence[Sample], field: str) -> list[float]:
    return [float(s[field]) for s in samples if s.get(field) is not None and s.get(field) != ""]


def series_summary(samples: Sequence[Sample], field: str) -> dict[str, float] | None:
    """start, mean, min, max, end of one sampler field; None if it was never available."""
    values = numbers(samples, field)
    if not values:
        return None
    return {
        "start": values[0],
        "mean": math.fsum(values) / len(values),
        "min": min(values),
        "max": max(values),
        "end": values[-1],
    }


def contamination(
    samples: Sequence[Sample], pinned: Sequence[int], cores: int, threshold: float = CONTAMINATION_PERCENT
) -> dict[str, Any]:
    """Load that is not this benchmark's, from per-core and process CPU samples.

    - ``outside_mean_percent``: mean busy percent of each core outside ``pinned``: anything
      running there runs beside the benchmark and shares caches, memory bandwidth and heat;
    - ``foreign_on_pinned_percent``: the mean of (busy percent summed over the pinned cores
      minus this process's CPU percent), in percent of one core: other processes on *our*
      cores (the process's own sampler thread is the benchmark's and not counted);
    - ``contaminated``: either above ``threshold``. ``None`` when there are no per-core samples.
    """
    pinned_set = set(pinned)
    outside = [c for c in range(cores) if c not in pinned_set]
    per_core = {c: _mean(s.get(f"cpu{c}_percent") for s in samples) for c in range(cores)}
    foreign_values = []
    for s in samples:
        busy = [float(v) for c in pinned if (v := s.get(f"cpu{c}_percent")) is not None]
        own = s.get("proc_cpu_percent")
        if own is None or len(busy) != len(pinned):
            continue
        foreign_values.append(max(0.0, math.fsum(busy) - float(own)))
    foreign = math.fsum(foreign_values) / len(foreign_values) if foreign_values else None
    outside_means = {str(c): per_core[c] for c in outside}
    reasons: list[str] = []
    for c in outside:
        value = per_core[c]
        if value is not None and value > threshold:
            reasons.append(
                f"contaminated: core {c}, outside the pinned cores, was {value:.0f}% busy on average "
                f"(threshold {threshold:g}%)"
            )
    if foreign is not None and foreign > threshold:
        reasons.append(
            f"contaminated: other processes used {foreign:.0f}% of a core on the pinned cores on average "
            f"(threshold {threshold:g}%)"
        )
    measurable = bool(samples) and (foreign is not None or any(per_core[c] is not None for c in outside))
    return {
        "threshold_percent": threshold,
        "samples": len(samples),
        "per_core_mean_percent": {str(c): v for c, v in per_core.items()},
        "outside_mean_percent": outside_means,
        "foreign_on_pinned_percent": foreign,
        "contaminated": (bool(reasons) if measurable else None),
        "reasons": reasons,
    }


def throttling(samples: Sequence[Sample]) -> dict[str, Any] | None:
    """Throttling over the run from ``vcgencmd get_throttled`` readings; None where unavailable."""
    values = [int(float(v)) for v in numbers(samples, "throttled")]
    if not values:
        return None
    now_bits = 0
    for v in values:
        now_bits |= v & THROTTLE_NOW_MASK
    sticky_changed = (values[0] & THROTTLE_STICKY_MASK) != (values[-1] & THROTTLE_STICKY_MASK)
    reasons = []
    if now_bits:
        names = [name for bit, name in THROTTLE_BITS.items() if now_bits & (1 << bit)]
        reasons.append(f"throttled: get_throttled reported {', '.join(names)} during the run")
    if sticky_changed:
        reasons.append(
            f"throttled: the since-boot throttling bits changed during the run ({values[0]:#x} -> {values[-1]:#x})"
        )
    return {
        "start": values[0],
        "end": values[-1],
        "bits_seen": now_bits,
        "sticky_changed": sticky_changed,
        "reasons": reasons,
    }


# -- the verdict ---------------------------------------------------------------------------------


def verdict(
    rules: RunRules,
    *,
    measured_s: float,
    queries: int,
    failed: int,
    early_stopping: Mapping[str, Any] | None,
    contamination_info: Mapping[str, Any],
    throttling_info: Mapping[str, Any] | None,
    pinning_ok: bool,
) -> tuple[str, list[str]]:
    """``("VALID", [])`` or ``("INVALID", [reasons])``."""
    reasons: list[str] = []
    if queries < rules.min_queries:
        reasons.append(
            f"too few queries: {queries} measured, the minimum is {rules.min_queries} "
            f"(the run stopped at the maximum duration, {rules.stop_after_s:g} s)"
        )
    if measured_s < rules.duration_s:
        reasons.append(f"too short: {measured_s:.1f} s measured, the minimum is {rules.duration_s:g} s")
    if early_stopping is not None and early_stopping.get("estimate") is None:
        reasons.append(
            f"too few queries for the early-stopping p90 estimate: {early_stopping.get('queries')} "
            f"(it needs {early_stopping.get('min_queries')})"
        )
    if failed:
        reasons.append(f"{failed} queries failed")
    if not pinning_ok:
        reasons.append("pinning not applied: some threads of the benchmark may run outside the pinned cores")
    if contamination_info.get("contaminated") is None:
        reasons.append("no per-core CPU samples in the measured window: contamination cannot be ruled out")
    reasons += list(contamination_info.get("reasons", []))
    if throttling_info is not None:
        reasons += list(throttling_info.get("reasons", []))
    return ("INVALID" if reasons else "VALID"), reasons
