"""The model catalog, name resolution and the ``models`` CLI, mostly without torch.

The parameter counts of the published architectures are checked on torch's meta device
(nothing is allocated), against the exact counts the catalog records and the published ones.
"""

from __future__ import annotations

import argparse
import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from chronoserve import errors
from chronoserve.models import CATALOG, CHRONOS_2, CHRONOS_BOLT, CHRONOS_T5, ChronosLoader, cache_dir, catalog_entry
from chronoserve.models import _cli as models_cli
from chronoserve.models.catalog import BOLT_QUANTILES, CHRONOS_2_QUANTILES

PUBLISHED = [e.name for e in CATALOG.values() if not e.test_only and not e.trained_here]
TRAINED = [e.name for e in CATALOG.values() if e.trained_here]
TINY = [e.name for e in CATALOG.values() if e.test_only]


def test_catalog_lists_every_published_checkpoint_and_the_tiny_ones() -> None:
    assert PUBLISHED == [
        "chronos-2",
        "chronos-bolt-tiny",
        "chronos-bolt-mini",
        "chronos-bolt-small",
        "chronos-bolt-base",
        "chronos-t5-tiny",
        "chronos-t5-mini",
        "chronos-t5-small",
        "chronos-t5-base",
        "chronos-t5-large",
    ]
    assert TINY == ["tiny-chronos-bolt", "tiny-chronos-2", "tiny-chronos-t5"]
    assert TRAINED == ["chronos-2-pm25"]  # trained here and shipped (tests/test_models_train.py)
    for name in PUBLISHED:
        entry = CATALOG[name]
        assert entry.hub_id == f"amazon/{name}"
        assert entry.published_params is not None
    assert {CATALOG[n].family for n in TINY} == {CHRONOS_2, CHRONOS_BOLT, CHRONOS_T5}
    assert all(CATALOG[n].hub_id is None for n in TINY)


def test_catalog_limits_match_the_published_models() -> None:
    c2 = CATALOG["chronos-2"]
    assert (c2.context_length, c2.max_horizon, c2.batch_patch) == (8192, 1024, 16)
    assert c2.quantiles == CHRONOS_2_QUANTILES and len(c2.quantiles) == 21 and c2.supports_covariates
    bolt = CATALOG["chronos-bolt-base"]
    assert (bolt.context_length, bolt.max_horizon, bolt.batch_patch) == (2048, 64, None)
    assert bolt.quantiles == BOLT_QUANTILES == (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    t5 = CATALOG["chronos-t5-small"]
    assert (t5.context_length, t5.max_horizon, t5.checkpoint_dtype) == (512, 64, "bfloat16")
    assert CATALOG["tiny-chronos-t5"].checkpoint_dtype == "float32"
    assert not bolt.supports_covariates and not t5.supports_covariates


@pytest.mark.parametrize("name", ["chronos-bolt-tiny", "amazon/chronos-bolt-tiny", "random/chronos-bolt-tiny"])
def test_catalog_entry_accepts_short_names_hub_ids_and_random_prefix(name: str) -> None:
    assert catalog_entry(name) is CATALOG["chronos-bolt-tiny"]


def test_catalog_entry_rejects_unknown_names_naming_them() -> None:
    with pytest.raises(errors.UnknownModel, match="chronos-bolt-huge") as info:
        catalog_entry("chronos-bolt-huge")
    assert info.value.name == "chronos-bolt-huge"
    assert info.value.field == "model"


@pytest.mark.torch
@pytest.mark.parametrize("name", PUBLISHED + TINY + TRAINED)
def test_parameter_count_of_each_architecture(name: str) -> None:
    import torch

    entry = CATALOG[name]
    with torch.device("meta"):  # nothing is allocated, even for the 709M-parameter t5-large
        model = entry.model_class()(entry.build_config())
    measured = sum(p.numel() for p in model.parameters())
    assert measured == entry.num_params
    if entry.published_params is not None:
        # Within 2 % of the published count, or within the rounding of a figure published as "8M".
        assert abs(measured - entry.published_params) <= entry.params_tolerance(0.02), (
            f"{name}: {measured:,} parameters vs {entry.published_params:,} published"
        )


def test_published_counts_that_are_exact_are_within_two_percent() -> None:
    exact = {
        "chronos-bolt-tiny": 8.65e6,
        "chronos-bolt-mini": 21.2e6,
        "chronos-bolt-small": 47.7e6,
        "chronos-2": 119.5e6,
    }
    for name, published in exact.items():
        assert abs(CATALOG[name].num_params - published) / published < 0.02


# -- resolve: no torch, no weights ---------------------------------------------------------


def test_importing_chronoserve_models_does_not_import_torch() -> None:
    code = "import chronoserve.models, sys; assert 'torch' not in sys.modules; assert 'chronos' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_resolve_does_not_import_torch(tmp_path: Path) -> None:
    ckpt = _fake_checkpoint(
        tmp_path / "ckpt", "ChronosBoltPipeline", {"context_length": 512, "prediction_length": 64, "quantiles": [0.5]}
    )
    code = (
        "import sys\n"
        "from chronoserve.models import ChronosLoader\n"
        "loader = ChronosLoader(allow_hub='*')\n"
        "names = ['random/chronos-bolt-tiny', 'random/chronos-2', 'chronos-t5-small', 'amazon/chronos-2']\n"
        f"for name in [*names, {str(ckpt)!r}]:\n"
        "    loader.resolve(name)\n"
        "assert 'torch' not in sys.modules, 'resolve imported torch'\n"
        "assert 'transformers' not in sys.modules, 'resolve imported transformers'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_resolve_random_names_point_into_the_cache_without_materialising(model_cache: str, tmp_path: Path) -> None:
    loader = ChronosLoader(cache_dir=tmp_path)
    spec = loader.resolve("random/chronos-bolt-small")
    assert spec.random_weights
    assert spec.family == CHRONOS_BOLT
    assert Path(spec.source) == tmp_path / "models" / "random" / "chronos-bolt-small"
    assert not Path(spec.source).exists()  # materialised on first load, not on resolve
    assert (spec.context_length, spec.max_horizon, spec.batch_patch) == (2048, 64, None)
    assert spec.num_params == CATALOG["chronos-bolt-small"].num_params
    assert spec.est_nbytes == spec.num_params * 4
    assert spec.extra["catalog_name"] == "chronos-bolt-small"
    # The default cache is CHRONOSERVE_CACHE (conftest points it at a temporary directory).
    default = ChronosLoader().resolve("random/amazon/chronos-bolt-small")
    assert Path(default.source) == Path(model_cache) / "models" / "random" / "chronos-bolt-small"


def test_resolve_chronos_2_and_t5() -> None:
    loader = ChronosLoader(dtype="bfloat16", allow_hub="*")
    c2 = loader.resolve("random/chronos-2")
    assert (c2.family, c2.max_horizon, c2.batch_patch, c2.supports_covariates) == (CHRONOS_2, 1024, 16, True)
    assert c2.quantiles == CHRONOS_2_QUANTILES
    assert c2.est_nbytes == CATALOG["chronos-2"].num_params * 2
    t5 = loader.resolve("chronos-t5-base")
    assert (t5.family, t5.context_length, t5.max_horizon, t5.batch_patch) == (CHRONOS_T5, 512, 64, None)
    assert not t5.supports_covariates


@pytest.mark.parametrize("name", ["chronos-bolt-tiny", "amazon/chronos-bolt-tiny"])
def test_resolve_catalog_names_and_hub_ids_to_the_hub(name: str) -> None:
    spec = ChronosLoader(allow_hub="amazon/chronos-bolt-tiny").resolve(name)
    assert spec.source == "amazon/chronos-bolt-tiny"
    assert not spec.random_weights
    assert spec.name == name


def test_tiny_test_entries_resolve_as_random_with_or_without_prefix() -> None:
    for name in ["tiny-chronos-bolt", "random/tiny-chronos-bolt"]:
        spec = ChronosLoader().resolve(name)
        assert spec.random_weights and spec.family == CHRONOS_BOLT and spec.context_length == 512


def test_resolve_refuses_random_names_when_disabled() -> None:
    with pytest.raises(errors.UnknownModel, match="random"):
        ChronosLoader(allow_random=False).resolve("random/chronos-bolt-tiny")
    assert not ChronosLoader(allow_random=False, allow_hub="*").resolve("chronos-bolt-tiny").random_weights


@pytest.mark.parametrize("name", ["no-such-model", "random/no-such-model", "someone/not-cached-anywhere", ""])
def test_resolve_unknown_names_raise_unknown_model(name: str) -> None:
    with pytest.raises(errors.UnknownModel) as info:
        ChronosLoader().resolve(name)
    assert name in str(info.value)


def test_resolve_local_directory_reads_its_config(tmp_path: Path) -> None:
    ckpt = _fake_checkpoint(
        tmp_path / "c2",
        "Chronos2Pipeline",
        {
            "context_length": 4096,
            "output_patch_size": 16,
            "input_patch_size": 16,
            "max_output_patches": 8,
            "quantiles": [0.1, 0.5, 0.9],
        },
        shapes={"a": [10, 6], "b": [7]},
        marker={"random_weights": True, "catalog_name": "tiny-chronos-2", "seed": 3},
    )
    spec = ChronosLoader().resolve(str(ckpt))
    assert spec.family == CHRONOS_2
    assert spec.source == str(ckpt.absolute())
    assert (spec.context_length, spec.max_horizon, spec.batch_patch) == (4096, 128, 16)
    assert spec.quantiles == (0.1, 0.5, 0.9)
    assert spec.random_weights
    assert spec.num_params == 67
    assert spec.est_nbytes == 67 * 4
    assert spec.supports_covariates


def test_resolve_local_directory_families(tmp_path: Path) -> None:
    bolt = _fake_checkpoint(
        tmp_path / "bolt",
        None,
        {"context_length": 2048, "prediction_length": 64, "quantiles": [0.1, 0.5, 0.9]},
        architectures=["ChronosBoltModelForForecasting"],
    )
    t5 = _fake_checkpoint(tmp_path / "t5", None, {"context_length": 512, "prediction_length": 64})
    spec = ChronosLoader().resolve(str(bolt))
    assert (spec.family, spec.max_horizon, spec.random_weights) == (CHRONOS_BOLT, 64, False)
    spec = ChronosLoader().resolve(str(t5))
    assert (spec.family, spec.context_length, spec.max_horizon) == (CHRONOS_T5, 512, 64)


def test_resolve_rejects_directories_that_are_not_chronos_checkpoints(tmp_path: Path) -> None:
    with pytest.raises(errors.UnknownModel, match="config.json"):
        ChronosLoader().resolve(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(errors.UnknownModel, match="not a Chronos checkpoint"):
        ChronosLoader().resolve(str(tmp_path))


def test_cache_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CHRONOSERVE_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path
    monkeypatch.delenv("CHRONOSERVE_CACHE")
    import platformdirs

    assert cache_dir() == Path(platformdirs.user_cache_dir("chronoserve"))


def test_loader_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="dtype"):
        ChronosLoader(dtype="int4")
    with pytest.raises(ValueError, match="torch_threads"):
        ChronosLoader(torch_threads=0)


# -- CLI ------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chronoserve")
    models_cli.register(parser.add_subparsers())
    return parser


def test_cli_models_list_flags_test_entries(capsys: pytest.CaptureFixture[str]) -> None:
    args = _parser().parse_args(["models", "list"])
    assert args.func(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:4] == ["NAME", "FAMILY", "PARAMS", "HUB"]
    table, notes = out[1 : out.index("")], out[out.index("") :]
    rows = {line.split()[0]: line for line in table}
    assert set(rows) == set(CATALOG)
    assert "amazon/chronos-bolt-tiny" in rows["chronos-bolt-tiny"]
    assert "8.7M" in rows["chronos-bolt-tiny"] and "119.5M" in rows["chronos-2"]
    assert " test " in rows["tiny-chronos-bolt"] and " test " not in rows["chronos-bolt-tiny"]
    assert " trained here " in rows["chronos-2-pm25"] and "shipped" in rows["chronos-2-pm25"]
    assert any(line.startswith("chronos-2-pm25: TRAINED HERE") for line in notes)  # what it is, how it was made


def test_cli_materialize_unknown_name_exits_2_naming_it(capsys: pytest.CaptureFixture[str]) -> None:
    args = _parser().parse_args(["models", "materialize", "chronos-bolt-huge"])
    assert args.func(args) == 2
    captured = capsys.readouterr()
    assert "chronos-bolt-huge" in captured.err
    assert captured.out == ""


def test_cli_models_without_subcommand_prints_usage(capsys: pytest.CaptureFixture[str]) -> None:
    args = _parser().parse_args(["models"])
    assert args.func(args) == 2
    assert "materialize" in capsys.readouterr().err


# -- helpers --------------------------------------------------------------------------------


def _fake_checkpoint(
    path: Path,
    pipeline_class: str | None,
    chronos_config: dict[str, object],
    *,
    shapes: dict[str, list[int]] | None = None,
    marker: dict[str, object] | None = None,
    architectures: list[str] | None = None,
) -> Path:
    """A directory with a config.json and a header-only safetensors file (no torch needed)."""
    path.mkdir(parents=True)
    config: dict[str, object] = {"model_type": "t5", "chronos_config": chronos_config}
    if pipeline_class:
        config["chronos_pipeline_class"] = pipeline_class
    if architectures:
        config["architectures"] = architectures
    if marker:
        config["chronoserve"] = marker
    (path / "config.json").write_text(json.dumps(config))
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in (shapes or {"w": [2, 2]}).items():
        n = 1
        for d in shape:
            n *= d
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + 4 * n]}
        offset += 4 * n
    raw = json.dumps(header).encode()
    (path / "model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * offset)
    return path
