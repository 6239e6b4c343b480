"""chronoserve.eval.metrics: hand-computed values, NaN handling, the aggregate, and agreement
with the published implementations (fev 0.10.0 ``src/fev/metrics.py``; gluonts 0.17.0
``gluonts.ev`` ``MASE`` / ``MeanWeightedSumQuantileLoss``)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from chronoserve.eval import metrics as M

NAN = math.nan


# ---------------------------------------------------------------------------------------------
# Hand-computed values


def test_mae_rmse_skip_nan_targets():
    y = [1.0, NAN, 3.0, 5.0]
    yhat = [2.0, 100.0, 1.0, 5.0]  # the 100 sits on a NaN target: ignored
    assert M.mae(y, yhat) == pytest.approx((1 + 2 + 0) / 3)
    assert M.rmse(y, yhat) == pytest.approx(math.sqrt((1 + 4 + 0) / 3))


def test_all_nan_window_is_nan():
    y = [NAN, NAN, NAN]
    yhat = [1.0, 2.0, 3.0]
    assert math.isnan(M.mae(y, yhat))
    assert math.isnan(M.rmse(y, yhat))
    assert math.isnan(M.mase(y, yhat, [1.0, 2.0, 3.0, 4.0], season=1))
    assert math.isnan(M.wql(y, np.ones((3, 2)), [0.1, 0.9]))
    assert math.isnan(M.coverage(y, yhat, yhat))


def test_non_finite_forecast_at_observed_target_is_an_error():
    with pytest.raises(ValueError, match="yhat has NaN"):
        M.mae([1.0, 2.0], [1.0, NAN])
    with pytest.raises(ValueError, match="shape"):
        M.mae([1.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="infinite"):
        M.rmse([1.0, math.inf], [1.0, 2.0])
    assert M.mae([1.0, NAN], [1.0, NAN]) == 0.0  # NaN forecast on a NaN target is fine


def test_seasonal_scale_and_mase_by_hand():
    # season 2: pairs (x0,x2)=(1,3) (x1,x3)=(NaN,6) (x2,x4)=(3,7) (x3,x5)=(6,NaN) -> |2|, |4| observed
    context = [1.0, NAN, 3.0, 6.0, 7.0, NAN]
    assert M.seasonal_scale(context, season=2) == pytest.approx(3.0)
    y, yhat = [10.0, NAN, 4.0], [7.0, 0.0, 4.0]
    assert M.mase(y, yhat, context, season=2) == pytest.approx(((3 + 0) / 2) / 3.0)


def test_mase_undefined_scale_is_nan():
    y, yhat = [1.0, 2.0], [2.0, 2.0]
    assert math.isnan(M.mase(y, yhat, [5.0] * 30, season=24))  # zero scale (fev: inf -> dropped)
    assert math.isnan(M.mase(y, yhat, list(range(24)), season=24))  # history not longer than the season
    assert math.isnan(M.mase(y, yhat, [1.0, NAN] * 20, season=2))  # no observed pair
    with pytest.raises(ValueError, match="season"):
        M.seasonal_scale([1.0, 2.0], season=0)


def test_wql_by_hand():
    y = [10.0, NAN, 20.0]
    levels = [0.1, 0.5, 0.9]
    q = np.array([[8.0, 10.0, 12.0], [0.0, 0.0, 0.0], [18.0, 22.0, 25.0]])
    # level 0.1: y > q by 2 (x0.1) and 2 (x0.1) -> 2 * (0.2 + 0.2) = 0.8
    # level 0.5: 0 and y < q by 2 (x0.5) -> 2 * 1.0 = 2.0
    # level 0.9: y < q by 2 (x0.1) and 5 (x0.1) -> 2 * 0.7 = 1.4
    expected = np.mean([0.8 / 30, 2.0 / 30, 1.4 / 30])
    assert M.wql(y, q, levels) == pytest.approx(expected)
    assert M.wql(y, q[:, [1]], [0.5]) == pytest.approx(2 * (0 + 0.5 * 2) / 30)  # = MAE-based WAPE
    assert math.isnan(M.wql([0.0, 0.0], np.ones((2, 1)), [0.5]))  # zero weight


def test_wql_checks_shapes_and_levels():
    with pytest.raises(ValueError, match="levels"):
        M.wql([1.0, 2.0], np.ones((2, 2)), [0.5])
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        M.wql([1.0, 2.0], np.ones((2, 1)), [1.0])
    with pytest.raises(ValueError, match="shape"):
        M.wql([1.0, 2.0], np.ones((3, 1)), [0.5])


def test_coverage_by_hand():
    y = [1.0, 5.0, NAN, 10.0]
    lower = [0.0, 5.0, 0.0, 0.0]
    upper = [2.0, 6.0, 0.0, 9.0]
    assert M.coverage(y, lower, upper) == pytest.approx(2 / 3)  # bounds inclusive


def test_score_window():
    y = [10.0, NAN, 20.0]
    q = np.array([[8.0, 10.0, 12.0], [0.0, 0.0, 0.0], [18.0, 22.0, 25.0]])
    s = M.score_window(y, q[:, 1], q, [0.1, 0.5, 0.9], history=np.arange(30.0), season=24)
    assert s["mae"] == pytest.approx(1.0)
    assert s["mase"] == pytest.approx(1.0 / 24)
    assert s["coverage_80"] == pytest.approx(1.0)
    assert math.isnan(M.score_window(y, q[:, 1], q[:, 1:], [0.5, 0.9], np.arange(30.0))["coverage_80"])


# ---------------------------------------------------------------------------------------------
# Aggregates


def test_mean_over_windows_counts_nan():
    m = M.mean_over_windows([1.0, NAN, 3.0])
    assert (m.mean, m.windows, m.excluded) == (2.0, 2, 1)
    empty = M.mean_over_windows([NAN])
    assert math.isnan(empty.mean) and empty.excluded == 1
    with pytest.raises(ValueError, match="infinite"):
        M.mean_over_windows([math.inf])


def test_relative_to_pairs_windows():
    base = {"a": [2.0, 4.0, NAN], "b": [1.0, 1.0, 1.0]}
    model = {"a": [1.0, NAN, 5.0], "b": [0.5, 0.5, 2.0]}
    r = M.relative_to(base, model)
    assert r["a"] == pytest.approx(1.0 / 2.0)  # only window 0 is finite for both
    assert r["b"] == pytest.approx(1.0)
    assert M.relative_to({"z": [0.0]}, {"z": [1.0]}) == {"z": math.inf}
    assert math.isnan(M.relative_to({"z": [0.0]}, {"z": [0.0]})["z"])
    with pytest.raises(ValueError, match="series differ"):
        M.relative_to({"a": [1.0]}, {"b": [1.0]})
    with pytest.raises(ValueError, match="windows"):
        M.relative_to({"a": [1.0]}, {"a": [1.0, 2.0]})


def test_geometric_mean_relative():
    base = {"a": [1.0, 1.0], "b": [2.0, 2.0], "c": [NAN, NAN], "d": [1.0, 1.0]}
    model = {"a": [0.5, 0.5], "b": [4.0, 4.0], "c": [1.0, 1.0], "d": [1000.0, NAN]}
    r = M.geometric_mean_relative(base, model)
    # ratios a=0.5, b=2, d=1000 clipped to 100; c excluded
    assert r.value == pytest.approx((0.5 * 2.0 * 100.0) ** (1 / 3))
    assert r.skill == pytest.approx(1 - r.value)
    assert r.series == 3
    assert r.excluded_series == ("c",)
    assert r.clipped == ("d",)
    assert r.ratios["d"] == pytest.approx(1000.0)
    assert (r.windows, r.excluded_windows) == (5, 3)
    unclipped = M.geometric_mean_relative(base, model, clip=None)
    assert unclipped.value == pytest.approx((0.5 * 2.0 * 1000.0) ** (1 / 3))
    assert math.isnan(M.geometric_mean_relative({"c": [NAN]}, {"c": [1.0]}).value)


# ---------------------------------------------------------------------------------------------
# Agreement with fev 0.10.0 and gluonts 0.17.0 on fixed arrays.
#
# Neither installs in the project's environment without changing it (gluonts pins pandas<3;
# fev's datasets pins huggingface_hub<2), so EXPECTED below was computed with them once, in a
# separate environment, by _fev_scores() and _gluonts_scores() on these same arrays; the live
# test further down re-checks whenever fev or gluonts is importable.

LEVELS = [0.1, 0.25, 0.5, 0.75, 0.9]
CASES = [(60, 12, 7), (75, 24, 24), (40, 9, 1), (120, 48, 24)]  # history length, horizon, season


def _wave(n: int, a: int, b: int, m: int = 97) -> np.ndarray:
    """Deterministic values in [1, m] from integer arithmetic (the same with any numpy)."""
    return ((np.arange(n) * a + b) % m + 1).astype(np.float64)


def _case(k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    n_hist, h, season = CASES[k]
    hist = _wave(n_hist, 37 + k, 11 * k)
    hist[(np.arange(n_hist) * 5 + k) % 13 == 0] = NAN
    y = _wave(h, 29 + 2 * k, 7 + k)
    y[(np.arange(h) + k) % 5 == 2] = NAN
    median = _wave(h, 31 + 3 * k, 3 * k)
    spread = 1.0 + (np.arange(h) * 3 + k) % 11
    quantiles = median[:, None] + spread[:, None] * np.array([-1.3, -0.6, 0.0, 0.7, 1.2])[None, :]
    return hist, y, median, quantiles, season


# (mase, wql, mae, rmse) per case, from fev 0.10.0 (MASE, WQL, MAE, RMSE) and gluonts 0.17.0
# (MASE, MeanWeightedSumQuantileLoss), which agreed to 1e-14.
EXPECTED = [
    (0.16766467065868265, 0.1167584745762712, 7.0, 8.402380615040002),
    (0.7084861319146738, 0.6495389681668498, 33.578947368421055, 40.318469060325455),
    (0.436394114360216, 0.4069085173501577, 20.285714285714285, 29.193932833479533),
    (1.6981812561182954, 0.5962242199894235, 31.692307692307693, 39.29702800793478),
]


@pytest.mark.parametrize("k", range(len(CASES)))
def test_agrees_with_fev_and_gluonts_recorded(k: int):
    hist, y, median, quantiles, season = _case(k)
    mase, wql, mae, rmse = EXPECTED[k]
    assert M.mase(y, median, hist, season) == pytest.approx(mase, abs=1e-6)
    assert M.wql(y, quantiles, LEVELS) == pytest.approx(wql, abs=1e-6)
    assert M.mae(y, median) == pytest.approx(mae, abs=1e-6)
    assert M.rmse(y, median) == pytest.approx(rmse, abs=1e-6)


def _random_cases(n: int = 8) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]]:
    rng = np.random.default_rng(7)
    out = []
    for _ in range(n):
        n_hist, h = int(rng.integers(30, 200)), int(rng.integers(2, 40))
        hist = rng.gamma(2.0, 30.0, n_hist)
        hist[rng.random(n_hist) < 0.1] = NAN
        y = rng.gamma(2.0, 30.0, h)
        y[rng.random(h) < 0.15] = NAN
        y[0] = 50.0  # at least one observed target
        quantiles = np.sort(rng.gamma(2.0, 30.0, (h, len(LEVELS))), axis=1)
        out.append((hist, y, quantiles[:, 2], quantiles, int(rng.choice([1, 7, 24]))))
    return out


def _fev_scores(hist, y, median, quantiles, season):
    fm = pytest.importorskip("fev.metrics")
    kw = {
        "y_true": y[None, :, None],
        "y_pred": median[None, :, None],
        "y_past": hist[:, None],
        "y_past_lengths": np.array([hist.size]),
        "q_pred": quantiles[None, :, None, :],
        "seasonality": season,
        "quantile_levels": LEVELS,
    }
    return tuple(cls().compute(**kw) for cls in (fm.MASE, fm.WQL, fm.MAE, fm.RMSE))


def _gluonts_scores(hist, y, median, quantiles, season):
    pytest.importorskip("gluonts.ev")
    from gluonts.ev.metrics import MASE, MeanWeightedSumQuantileLoss
    from gluonts.ev.ts_stats import seasonal_error

    data = {
        "label": np.ma.masked_invalid(y[None]),
        "0.5": median[None],
        "seasonal_error": np.array([seasonal_error(np.ma.masked_invalid(hist), seasonality=season, time_axis=-1)]),
    }
    for j, q in enumerate(LEVELS):
        data[str(q)] = quantiles[None, :, j]
    mase = float(MASE()(axis=None).update(data).get())
    wql = float(MeanWeightedSumQuantileLoss(quantile_levels=LEVELS)(axis=None).update(data).get())
    return mase, wql


@pytest.mark.parametrize("ref", ["fev", "gluonts"])
def test_agrees_with_fev_and_gluonts_live(ref: str):
    cases = [_case(k) for k in range(len(CASES))] + _random_cases()
    for hist, y, median, quantiles, season in cases:
        ours = (
            M.mase(y, median, hist, season),
            M.wql(y, quantiles, LEVELS),
            M.mae(y, median),
            M.rmse(y, median),
        )
        if ref == "fev":
            theirs = _fev_scores(hist, y, median, quantiles, season)
        else:
            theirs = _gluonts_scores(hist, y, median, quantiles, season)
        np.testing.assert_allclose(ours[: len(theirs)], theirs, rtol=0, atol=1e-6)
