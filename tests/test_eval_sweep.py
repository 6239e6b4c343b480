"""chronoserve.eval.sweep: the grid, the aligned windows, skipped windows, resume, settings
checks, and the report's tables. Models are fake (chronoserve.testing) but run through the
real Engine, so these tests need no torch; the tiny real models run in test_eval_cli.py."""

from __future__ import annotations

import asyncio
import csv
import json
import math
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from chronoserve.data import SeriesStore
from chronoserve.eval.aggregate import relative_rows, summary_rows
from chronoserve.eval.grid import (
    COVARIATES,
    SettingsMismatch,
    SweepError,
    SweepSettings,
    check_settings,
    configurations,
    covariate_sets,
)
from chronoserve.eval.rundir import SweepProgress
from chronoserve.eval.sweep import run_sweep
from chronoserve.events import EngineObserver
from chronoserve.models.loader import ChronosLoader
from chronoserve.testing import FakeLoader, fake_spec

C2, BOLT = "fake-chronos-2", "fake-bolt"
SERIES = ("dongsi", "huairou")


class Counter(EngineObserver):
    """Counts the requests the engine accepted, per model."""

    def __init__(self) -> None:
        self.accepted: dict[str, int] = {}

    def request_accepted(self, model: str) -> None:
        self.accepted[model] = self.accepted.get(model, 0) + 1


def fake_loader() -> FakeLoader:
    return FakeLoader(
        specs={
            C2: fake_spec(C2, family="chronos-2", batch_patch=16, supports_covariates=True),
            BOLT: fake_spec(BOLT, family="chronos-bolt", supports_covariates=False, max_horizon=64),
        }
    )


def settings(**overrides: object) -> SweepSettings:
    base: dict[str, object] = {
        "models": (C2, BOLT),
        "series": SERIES,
        "baselines": ("naive", "seasonal_naive"),
        "context_days": (1, 2),
        "horizons": (4, 24),
        "stride": 24,
        "max_windows": 3,
        "start": "2016-07-01T00:00:00",
        "end": "2017-01-01T00:00:00",
    }
    base.update(overrides)
    return SweepSettings(**base)  # type: ignore[arg-type]


def run(s: SweepSettings, out: Path, counter: Counter | None = None, **kwargs: object):
    options = {"loader": kwargs.pop("loader", None) or fake_loader(), "workers": 1, "observers": [counter or Counter()]}
    kwargs.setdefault("progress", False)
    kwargs.setdefault("plots", False)
    return asyncio.run(run_sweep(s, out, engine_options=options, **kwargs))  # type: ignore[arg-type]


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


# ---------------------------------------------------------------------------------------------
# The grid


def test_covariate_sets():
    assert covariate_sets("none") == [()]
    assert covariate_sets("all") == [(), COVARIATES]
    combos = covariate_sets("combos")
    assert len(combos) == 8 and len(set(combos)) == 8
    assert combos[0] == () and combos[-1] == COVARIATES
    assert {len(c) for c in combos} == {0, 1, 2, 3}


def test_combos_give_eight_configurations_for_chronos_2_and_one_for_bolt():
    loader = ChronosLoader()  # resolving reads the catalog only: no torch, no weights
    specs = {m: loader.resolve(m) for m in ("random/tiny-chronos-2", "random/tiny-chronos-bolt")}
    s = settings(models=tuple(specs), covariates="combos", known_future=True)
    grid = configurations(s, specs)
    per_cell = len(s.context_days) * len(s.horizons)
    c2 = [c for c in grid if c.model == "random/tiny-chronos-2"]
    bolt = [c for c in grid if c.model == "random/tiny-chronos-bolt"]
    assert len(c2) == 8 * per_cell and len(bolt) == per_cell
    assert {c.covariates for c in c2} == set(covariate_sets("combos"))
    assert all(c.covariates == () and not c.known_future for c in bolt)
    # known-future is recorded on every configuration that has covariates, and only there
    assert all(c.known_future == bool(c.covariates) for c in c2)
    assert {c.covariate_use for c in c2} == {"none", "known-future"}
    assert all(c.random_weights for c in c2 + bolt)
    assert [c.model for c in grid if c.kind == "baseline"] == ["naive"] * per_cell + ["seasonal_naive"] * per_cell
    assert len({c.key for c in grid}) == len(grid)
    # --covariate-models restricts the covariate sets to the models named
    only = configurations(settings(models=tuple(specs), covariates="combos", covariate_models=()), specs)
    assert len([c for c in only if c.model == "random/tiny-chronos-2"]) == per_cell


@pytest.mark.parametrize(
    ("overrides", "option"),
    [
        ({"baselines": ("naive",)}, "--baselines"),
        ({"baselines": ("naive", "seasonal_naive", "prophet")}, "--baselines"),
        ({"context_days": ()}, "--context-days"),
        ({"context_days": (2, 2)}, "--context-days"),
        ({"horizons": (0, 4)}, "--horizons"),
        ({"stride": 0}, "--stride"),
        ({"max_windows": 0}, "--max-windows"),
        ({"covariates": "some"}, "--covariates"),
        ({"known_future": True}, "--known-future"),
        ({"covariate_models": ("other",), "covariates": "all"}, "--covariate-models"),
        ({"models": (C2, C2)}, "--models"),
        ({"series": ()}, "--series"),
    ],
)
def test_bad_settings_name_the_flag(overrides, option):
    with pytest.raises(SweepError) as info:
        settings(**overrides)
    assert info.value.option == option
    assert str(info.value).startswith(option + ": ")


def test_check_settings_against_models_and_data():
    store = SeriesStore.embedded()
    specs = dict(fake_loader().specs)
    check_settings(settings(), store, specs)  # fine
    with pytest.raises(SweepError, match=r"--horizons: \[96\] exceed what fake-bolt produces in one pass \(64"):
        check_settings(settings(horizons=(24, 96)), store, specs)
    short = {C2: fake_spec(C2, context_length=100)}
    with pytest.raises(SweepError, match="--context-days: 14 days .* exceed the context of fake-chronos-2"):
        check_settings(settings(models=(C2,), context_days=(2, 14)), store, short)
    with pytest.raises(SweepError, match="--start/--end: the span of 'dongsi' has 48 hours"):
        check_settings(settings(start="2016-08-01T00:00", end="2016-08-03T00:00"), store, specs)
    with pytest.raises(SweepError, match="--start: .*before the first hour"):
        check_settings(settings(start="2016-06-01T00:00"), store, specs)


def test_covariates_need_the_columns(tmp_path: Path):
    lines = ["timestamp,temperature,pm25"] + [
        f"{datetime(2016, 7, 1) + timedelta(hours=i)},20,{10 + i % 24}" for i in range(24 * 10)
    ]
    (tmp_path / "site.csv").write_text("\n".join(lines) + "\n")
    store = SeriesStore.from_dir(tmp_path)
    s = settings(series=("site",), start=None, end=None, covariates="all")
    with pytest.raises(SweepError, match=r"--covariates: series 'site' has no column\(s\) \['relative_humidity'"):
        check_settings(s, store, dict(fake_loader().specs))


# ---------------------------------------------------------------------------------------------
# Running


def test_sweep_scores_every_configuration_on_the_same_hours(tmp_path: Path):
    counter = Counter()
    s = settings(covariates="all")
    result = run(s, tmp_path, counter)
    grid = result.configs
    assert len(grid) == 2 * 2 * 2 + 2 * 2 + 2 * 2 * 2  # C2 with none/all, Bolt, two baselines
    rows = read_csv(tmp_path / "windows.csv")
    assert len(rows) == len(grid) * len(SERIES) * 3  # no gap in these windows
    # every configuration forecasts from the same hours, whatever its context and horizon
    starts: dict[tuple[str, str, str, str, str], set[str]] = {}
    for row in rows:
        key = (row["model"], row["covariates"], row["context_hours"], row["horizon_hours"], row["series"])
        starts.setdefault(key, set()).add(row["forecast_start"])
    per_series = {sid: {frozenset(v) for k, v in starts.items() if k[4] == sid} for sid in SERIES}
    assert all(len(sets) == 1 for sets in per_series.values())
    first = min(next(iter(per_series["dongsi"])))
    assert first == "2016-07-03T00:00:00"  # the span's start plus the longest context (2 days)
    last = max(next(iter(per_series["dongsi"])))
    assert datetime.fromisoformat(last) + timedelta(hours=24) <= datetime(2017, 1, 1)
    # each model request went through the engine, once per window
    assert counter.accepted == {C2: 2 * 2 * 2 * 6, BOLT: 2 * 2 * 6}
    assert {r["covariate_use"] for r in rows if r["model"] == C2} == {"none", "past-only"}
    # the fake model forecasts the last value: its scores equal naive's on the same windows
    fake = {
        (r["series"], r["window"], r["context_hours"], r["horizon_hours"]): r["rmse"]
        for r in rows
        if r["model"] == BOLT
    }
    naive = {
        (r["series"], r["window"], r["context_hours"], r["horizon_hours"]): r["rmse"]
        for r in rows
        if r["model"] == "naive"
    }
    assert fake.keys() == naive.keys()
    assert all(math.isclose(float(fake[k]), float(naive[k]), rel_tol=1e-5) for k in fake)
    # relative scores: the anchor is 1, and the table has a per-configuration and an overall row
    rel = read_csv(tmp_path / "relative.csv")
    anchor = [r for r in rel if r["model"] == "seasonal_naive"]
    assert anchor and all(float(r["relative_mase"]) == 1.0 for r in anchor)
    assert {r["context_days"] for r in rel} == {"1", "2", "all"}
    md = (tmp_path / "summary.md").read_text()
    assert "[random weights]" in md and "past-only" in md
    assert "## Best context for a 24 h horizon" in md and "## Best horizon for a 2-day context" in md


def test_windows_without_target_are_skipped_and_counted(tmp_path: Path):
    data = tmp_path / "data"
    data.mkdir()
    t0 = datetime(2016, 7, 1)
    pm = [float(20 + (i % 24)) for i in range(24 * 20)]
    for i in range(24 * 6, 24 * 6 + 24):  # day 7: no reading at all
        pm[i] = math.nan
    pm[24 * 10 + 3] = math.nan  # one missing hour inside a later window
    lines = ["timestamp,pm25"] + [f"{t0 + timedelta(hours=i)},{'' if math.isnan(v) else v}" for i, v in enumerate(pm)]
    (data / "site.csv").write_text("\n".join(lines) + "\n")
    store = SeriesStore.from_dir(data)
    s = settings(
        models=(BOLT,),
        series=("site",),
        data=str(data),
        context_days=(2,),
        horizons=(24,),
        max_windows=None,
        start=None,
        end=None,
    )
    result = run(s, tmp_path / "out", store=store)
    summary = read_csv(tmp_path / "out" / "summary.csv")
    bolt = next(r for r in summary if r["model"] == BOLT)
    # starts at days 2..19: 18 windows; day 6's horizon is all NaN; days 7 and 8 have a context
    # that reaches into the gap but still has observed hours: they are forecast
    assert (bolt["windows"], bolt["scored"], bolt["skipped_target_nan"], bolt["skipped_context_nan"]) == (
        "18",
        "17",
        "1",
        "0",
    )
    rows = result.results[0].rows
    day10 = next(r for r in rows if r["forecast_start"] == "2016-07-11T00:00:00")
    assert day10["target_observed"] == 23  # the missing hour is skipped by the metrics
    assert "skipped: 3 with no observed target" in (tmp_path / "out" / "summary.md").read_text()  # 3 configurations


def test_resume_skips_finished_configurations(tmp_path: Path):
    s = settings()
    first = Counter()
    result = run(s, tmp_path, first)
    assert result.resumed == 0
    windows_before = (tmp_path / "windows.csv").read_text()
    # nothing to do the second time: no request reaches the engine
    second = Counter()
    again = run(s, tmp_path, second)
    assert again.resumed == len(result.configs) and second.accepted == {}
    assert (tmp_path / "windows.csv").read_text() == windows_before
    # one configuration lost: only its windows are forecast again
    victim = next(c for c in result.configs if c.model == C2 and c.horizon == 24)
    (tmp_path / "configs" / f"{victim.key}.json").unlink()
    third = Counter()
    stream = _Stream()
    resumed = run(s, tmp_path, third, progress=SweepProgress(len(result.configs), 1, stream=stream))
    assert resumed.resumed == len(result.configs) - 1
    assert third.accepted == {C2: len(SERIES) * 3}
    assert f"resuming: {len(result.configs) - 1} of {len(result.configs)} configurations already done" in stream.text
    assert (tmp_path / "windows.csv").read_text() == windows_before


class _Stream:
    def __init__(self) -> None:
        self.text = ""

    def write(self, s: str) -> int:
        self.text += s
        return len(s)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def test_interrupted_sweep_keeps_finished_configurations(tmp_path: Path):
    s = settings()
    total = len(configurations(s, dict(fake_loader().specs)))

    class StopAfter(SweepProgress):
        def __init__(self) -> None:
            super().__init__(total, 1, enabled=False)
            self.task: asyncio.Task[object] | None = None
            self.done: list[str] = []

        def config_done(self, config, scored, seconds):  # type: ignore[no-untyped-def]
            super().config_done(config, scored, seconds)
            self.done.append(config.key)
            if len(self.done) == 3 and self.task is not None:
                self.task.cancel()  # what Ctrl-C does to asyncio.run's main task

    stop = StopAfter()

    async def main() -> None:
        options = {"loader": fake_loader(), "workers": 1}
        task = asyncio.ensure_future(run_sweep(s, tmp_path, engine_options=options, progress=stop, plots=False))
        stop.task = task
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    saved = sorted(p.stem for p in (tmp_path / "configs").iterdir())
    assert 3 <= len(saved) < total
    assert set(stop.done) == set(saved)  # every announced configuration is on disk, complete
    assert not list(tmp_path.glob("configs/.*")), "no temporary file left behind"
    for p in (tmp_path / "configs").iterdir():
        json.loads(p.read_text())
    counter = Counter()
    result = run(s, tmp_path, counter)
    assert result.resumed == len(saved)
    assert len(result.results) == total


def test_other_settings_refuse_unless_overwrite(tmp_path: Path):
    run(settings(), tmp_path)
    with pytest.raises(SettingsMismatch, match="max_windows 3 there, 2 now") as info:
        run(settings(max_windows=2), tmp_path)
    assert info.value.option == "--out"
    assert "--overwrite" in str(info.value)
    result = run(settings(max_windows=2), tmp_path, overwrite=True)
    assert result.resumed == 0
    assert len(list((tmp_path / "configs").iterdir())) == len(result.configs)
    assert json.loads((tmp_path / "settings.json").read_text())["max_windows"] == 2


def test_report_tables_from_results(tmp_path: Path):
    result = run(settings(models=(BOLT,)), tmp_path)
    summary = summary_rows(result.results)
    assert len(summary) == len(result.configs) * len(SERIES)
    rel = relative_rows(result.results)
    overall = {r["model"]: r for r in rel if r["context_days"] == "all"}
    assert set(overall) == {BOLT, "naive", "seasonal_naive"}
    assert overall["seasonal_naive"]["relative_mase"] == 1.0
    assert overall[BOLT]["tasks"] == len(SERIES) * 2 * 2  # every (series, context, horizon)
    # the fake model is naive: the same relative score
    assert overall[BOLT]["relative_mase"] == pytest.approx(overall["naive"]["relative_mase"], rel=1e-5)
    # naive's point forecast ignores the context: no context is "best", the table says so
    md = (tmp_path / "summary.md").read_text()
    best = md.split("## Best context for a 24 h horizon")[1].split("##")[0]
    dongsi = next(line for line in best.splitlines() if line.startswith("| dongsi |"))
    assert dongsi.count("any (") == 3  # the fake model (a naive forecast), naive, seasonal naive
