"""``chronoserve models train`` and the shipped ``chronos-2-pm25`` checkpoint.

The training tests run on a small synthetic data set written per test (two sites, hourly, with
values that encode the hour and a sentinel in the evaluation span), so they need neither the
shared data nor much time: the model is a tiny Chronos-2 trained for a few steps.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from chronoserve.cli import main
from chronoserve.models import CATALOG, ChronosLoader
from chronoserve.models.catalog import PM25_MODEL
from chronoserve.models.train import (
    COVARIATES,
    EVAL_START,
    TRAIN_END,
    TRAINING_FILE,
    TrainingError,
    TrainSettings,
    check_span,
    load_sites,
    read_training_record,
    settings_from_record,
    sha256_file,
    train,
    training_inputs,
)

HOUR = timedelta(hours=1)
FULL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "pm25-full"
SHIPPED = CATALOG[PM25_MODEL].shipped_dir()
#: Every value at or after EVAL_START in the synthetic data: nothing this large may reach fit.
SENTINEL = 1.0e6
#: The synthetic span: five weeks before the evaluation span and ten days into it.
SYN_START = datetime(2016, 5, 25)
SYN_END = datetime(2016, 7, 10, 23)


def write_synthetic(root: Path, sites: tuple[str, ...] = ("alpha", "beta")) -> Path:
    """Hourly CSVs with the real layout: pm25 = hours since SYN_START (a daily wave in the
    covariates), a few gaps, and SENTINEL in every column from EVAL_START on."""
    root.mkdir(parents=True, exist_ok=True)
    hours = int((SYN_END - SYN_START) / HOUR) + 1
    for k, site in enumerate(sites):
        lines = ["timestamp,relative_humidity,temperature,wind_speed,pm25"]
        for h in range(hours):
            ts = SYN_START + h * HOUR
            if ts >= EVAL_START:
                cells = [SENTINEL] * 4
                lines.append(f"{ts:%Y-%m-%d %H:%M:%S}," + ",".join(f"{c:g}" for c in cells))
                continue
            wave = math.sin(2 * math.pi * (h % 24) / 24)
            pm25 = "" if h % 97 == 5 else f"{h + 10 * k:g}"  # a gap now and then
            lines.append(f"{ts:%Y-%m-%d %H:%M:%S},{50 + 20 * wave:.2f},{20 + 5 * wave:.2f},{2 + wave:.2f},{pm25}")
        (root / f"{site}.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def tiny_settings(data: Path, **changes: Any) -> TrainSettings:
    base = TrainSettings(
        data=str(data),
        start=SYN_START,
        steps=3,
        batch_size=8,
        context_length=64,
        horizon=16,
        d_model=8,
        d_ff=8,
        d_kv=4,
        num_layers=1,
        num_heads=2,
        torch_threads=1,
    )
    return TrainSettings(**{**base.__dict__, **changes})


class FitCalled(Exception):
    """Raised by :func:`capture_fit` once it has seen what ``fit`` receives."""


def capture_fit(seen: dict[str, Any]):
    def fit(inputs: list[dict[str, Any]], **kwargs: Any) -> Any:
        seen["inputs"] = inputs
        seen["kwargs"] = kwargs
        raise FitCalled

    return fit


# -- the training span --------------------------------------------------------------------------


def test_the_training_span_ends_the_hour_before_the_evaluation_span() -> None:
    assert datetime(2016, 7, 1, 0) == EVAL_START
    assert datetime(2016, 6, 30, 23) == TRAIN_END
    check_span(datetime(2013, 3, 1), TRAIN_END)  # the default span is accepted
    for end in (EVAL_START, datetime(2016, 12, 31, 23)):
        with pytest.raises(TrainingError, match="evaluation span") as info:
            check_span(datetime(2013, 3, 1), end)
        assert info.value.field == "end"
    with pytest.raises(TrainingError) as info:
        check_span(datetime(2016, 6, 1), datetime(2016, 5, 1))
    assert info.value.field == "end"
    with pytest.raises(TrainingError) as info:
        check_span(datetime(2012, 1, 1), TRAIN_END)
    assert info.value.field == "start"


def test_load_sites_stops_before_the_evaluation_span(tmp_path: Path) -> None:
    data = write_synthetic(tmp_path / "data")
    sites = load_sites(data, SYN_START, TRAIN_END)
    assert [s.name for s in sites] == ["alpha", "beta"]
    for site in sites:
        assert site.start == SYN_START and site.end == TRAIN_END
        assert site.values.shape == (1 + len(COVARIATES), int((TRAIN_END - SYN_START) / HOUR) + 1)
        assert np.nanmax(site.values) < SENTINEL
    with pytest.raises(TrainingError) as info:
        load_sites(data, SYN_START, EVAL_START)
    assert info.value.field == "end"


@pytest.mark.torch
def test_no_hour_of_the_evaluation_span_reaches_fit(tmp_path: Path) -> None:
    data = write_synthetic(tmp_path / "data")
    seen: dict[str, Any] = {}
    with pytest.raises(FitCalled):
        train(tiny_settings(data), tmp_path / "out", fit=capture_fit(seen))
    inputs = seen["inputs"]
    last_hour = int((TRAIN_END - SYN_START) / HOUR)
    for item in inputs:  # whole series and short pieces alike
        assert np.nanmax(item["context"].numpy()) < SENTINEL
    # Two sites, each without, with past-only and with known-future covariates; the whole series end
    # exactly at 2016-06-30 23:00 (pm25 = hours since SYN_START, + 10 for beta).
    whole = inputs[:6]
    assert all(item["context"].shape[1] == last_hour + 1 for item in whole)
    assert {float(item["context"][0, -1]) for item in whole} == {last_hour, last_hour + 10}
    assert sorted({(i["n_covariates"], i["n_future_covariates"]) for i in whole}) == [(0, 0), (3, 0), (3, 3)]
    pieces = [item for item in inputs if item["context"].shape[1] <= 64 + 16]
    assert pieces and len(pieces) + sum(item["context"].shape[1] == last_hour + 1 for item in inputs) == len(inputs)
    assert float(max(np.nanmax(p["context"][0].numpy()) for p in pieces)) <= last_hour + 10
    assert seen["kwargs"]["prediction_length"] == 16 and seen["kwargs"]["context_length"] == 64
    assert not (tmp_path / "out").exists()


@pytest.mark.torch
def test_validation_holds_out_the_end_of_the_span(tmp_path: Path) -> None:
    data = write_synthetic(tmp_path / "data")
    seen: dict[str, Any] = {}
    settings = tiny_settings(data, validation=True, validation_start=datetime(2016, 6, 20))
    with pytest.raises(FitCalled):
        train(settings, tmp_path / "out", fit=capture_fit(seen))
    held_out_from = int((datetime(2016, 6, 20) - SYN_START) / HOUR)
    assert all(item["context"].shape[1] == held_out_from for item in seen["inputs"][:6])
    for item in seen["inputs"]:  # training stops the hour before the held-out slice
        assert item["context"].shape[1] <= held_out_from
        assert float(np.nanmax(item["context"][0].numpy())) < held_out_from + 10
    windows = seen["kwargs"]["validation_inputs"]
    assert windows and all(w["context"].shape[1] == 64 + 16 for w in windows)
    assert max(float(np.nanmax(w["context"][0].numpy())) for w in windows) < SENTINEL


def test_short_pieces_cover_each_series_once_and_make_about_the_asked_share() -> None:
    from chronoserve.models.train import SiteData

    values = np.arange(4 * 5000, dtype=np.float32).reshape(4, 5000)
    sites = [SiteData("a", SYN_START, values), SiteData("b", SYN_START, values + 1e4)]
    inputs = training_inputs(sites, ("none", "past"), short_fraction=0.5, min_length=72, max_length=560, seed=3)
    whole = [i for i in inputs if i["context"].shape[1] == 5000]
    pieces = [i for i in inputs if i["context"].shape[1] < 5000]
    assert 0.4 < len(pieces) / len(inputs) < 0.6
    assert all(72 <= p["context"].shape[1] <= 560 for p in pieces)
    # Site a's past-variant pieces are consecutive, non-overlapping cuts of its series.
    a_past = [p["context"].numpy() for p in pieces if p["n_covariates"] == 3 and p["context"][0, 0] < 1e4]
    joined = np.concatenate(a_past, axis=1)
    assert np.array_equal(joined, values[:, : joined.shape[1]]) and joined.shape[1] > 5000 - 560
    assert whole[0]["context"] is whole[4]["context"]  # repeats share tensors, no copies
    again = training_inputs(sites, ("none", "past"), short_fraction=0.5, min_length=72, max_length=560, seed=3)
    assert [i["context"].shape for i in again] == [i["context"].shape for i in inputs]
    assert len(training_inputs(sites, ("none",), short_fraction=0.0)) == 2


def test_training_inputs_order_rows_as_upstream_expects() -> None:
    values = np.arange(4 * 30, dtype=np.float32).reshape(4, 30)
    from chronoserve.models.train import SiteData

    none, past, future = training_inputs([SiteData("s", SYN_START, values)], ("none", "past", "future"))
    assert none["context"].shape == (1, 30) and none["n_covariates"] == 0
    assert past["context"].shape == (4, 30) and past["n_future_covariates"] == 0
    # Known-future covariates are the last rows of the context: Chronos2Dataset reads the horizon from them.
    assert future["n_covariates"] == future["n_future_covariates"] == 3
    assert np.array_equal(future["context"].numpy(), values)


# -- reproducibility ----------------------------------------------------------------------------


@pytest.mark.torch
@pytest.mark.slow
def test_same_seed_same_weights_other_seed_other_weights(tmp_path: Path) -> None:
    from safetensors.numpy import load_file

    data = write_synthetic(tmp_path / "data")
    a = train(tiny_settings(data), tmp_path / "a")
    b = train(tiny_settings(data), tmp_path / "b")
    c = train(tiny_settings(data, seed=1), tmp_path / "c")
    wa, wb, wc = (load_file(str(r.out / "model.safetensors")) for r in (a, b, c))
    assert wa.keys() == wb.keys() == wc.keys()
    assert all(np.array_equal(wa[k], wb[k]) for k in wa)
    assert a.record["weights_sha256"] == b.record["weights_sha256"] != c.record["weights_sha256"]
    assert any(not np.array_equal(wa[k], wc[k]) for k in wa)
    # Training moved the weights away from the seed's random init.
    from chronoserve.models.train import random_pipeline

    init = {k: v.detach().numpy() for k, v in random_pipeline(tiny_settings(data)).model.state_dict().items()}
    assert any(not np.allclose(init[k], wa[k]) for k in wa)


@pytest.mark.torch
@pytest.mark.slow
def test_cli_train_writes_a_checkpoint_the_loader_reads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_synthetic(tmp_path / "data")
    out = tmp_path / "ckpt"
    argv = ["models", "train", "--data", str(data), "--out", str(out), "--start", "2016-05-25"]
    argv += ["--steps", "2", "--batch-size", "8", "--context", "64", "--horizon", "16", "--threads", "1"]
    argv += ["--d-model", "8", "--d-ff", "8", "--d-kv", "4", "--layers", "1", "--heads", "2"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(out)
    assert "step 2/2" in captured.err and "loss" in captured.err
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", TRAINING_FILE]
    record = read_training_record(out)
    assert record is not None
    assert record["weights_sha256"] == sha256_file(out / "model.safetensors")
    assert record["data"]["train_span"] == ["2016-05-25 00:00", "2016-06-30 23:00"]
    assert record["data"]["sites"] == ["alpha", "beta"]
    assert record["settings"]["steps"] == 2 and record["loss"]["final_train"] is not None
    assert math.isfinite(record["wall_seconds"]) and record["versions"]["torch"]
    assert settings_from_record(record).d_model == 8
    spec = ChronosLoader().resolve(str(out))
    assert not spec.random_weights
    assert (spec.family, spec.context_length, spec.max_horizon) == ("chronos-2", 64, 16)


# -- CLI errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "flag"),
    [
        (["--data", "/no/such/dir"], "--data"),
        (["--end", "2016-07-01"], "--end"),
        (["--end", "2016-12-31 23:00"], "--end"),
        (["--end", "2016-06-31"], "--end"),
        (["--start", "2012-01-01"], "--start"),
        (["--start", "2016-06-01", "--end", "2016-05-01"], "--end"),
        (["--steps", "0"], "--steps"),
        (["--lr", "-1"], "--lr"),
        (["--context", "100"], "--context"),
        (["--sites", "nowhere"], "--sites"),
        (["--short-contexts", "1.5"], "--short-contexts"),
        (["--layers", "0"], "--layers"),
    ],
)
def test_cli_train_bad_input_exits_2_naming_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], flag: str
) -> None:
    data = write_synthetic(tmp_path / "data", sites=("alpha",))
    argv = ["models", "train", "--data", str(data), "--out", str(tmp_path / "out"), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"chronoserve: error: {flag}:"), err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_cli_train_refuses_a_non_empty_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_synthetic(tmp_path / "data", sites=("alpha",))
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["models", "train", "--data", str(data), "--out", str(out), "--start", "2016-05-25"]) == 2
    assert capsys.readouterr().err.startswith("chronoserve: error: --out:")
    assert (out / "keep.txt").read_text() == "mine"


def test_cli_train_rejects_a_data_dir_with_a_gap_in_the_hours(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_synthetic(tmp_path / "data", sites=("alpha",))
    lines = (data / "alpha.csv").read_text().splitlines()
    del lines[10]
    (data / "alpha.csv").write_text("\n".join(lines) + "\n")
    assert main(["models", "train", "--data", str(data), "--out", str(tmp_path / "o"), "--start", "2016-05-25"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("chronoserve: error: --data:") and "one hour" in err


# -- the shipped checkpoint ---------------------------------------------------------------------


def test_the_shipped_checkpoint_is_complete_and_small() -> None:
    assert SHIPPED is not None
    names = sorted(p.name for p in SHIPPED.iterdir())
    assert names == ["README.md", "config.json", "model.safetensors", TRAINING_FILE]
    assert (SHIPPED / "model.safetensors").stat().st_size < 8 * 1024 * 1024
    config = json.loads((SHIPPED / "config.json").read_text())
    assert config["chronoserve"]["random_weights"] is False
    assert config["chronoserve"]["trained_by"] == "chronoserve models train"


def test_training_json_matches_the_shipped_weights() -> None:
    assert SHIPPED is not None
    record = read_training_record(SHIPPED)
    assert record is not None
    assert record["weights_sha256"] == sha256_file(SHIPPED / "model.safetensors")
    assert record["random_weights"] is False
    start, end = (datetime.strptime(t, "%Y-%m-%d %H:%M") for t in record["data"]["train_span"])
    assert end < EVAL_START and end <= TRAIN_END
    assert len(record["data"]["sites"]) == 12
    settings = settings_from_record(record)
    entry = CATALOG[PM25_MODEL]
    assert entry.num_params == record["parameters"]
    assert entry.context_length == settings.context_length and entry.max_horizon == settings.horizon
    assert dict(entry.arch) == {
        "d_model": settings.d_model,
        "d_ff": settings.d_ff,
        "d_kv": settings.d_kv,
        "num_layers": settings.num_layers,
        "num_heads": settings.num_heads,
    }
    assert record["command"].startswith("chronoserve models train")
    assert record["wall_seconds"] > 0 and record["loss"]["final_train"] > 0


def test_the_catalog_name_resolves_to_the_shipped_directory_without_torch() -> None:
    code = (
        "import sys\n"
        "from chronoserve.models import ChronosLoader\n"
        f"spec = ChronosLoader().resolve({PM25_MODEL!r})\n"
        "assert not spec.random_weights and spec.extra['trained_here']\n"
        "assert spec.family == 'chronos-2' and spec.supports_covariates\n"
        "print(spec.source)\n"
        "assert 'torch' not in sys.modules\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert Path(out.strip()) == SHIPPED
    entry = CATALOG[PM25_MODEL]
    assert entry.trained_here and entry.hub_id is None and "TRAINED HERE" in entry.description


@pytest.mark.torch
def test_the_shipped_model_forecasts_through_the_engine() -> None:
    from chronoserve import ForecastRequest
    from chronoserve.data import SeriesStore
    from chronoserve.sync import BlockingEngine

    store = SeriesStore.embedded()
    window = store.window("dongsi", horizon=24, context=336, end=datetime(2016, 10, 1), covariates=True)
    assert window.past_covariates is not None
    levels = (0.1, 0.5, 0.9)
    requests = [
        ForecastRequest(model=PM25_MODEL, target=window.target, horizon=h, quantile_levels=levels) for h in (1, 24, 48)
    ]
    requests.append(
        ForecastRequest(
            model=PM25_MODEL,
            target=window.target,
            horizon=24,
            quantile_levels=levels,
            past_covariates={name: window.past_covariates[name] for name in COVARIATES},
        )
    )
    with BlockingEngine(torch_threads=1) as engine:
        results = engine.forecast_many(requests)
    for request, result in zip(requests, results, strict=True):
        assert not result.random_weights
        assert result.quantiles.shape == (request.horizon, 3) and result.median.shape == (request.horizon,)
        assert np.isfinite(result.quantiles).all()
        assert (np.diff(result.quantiles, axis=1) >= 0).all()  # quantiles ordered
        assert np.allclose(result.median, result.quantiles[:, 1])
        assert float(result.median.min()) > -50 and float(result.median.max()) < 1000  # on the context's scale


# -- the real data (skipped without ../shared/data) ------------------------------------------


@pytest.mark.skipif(not FULL_DATA.is_dir(), reason="needs ../shared/data/pm25-full")
def test_the_real_training_span_has_twelve_sites_and_ends_on_june_30() -> None:
    sites = load_sites(FULL_DATA, datetime(2016, 6, 1), TRAIN_END)
    assert len(sites) == 12
    for site in sites:
        assert site.end == TRAIN_END and site.hours == 30 * 24
        assert np.isfinite(site.values[0]).mean() > 0.8


@pytest.mark.torch
def test_chronoserve_forecast_defaults_to_the_shipped_model(capsys: pytest.CaptureFixture[str]) -> None:
    history = ",".join(f"{50 + 30 * math.sin(2 * math.pi * h / 24):.1f}" for h in range(240))
    assert main(["forecast", "--values", history, "--horizon", "6", "--json", "--torch-threads", "1"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["model"] == PM25_MODEL and result["random_weights"] is False
    assert len(result["median"]) == 6 and all(math.isfinite(v) for v in result["median"])


def test_the_shipped_checkpoint_is_package_data() -> None:
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    setuptools = project["tool"]["setuptools"]
    assert "chronoserve.models.pretrained" in setuptools["packages"]
    patterns = setuptools["package-data"]["chronoserve.models.pretrained"]
    assert SHIPPED is not None
    for path in SHIPPED.iterdir():
        assert any(path.match(pattern) for pattern in patterns), path.name


@pytest.mark.torch
def test_score_span_scores_the_model_and_the_baselines_on_the_held_out_windows(tmp_path: Path) -> None:
    from chronos import BaseChronosPipeline

    from chronoserve.models.train import score_span

    assert SHIPPED is not None
    pipeline = BaseChronosPipeline.from_pretrained(str(SHIPPED), device_map="cpu")
    sites = load_sites(write_synthetic(tmp_path / "data"), SYN_START, TRAIN_END)
    scores = score_span(pipeline, sites, datetime(2016, 6, 25), horizon=24, context_length=96, variant="past")
    for who in ("", "naive_", "snaive_"):
        for metric in ("wql", "mase", "rmse"):
            assert math.isfinite(scores[f"{who}{metric}"]) and scores[f"{who}{metric}"] >= 0
    assert scores["rel_mase"] == pytest.approx(scores["mase"] / scores["snaive_mase"], rel=0.5)
    first = score_span(pipeline, sites, datetime(2016, 6, 25), horizon=24, context_length=96, only_first=6)
    assert first["naive_rmse"] != scores["naive_rmse"]  # fewer hours scored


def test_plot_loss_writes_a_png(tmp_path: Path) -> None:
    from chronoserve.models.train import plot_loss

    record = {"loss": {"train_curve": [[50, 4.0], [100, 3.5]], "validation_curve": [[100, 2.0]]}}
    path = plot_loss({"run": record}, tmp_path / "img" / "loss.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
