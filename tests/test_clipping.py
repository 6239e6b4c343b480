"""A lower bound on what a quantity can be: forecasts below it (quantiles and median) raised to it,
per request (``lower_bound``, ``nonnegative``) or per series (the embedded PM2.5: 0), and every
answer that had a bound says so and how many values it raised."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from test_frontends import BODY as FRONT_BODY
from test_frontends import pair
from test_server import client_for

from chronoserve import ForecastRequest
from chronoserve.errors import InvalidRequest
from chronoserve.request import clip_below
from chronoserve.testing import FakeLoader, fake_engine

# The fake model forecasts the last value plus (level - 0.5): ending at 0, q0.1 is -0.4 and q0.3 -0.2.
ENDS_AT_ZERO = [3.0, 1.0, 0.0]
LEVELS = [0.1, 0.3, 0.5, 0.9]


def test_clip_below_raises_what_is_below_and_counts_it() -> None:
    q = np.array([[-1.0, -0.5, 0.0, 2.0], [-3.0, 0.5, 1.0, 1.5]], dtype=np.float32)
    m = np.array([0.0, -0.1], dtype=np.float32)
    clipped_q, clipped_m, count = clip_below(q, m, 0.0)
    assert count == 4 and clipped_q.min() == 0.0 and clipped_m.tolist() == [0.0, 0.0]
    assert (np.diff(clipped_q, axis=1) >= 0).all()  # the quantiles stay in order
    assert clip_below(q, m, None) == (q, m, 0) and clip_below(q, m, -5.0)[2] == 0


async def test_the_engine_clips_each_request_to_its_own_bound_in_one_batch() -> None:
    async with fake_engine("batched", loader=FakeLoader.with_models("m"), policy_options={"max_wait": 0.05}) as engine:
        bounded, free, below = await engine.forecast_many(
            [
                ForecastRequest(model="m", target=ENDS_AT_ZERO, horizon=3, quantile_levels=LEVELS, lower_bound=0.0),
                ForecastRequest(model="m", target=ENDS_AT_ZERO, horizon=3, quantile_levels=LEVELS),
                ForecastRequest(model="m", target=ENDS_AT_ZERO, horizon=3, quantile_levels=LEVELS, lower_bound=-0.3),
            ]
        )
    assert bounded.batch_size == 3  # one batch: each answer clipped to its own request's bound
    assert bounded.clipped == 6 and bounded.quantiles.min() == 0.0 and bounded.lower_bound == 0.0
    assert free.clipped == 0 and free.lower_bound is None and free.quantiles.min() == pytest.approx(-0.4)
    assert below.clipped == 3 and below.quantiles.min() == pytest.approx(-0.3)
    assert bounded.to_dict()["clipped_values"] == 6 and "lower_bound" not in free.to_dict()


@pytest.mark.parametrize("bound", [float("nan"), float("inf"), "0", True, 1e16])
async def test_a_bound_that_is_not_a_finite_number_is_refused(bound: object) -> None:
    async with fake_engine("naive", loader=FakeLoader.with_models("m")) as engine:
        with pytest.raises(InvalidRequest) as refused:
            await engine.forecast(ForecastRequest(model="m", target=[1.0], horizon=1, lower_bound=bound))  # type: ignore[arg-type]
    assert refused.value.field == "lower_bound"


async def test_http_bounds_per_request_and_per_series() -> None:
    inline = {"target": ENDS_AT_ZERO, "horizon_hours": 2, "quantile_levels": LEVELS}
    async with client_for() as client:
        plain = (await client.post("/forecast", json=inline)).json()
        assert "lower_bound" not in plain and min(plain["quantiles"]["0.1"]) == pytest.approx(-0.4)
        nonneg = (await client.post("/forecast", json={**inline, "nonnegative": True})).json()
        assert nonneg["lower_bound"] == 0.0 and nonneg["clipped_values"] == 4
        assert nonneg["quantiles"]["0.1"] == [0.0, 0.0] and nonneg["quantiles"]["0.9"] == pytest.approx([0.4, 0.4])
        low = (await client.post("/forecast", json={**inline, "lower_bound": -0.3})).json()
        assert low["clipped_values"] == 2 and low["quantiles"]["0.1"] == pytest.approx([-0.3, -0.3])
        both = await client.post("/forecast", json={**inline, "nonnegative": True, "lower_bound": 0.0})
        assert both.status_code == 422 and both.json()["detail"][0]["loc"] == ["body", "nonnegative"]
        # the embedded PM2.5 series cannot go below 0: bounded unless the request says otherwise
        city = (await client.post("/forecast", json={"city": "dongsi", "horizon_hours": 2})).json()
        assert city["lower_bound"] == 0.0 and city["clipped_values"] >= 0
        unbounded = await client.post("/forecast", json={"city": "dongsi", "horizon_hours": 2, "nonnegative": False})
        assert "lower_bound" not in unbounded.json()
        series = (await client.get("/series")).json()["series"]
        assert {s["lower_bound"] for s in series} == {0.0}


async def test_the_bound_crosses_to_an_engine_process_and_back(tmp_path) -> None:
    async with pair(tmp_path) as (_, client, _runtime):
        body = {k: v for k, v in FRONT_BODY.items() if k != "city"}  # horizon 6
        r = await client.post(
            "/forecast", json={**body, "target": ENDS_AT_ZERO, "quantile_levels": LEVELS, "nonnegative": True}
        )
        assert r.status_code == 200, r.text
        assert r.json()["lower_bound"] == 0.0 and r.json()["clipped_values"] == 12  # q0.1 and q0.3, 6 steps


async def test_eval_clips_the_models_and_the_baselines_of_a_bounded_series() -> None:
    # A series falling to 0 and rising again: the naive baseline's bands from 0 reach below it.
    from chronoserve.data import SeriesStore
    from chronoserve.data._reader import parse_series
    from chronoserve.eval.cells import Cell
    from chronoserve.eval.grid import Config
    from chronoserve.eval.lanes import run_baseline, window_request
    from chronoserve.eval.rundir import SweepProgress
    from chronoserve.eval.windows import rolling_windows

    rows = "".join(f"2024-01-{1 + i // 24:02d} {i % 24:02d}:00,{abs(47 - i)}\n" for i in range(72))
    series = parse_series(("timestamp,pm25\n" + rows).encode(), "falling", "falling.csv", "test")
    bounded = dataclasses.replace(series, info=dataclasses.replace(series.info, lower_bound=0.0))
    store = SeriesStore([bounded])
    windows = list(rolling_windows(store.values("falling"), context=24, horizon=12, stride=24, series="falling"))
    cells = [Cell("falling", windows)]
    naive = Config("naive", "baseline", False, 24, 12)
    progress = SweepProgress(1, len(windows), enabled=False)
    unclipped = await run_baseline(naive, cells, progress)
    clipped = await run_baseline(naive, cells, progress, store)
    assert unclipped.rows != clipped.rows  # the bands below 0 were scored as they were, now at 0
    assert window_request(store, Config("m", "model", True, 24, 12), windows[0]).lower_bound == 0.0
