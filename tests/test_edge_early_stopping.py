"""MLPerf LoadGen's early-stopping estimate: worked examples and a line-by-line port of LoadGen.

The port below follows mlcommons/inference @b66003e1 ``loadgen/early_stopping.cc``
(``hypergeometric_2F1_A1``, ``beta_regularized``, ``odds``, ``find_min_passing``) and the
SingleStream loop of ``loadgen/results.cc`` (``PerformanceSummary::EarlyStopping``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from chronoserve.edge.early_stopping import (
    binomial_cdf,
    early_stopping_estimate,
    min_queries,
    overlatency_allowance,
)

# -- LoadGen, ported ------------------------------------------------------------------------------


def _lbeta(x: int, y: int) -> float:
    return math.lgamma(x) + math.lgamma(y) - math.lgamma(x + y)


def _hypergeometric_2f1_a1(b: int, c: int, x: float) -> float:
    tolerance = 1.0 / (1 << 33)
    term = result = 1.0
    i = 0
    while abs(term) > tolerance:
        term *= (b + i) * x / (c + i)
        result += term
        i += 1
    return result


def _beta_regularized(x: float, a: int, b: int) -> float:
    return (
        math.exp(a * math.log(x) + (b - 1) * math.log(1 - x) - _lbeta(a, b))
        / a
        * _hypergeometric_2f1_a1(1 - b, 1 + a, x / (x - 1))
    )


def _find_min_passing(t: int, p: float, d: float = 0.0, c: float = 0.99) -> int:
    """The smallest h with odds(h, t, p, d) < 1 - c (LoadGen's binary search; a wide fixed range)."""
    min_h, count = 1, 10**7
    while count > 0:
        step = count // 2
        h = min_h + step
        if _beta_regularized(p - d, h, 1 + t) < 1 - c:
            count = step
        else:
            min_h = h + 1
            count -= step + 1
    return min_h


def _loadgen_allowance(queries_issued: int, p: float) -> int:
    """``t`` as results.cc computes it for SingleStream (0: too few queries)."""
    h_min = _find_min_passing(1, p)
    if queries_issued < h_min + 1:
        return 0
    t = 1
    for i in range(2, queries_issued + 1):
        if queries_issued < _find_min_passing(i, p) + i:
            t = i - 1
            break
    return t


# -- tests ----------------------------------------------------------------------------------------


def test_minimum_query_counts_are_loadgens():
    # LoadGen's summary: a p90 estimate needs at least 64 queries, a p99 estimate 662.
    assert min_queries(0.9) == 64 == _find_min_passing(1, 0.9) + 1
    assert min_queries(0.99) == 662 == _find_min_passing(1, 0.99) + 1
    assert overlatency_allowance(63, 0.9) == 0 and overlatency_allowance(64, 0.9) == 1
    assert overlatency_allowance(661, 0.99) == 0 and overlatency_allowance(662, 0.99) == 1


@pytest.mark.parametrize("n", [*range(1, 260), 500, 1000, 1024, 2000, 4096])
def test_allowance_matches_the_ported_loadgen_search_for_p90(n):
    assert overlatency_allowance(n, 0.9) == _loadgen_allowance(n, 0.9)


@pytest.mark.parametrize("n", [661, 662, 700, 1000, 1500])
def test_allowance_matches_the_ported_loadgen_search_for_p99(n):
    assert overlatency_allowance(n, 0.99) == _loadgen_allowance(n, 0.99)


def test_worked_examples():
    latencies = [float(i) for i in range(1, 65)]  # 64 queries: 1 .. 64 ms, shuffled below
    rng = np.random.default_rng(0)
    shuffled = list(rng.permutation(latencies))
    at_64 = early_stopping_estimate(shuffled)
    assert (at_64.allowance, at_64.discarded, at_64.estimate) == (1, 0, 64.0)  # just enough: the maximum
    at_63 = early_stopping_estimate(shuffled[:63])
    assert at_63.estimate is None and at_63.min_queries == 64
    # 100 queries: t = 3, so the two slowest are dropped and the 3rd slowest (98) is the estimate.
    at_100 = early_stopping_estimate([float(i) for i in range(1, 101)])
    assert (at_100.allowance, at_100.discarded, at_100.estimate) == (3, 2, 98.0)
    # 1024 queries (the old SingleStream minimum): t = 80, the estimate is sorted[1024 - 80].
    at_1024 = early_stopping_estimate([float(i) for i in range(1024)])
    assert (at_1024.allowance, at_1024.estimate) == (80, 944.0)
    # The estimate is an upper bound above the plain p90 (sorted[921]) for these uniform latencies.
    assert at_1024.estimate > float(np.percentile(np.arange(1024.0), 90))


def test_binomial_cdf_agrees_with_the_direct_sum():
    n, q = 40, 0.1
    direct = np.cumsum([math.comb(n, k) * q**k * (1 - q) ** (n - k) for k in range(n + 1)])
    assert np.allclose(binomial_cdf(n, q), direct, rtol=1e-12, atol=1e-15)
    # Large n in log space does not overflow and stays monotone.
    big = binomial_cdf(200_000, 0.1)
    assert big[-1] == pytest.approx(1.0) and np.all(np.diff(big) >= 0)


def test_bad_arguments_name_the_parameter():
    with pytest.raises(ValueError, match="percentile"):
        min_queries(1.0)
    with pytest.raises(ValueError, match="confidence"):
        overlatency_allowance(10, 0.9, confidence=1.5)
