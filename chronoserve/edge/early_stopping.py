"""MLPerf LoadGen's early-stopping percentile estimate.

Source: mlcommons/inference @b66003e1, ``loadgen/early_stopping.cc``
(``MinPassingQueriesFinder``, ``find_min_passing``, ``odds``) and ``loadgen/results.cc``
(``PerformanceSummary::EarlyStopping``, the SingleStream and MultiStream cases), with
confidence 0.99 and tolerance 0 as LoadGen hard-codes them; ``inference_rules.adoc``,
appendix "Early Stopping".

The idea: a run of ``n`` queries is a sample of the system's latency distribution. Call a
query "over-latency" when it is slower than the true ``p``-th percentile; each query is one
with probability ``1 - p``. LoadGen finds ``t``, the largest number of over-latency queries
for which "at most ``t`` of ``n`` queries are over-latency" is still unlikely (probability
below ``1 - confidence``) under that model. With ``t`` as the allowance, the ``t``-th
slowest latency (drop the ``t - 1`` slowest, take the maximum of the rest) is an upper
bound of the ``p``-th percentile at that confidence. It needs at least ``h_min + 1`` queries
(``t = 1``): 64 for p90 and 662 for p99 at 99 % confidence.

LoadGen evaluates ``odds(h, t) = BetaRegularized[p - d, h, 1 + t]``, the probability of at
most ``t`` over-latency queries among ``h + t``, with a hypergeometric series, and searches
the smallest ``h`` with ``odds < 1 - c`` for ``t = 1, 2, ...`` until ``n < h + t``. Because
that probability falls as the number of queries grows, the same ``t`` is the largest one with
``P[Binomial(n, 1 - p + d) <= t] < 1 - c``; this module computes that binomial CDF directly
for every ``t`` at once (``tests/test_edge_early_stopping.py`` checks both give the same
``t``, including against a line-by-line port of LoadGen's search).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

CONFIDENCE = 0.99
TOLERANCE = 0.0


def binomial_cdf(n: int, q: float) -> np.ndarray:
    """``P[X <= t]`` for ``t = 0..n``, ``X ~ Binomial(n, q)``; computed in log space (no overflow)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not 0.0 < q < 1.0:
        raise ValueError(f"q must be in (0, 1), got {q}")
    k = np.arange(n + 1, dtype=np.float64)
    # log C(n, k) + k log q + (n - k) log(1 - q), with log C(n, k) from a running sum of log((n-j)/(j+1)).
    steps = np.log(n - k[:-1]) - np.log(k[:-1] + 1.0) if n else np.empty(0)
    log_terms = np.concatenate(([0.0], np.cumsum(steps))) + k * math.log(q) + (n - k) * math.log1p(-q)
    peak = float(log_terms.max())
    cdf = np.cumsum(np.exp(log_terms - peak)) * math.exp(peak)
    return np.minimum(cdf, 1.0)


def overlatency_allowance(
    n: int, percentile: float = 0.9, confidence: float = CONFIDENCE, tolerance: float = TOLERANCE
) -> int:
    """LoadGen's ``t`` for ``n`` queries: the latency reported is the ``t``-th slowest.

    0 means ``n`` is below :func:`min_queries` (no estimate is possible).
    """
    _check(percentile, confidence, tolerance)
    if n < 1:
        return 0
    q_over = 1.0 - (percentile - tolerance)
    cdf = binomial_cdf(n, q_over)
    # cdf is non-decreasing in t: count the t with P[X <= t] < 1 - c; the largest is that count - 1.
    below = int(np.count_nonzero(cdf < 1.0 - confidence))
    return max(0, below - 1)


def min_queries(percentile: float = 0.9, confidence: float = CONFIDENCE, tolerance: float = TOLERANCE) -> int:
    """The fewest queries with an early-stopping estimate: LoadGen's ``h_min + 1`` (t = 1).

    ``P[at most 1 of n over-latency] = q^n + n (1 - q) q^(n - 1)`` (``q = p - d``) must fall
    below ``1 - c``: 64 for p90 and 662 for p99 at c = 0.99.
    """
    _check(percentile, confidence, tolerance)
    q = percentile - tolerance
    n = 2
    while q**n + n * (1.0 - q) * q ** (n - 1) >= 1.0 - confidence:
        n += 1
    return n


@dataclass(frozen=True)
class EarlyStoppingEstimate:
    """The result of :func:`early_stopping_estimate`."""

    percentile: float
    queries: int
    min_queries: int
    allowance: int
    """``t``: the estimate is the ``t``-th slowest latency (0 when there are too few queries)."""
    estimate: float | None
    """The early-stopping latency estimate (None when ``queries < min_queries``)."""

    @property
    def discarded(self) -> int:
        """The slowest latencies dropped before taking the maximum (LoadGen's "would discard")."""
        return max(0, self.allowance - 1)

    def to_dict(self) -> dict[str, float | int | None]:
        return {
            "percentile": self.percentile,
            "queries": self.queries,
            "min_queries": self.min_queries,
            "discarded": self.discarded,
            "estimate": self.estimate,
        }


def early_stopping_estimate(
    latencies: Sequence[float],
    percentile: float = 0.9,
    confidence: float = CONFIDENCE,
    tolerance: float = TOLERANCE,
) -> EarlyStoppingEstimate:
    """MLPerf LoadGen's early-stopping estimate of the ``percentile`` latency of ``latencies``.

    ``sorted(latencies)[n - t]`` with ``t`` from :func:`overlatency_allowance`, as
    ``results.cc`` does (``(*sample_latencies)[queries_issued - t]``).
    """
    n = len(latencies)
    needed = min_queries(percentile, confidence, tolerance)
    t = overlatency_allowance(n, percentile, confidence, tolerance)
    estimate = float(sorted(latencies)[n - t]) if t >= 1 else None
    return EarlyStoppingEstimate(percentile, n, needed, t, estimate)


def _check(percentile: float, confidence: float, tolerance: float) -> None:
    if not 0.0 < percentile < 1.0:
        raise ValueError(f"percentile must be in (0, 1), got {percentile}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if not 0.0 <= tolerance < percentile:
        raise ValueError(f"tolerance must be in [0, percentile), got {tolerance}")
