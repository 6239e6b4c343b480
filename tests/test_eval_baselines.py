"""chronoserve.eval.baselines: the naive baselines exactly on hand arrays with NaN, their
agreement with statsforecast's Naive / SeasonalNaive, and statsforecast's AutoTheta on a short
synthetic seasonal series."""

from __future__ import annotations

import logging
import math
from statistics import NormalDist

import numpy as np
import pytest

from chronoserve.eval import BASELINES, auto_theta, fill_gaps, mae, naive, seasonal_naive

NAN = math.nan
LEVELS = [0.1, 0.5, 0.9]
Z = np.array([NormalDist().inv_cdf(q) for q in LEVELS])


def test_fill_gaps():
    np.testing.assert_array_equal(fill_gaps([NAN, NAN, 3.0, NAN, 5.0, NAN]), [3.0, 3.0, 3.0, 3.0, 5.0, 5.0])
    np.testing.assert_array_equal(fill_gaps([1.0, 2.0]), [1.0, 2.0])
    with pytest.raises(ValueError, match="no observed value"):
        fill_gaps([NAN, NAN])
    with pytest.raises(ValueError, match="infinite"):
        fill_gaps([1.0, math.inf])


def test_naive_by_hand():
    (f,) = naive([np.array([1.0, 3.0, NAN, 4.0], dtype=np.float32)], 3, LEVELS)
    # filled [1, 3, 3, 4]: point 4; 1-step differences 2, 0, 1 -> sigma = sqrt(5 / 3)
    sigma = math.sqrt(5 / 3)
    np.testing.assert_allclose(f.median, [4.0, 4.0, 4.0])
    expected = 4.0 + Z[None, :] * sigma * np.sqrt([1.0, 2.0, 3.0])[:, None]
    np.testing.assert_allclose(f.quantiles, expected, rtol=1e-6)
    assert f.quantiles.shape == (3, 3) and f.quantiles.dtype == np.float32
    # a context of one observed point: no spread
    (g,) = naive([[NAN, 7.0]], 2, LEVELS)
    np.testing.assert_array_equal(g.quantiles, np.full((2, 3), 7.0, dtype=np.float32))


def test_seasonal_naive_by_hand():
    (f,) = seasonal_naive([[1.0, 2.0, 3.0, 4.0, NAN, 6.0, 7.0]], 5, LEVELS, season=3)
    # filled [1, 2, 3, 4, 4, 6, 7]: the last season [4, 6, 7] repeated; seasonal differences
    # 4-1, 4-2, 6-3, 7-4 = 3, 2, 3, 3 -> sigma = sqrt(31 / 4); steps 4 and 5 are one season further
    point = np.array([4.0, 6.0, 7.0, 4.0, 6.0])
    sigma_h = math.sqrt(31 / 4) * np.sqrt([1.0, 1.0, 1.0, 2.0, 2.0])
    np.testing.assert_allclose(f.median, point)
    np.testing.assert_allclose(f.quantiles, point[:, None] + Z[None, :] * sigma_h[:, None], rtol=1e-6)
    # exactly one season of context: the point, no spread (statsforecast divides by n - season = 0)
    (g,) = seasonal_naive([[1.0, 2.0, 3.0]], 4, [0.25, 0.75], season=3)
    np.testing.assert_array_equal(g.quantiles, [[1, 1], [2, 2], [3, 3], [1, 1]])


def test_naive_baselines_refuse_bad_input():
    with pytest.raises(ValueError, match="context 1: a context has no observed value"):
        naive([[1.0], [NAN, NAN]], 3, LEVELS)
    with pytest.raises(ValueError, match="shorter than the season"):
        seasonal_naive([[1.0] * 23], 3, LEVELS)
    with pytest.raises(ValueError, match="levels"):
        naive([[1.0]], 3, [0.0, 0.5])
    with pytest.raises(ValueError, match="horizon"):
        naive([[1.0]], 0, LEVELS)


def test_batch_and_registry():
    contexts = [np.arange(48.0), np.arange(30.0)[::-1].copy()]
    out = seasonal_naive(contexts, 30, LEVELS)
    assert len(out) == 2
    np.testing.assert_array_equal(out[0].median[:24], np.arange(24.0, 48.0))
    assert set(BASELINES) == {"naive", "seasonal_naive", "auto_theta", "auto_arima"}
    for name in ("naive", "seasonal_naive"):
        (f,) = BASELINES[name]([np.arange(48.0)], 6, LEVELS)
        assert f.quantiles.shape == (6, 3)


def _seasonal_series(n: int, seed: int = 0) -> np.ndarray:
    t = np.arange(n)
    noise = np.random.default_rng(seed).normal(0.0, 2.0, n)
    return 80.0 + 30.0 * np.sin(2 * np.pi * t / 24) + 10.0 * np.cos(2 * np.pi * t / 12) + noise


def test_naive_baselines_agree_with_statsforecast():
    sf = pytest.importorskip("statsforecast.models")
    levels = [0.025, 0.1, 0.25, 0.5, 0.75, 0.9]
    for n in (30, 48, 169):
        y = _seasonal_series(n, seed=n)
        for ours, theirs in ((naive, sf.Naive()), (seasonal_naive, sf.SeasonalNaive(season_length=24))):
            (f,) = ours([y], 50, levels)
            res = theirs.forecast(y=y, h=50, level=[0, 50, 80, 95])
            keys = ["lo-95", "lo-80", "lo-50", "hi-0", "hi-50", "hi-80"]
            np.testing.assert_allclose(f.median, res["mean"], rtol=1e-6)
            np.testing.assert_allclose(f.quantiles, np.stack([res[k] for k in keys], axis=-1), rtol=1e-6)


def test_auto_theta_on_a_seasonal_series():
    pytest.importorskip("statsforecast")
    y = _seasonal_series(24 * 12)
    context, truth = y[:-24].copy(), y[-24:]
    context[[5, 6, 7, 100]] = NAN
    (f,) = auto_theta([context], 24, LEVELS)
    assert f.quantiles.shape == (24, 3) and f.median.shape == (24,)
    assert np.isfinite(f.quantiles).all()
    assert (np.diff(f.quantiles, axis=-1) >= 0).all()
    assert (f.quantiles[:, 1] - f.quantiles[:, 0] > 0).all()
    (n,) = naive([context], 24, LEVELS)
    assert mae(truth, f.median) < 0.5 * mae(truth, n.median)
    assert mae(truth, f.median) < 5.0  # the noise's sd is 2, the amplitude 30


def test_auto_theta_maps_intervals_to_quantiles():
    sf = pytest.importorskip("statsforecast.models")
    y = _seasonal_series(24 * 6)
    (f,) = auto_theta([y], 12, [0.1, 0.5, 0.75], max_context=100)
    res = sf.AutoTheta(season_length=24).forecast(y=y[-100:], h=12, level=[0, 50, 80])
    np.testing.assert_allclose(f.quantiles[:, 0], res["lo-80"], rtol=1e-6)
    np.testing.assert_allclose(f.quantiles[:, 1], res["hi-0"], rtol=1e-6)
    np.testing.assert_allclose(f.quantiles[:, 2], res["hi-50"], rtol=1e-6)
    np.testing.assert_allclose(f.median, res["mean"], rtol=1e-6)


def test_statsforecast_failure_falls_back_to_seasonal_naive(monkeypatch, caplog):
    sf = pytest.importorskip("statsforecast.models")

    def boom(self, **kwargs):
        raise RuntimeError("no fit")

    monkeypatch.setattr(sf.AutoTheta, "forecast", boom)
    y = _seasonal_series(72)
    with caplog.at_level(logging.WARNING, logger="chronoserve.eval.baselines"):
        (f,) = auto_theta([y], 6, LEVELS)
    (s,) = seasonal_naive([y], 6, LEVELS)
    np.testing.assert_array_equal(f.quantiles, s.quantiles)
    assert "AutoTheta failed (RuntimeError: no fit)" in caplog.text
