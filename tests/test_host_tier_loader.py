"""ChronosLoader's host tier: ``offload`` keeps an evicted model, ``load(host=...)`` promotes it.

A promoted model answers exactly as a load from disk does (torch float32 and bfloat16, torch
int8, onnx float32 and int8, and T5's torch fallback under the onnx backend), without reading the
checkpoint (its readers are made to fail) and, for onnx, without hashing the weights or probing
parity. A copy whose files changed since is not used: the model loads from disk. Also:
``offload``'s None cases, ``tier()`` and ``import_modules``. All on the tiny test models.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch")
if importlib.util.find_spec("chronos") is None:
    pytest.skip("chronos-forecasting is not installed", allow_module_level=True)

import safetensors.torch  # noqa: E402

from chronoserve import Engine, ForecastRequest, errors  # noqa: E402
from chronoserve.models import ChronosLoader, ModelBackend, PreparedRequest, fastload, materialize  # noqa: E402
from chronoserve.models.base import HostCopy  # noqa: E402
from chronoserve.models.loader import HostWeights  # noqa: E402
from chronoserve.testing import FakeModel, fake_spec  # noqa: E402

HAS_ONNX = all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "onnx", "onnxscript"))
FAMILIES = ("tiny-chronos-bolt", "tiny-chronos-2", "tiny-chronos-t5")
VARIANTS = [
    ("torch", "float32"),
    ("torch", "bfloat16"),
    ("torch", "int8"),
    pytest.param("onnx", "float32", marks=pytest.mark.skipif(not HAS_ONNX, reason="onnx extras not installed")),
    pytest.param("onnx", "int8", marks=pytest.mark.skipif(not HAS_ONNX, reason="onnx extras not installed")),
]
LEVELS = (0.1, 0.5, 0.9)


def requests() -> list[PreparedRequest]:
    rng = np.random.default_rng(3)
    out = []
    for n, h in ((5, 16), (70, 20), (140, 32)):
        values = (20 + 4 * np.sin(np.arange(n) / 6) + rng.normal(size=n)).astype(np.float32)
        out.append(PreparedRequest(values, h, LEVELS, seed=n))
    return out


def answers(backend: ModelBackend) -> list[np.ndarray]:
    return [np.concatenate([f.quantiles.ravel(), f.median]) for f in backend.predict(requests())]


def assert_same_answers(actual: list[np.ndarray], expected: list[np.ndarray]) -> None:
    for a, e in zip(actual, expected, strict=True):
        np.testing.assert_array_equal(a, e)


def evict(loader: ChronosLoader, backend: ModelBackend) -> HostCopy:
    """What the engine does to an evicted model: offload, then close."""
    copy = loader.offload(backend)
    backend.close()
    assert copy is not None
    return copy


@pytest.fixture
def no_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading a checkpoint, or hashing weights and probing parity for onnx, fails from here on."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a promotion read the disk or redid a first load's work")

    monkeypatch.setattr(fastload, "read_checkpoint", refuse)
    monkeypatch.setattr(fastload, "read_tensors", refuse)
    monkeypatch.setattr(safetensors.torch, "load_file", refuse)
    if HAS_ONNX:
        from chronoserve.models import onnx as onnx_backends
        from chronoserve.models import onnx_export

        monkeypatch.setattr(onnx_export, "export_key", refuse)
        monkeypatch.setattr(onnx_export, "ensure_export", refuse)
        monkeypatch.setattr(onnx_backends, "probe_batch", refuse)


# -- promotion: the same answers, no disk ---------------------------------------------------------


@pytest.mark.parametrize(("runtime", "dtype"), VARIANTS)
@pytest.mark.parametrize("name", FAMILIES)
def test_a_promoted_model_answers_as_a_load_from_disk(
    name: str, runtime: str, dtype: str, request: pytest.FixtureRequest
) -> None:
    loader = ChronosLoader(backend=runtime, dtype=dtype)
    spec = loader.resolve(f"random/{name}")
    loaded = loader.load(spec)
    kind, served, expected = type(loaded), (loaded.backend, loaded.dtype), answers(loaded)
    copy = evict(loader, loaded)
    assert isinstance(copy.payload, HostWeights) and copy.model == spec.name
    request.getfixturevalue("no_disk")
    promoted = loader.load(spec, host=copy)
    assert type(promoted) is kind and (promoted.backend, promoted.dtype) == served
    assert_same_answers(answers(promoted), expected)
    again = loader.load(spec, host=evict(loader, promoted))  # a promoted model is evicted and promoted again
    assert_same_answers(answers(again), expected)


def test_a_torch_copy_shares_the_models_tensors_and_counts_each_once() -> None:
    loader = ChronosLoader()
    loaded = loader.load(loader.resolve("random/tiny-chronos-t5"))
    model_storages = {p.untyped_storage().data_ptr() for p in loaded.model.parameters()}
    copy = evict(loader, loaded)
    assert isinstance(copy.payload, HostWeights)
    tensors = copy.payload.tensors
    assert tensors is not None
    assert {t.untyped_storage().data_ptr() for t in tensors.values()} == model_storages  # shared, not copied
    assert "shared.weight" in tensors and "lm_head.weight" not in tensors  # a tied weight once
    assert copy.nbytes == 23_040 * 4  # every parameter once, in float32


def test_an_int8_copy_keeps_the_float_weights_it_was_quantised_from() -> None:
    loader = ChronosLoader(dtype="int8")
    copy = evict(loader, loader.load(loader.resolve("random/tiny-chronos-bolt")))
    assert isinstance(copy.payload, HostWeights) and copy.payload.int8
    assert copy.payload.tensors is not None
    assert {t.dtype for t in copy.payload.tensors.values()} == {torch.float32}
    assert copy.nbytes == 18_656 * 4


@pytest.mark.skipif(not HAS_ONNX, reason="onnx extras not installed")
def test_an_onnx_copy_holds_no_weights_but_the_verified_export() -> None:
    loader = ChronosLoader(backend="onnx")
    loaded = loader.load(loader.resolve("random/tiny-chronos-2"))
    path = loaded.path  # type: ignore[attr-defined]
    copy = evict(loader, loaded)
    assert copy.nbytes == 0
    assert isinstance(copy.payload, HostWeights)
    assert copy.payload.tensors is None and copy.payload.export is not None
    assert copy.payload.export.path == path and path.name.endswith(f"{copy.payload.export.key}.onnx")


def test_concurrent_promotions_of_different_models() -> None:
    loader = ChronosLoader()
    specs = [loader.resolve(f"random/{name}") for name in FAMILIES]
    expected, copies = [], []
    for spec in specs:
        loaded = loader.load(spec)
        expected.append(answers(loaded))
        copies.append(evict(loader, loaded))
    results: list[Any] = [None] * len(specs)

    def promote(i: int) -> None:
        try:
            results[i] = answers(loader.load(specs[i], host=copies[i]))
        except BaseException as e:  # reported below
            results[i] = e

    threads = [threading.Thread(target=promote, args=(i,)) for i in range(len(specs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, want in zip(results, expected, strict=True):
        assert not isinstance(got, BaseException), got
        assert_same_answers(got, want)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_a_cuda_model_is_kept_in_pinned_cpu_memory_and_promoted_bit_for_bit() -> None:
    loader = ChronosLoader(device="cuda")
    spec = loader.resolve("random/tiny-chronos-bolt")
    loaded = loader.load(spec)
    expected = answers(loaded)
    copy = evict(loader, loaded)
    assert isinstance(copy.payload, HostWeights) and copy.payload.tensors is not None
    assert all(t.device.type == "cpu" and t.is_pinned() for t in copy.payload.tensors.values())
    promoted = loader.load(spec, host=copy)
    assert all(p.device.type == "cuda" for p in promoted.model.parameters())  # type: ignore[attr-defined]
    assert_same_answers(answers(promoted), expected)
    assert_same_answers(answers(loader.load(spec)), expected)


# -- stale copies load from disk ---------------------------------------------------------------


def test_a_copy_of_a_checkpoint_rewritten_since_is_not_used(tmp_path: Path) -> None:
    path = materialize("tiny-chronos-bolt", dir=tmp_path / "bolt", seed=0)
    loader = ChronosLoader()
    spec = loader.resolve(str(path))
    loaded = loader.load(spec)
    before = answers(loaded)
    copy = evict(loader, loaded)
    other = materialize("tiny-chronos-bolt", dir=tmp_path / "other", seed=1)
    shutil.copyfile(other / "model.safetensors", path / "model.safetensors")  # new weights, same place
    promoted = answers(loader.load(spec, host=copy))
    assert_same_answers(promoted, answers(ChronosLoader().load(spec)))  # what a load from disk gives now
    assert not np.array_equal(promoted[0], before[0])


@pytest.mark.skipif(not HAS_ONNX, reason="onnx extras not installed")
def test_a_copy_whose_onnx_file_changed_loads_from_disk_and_checks_again(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from chronoserve.models import onnx as onnx_backends

    path = materialize("tiny-chronos-bolt", dir=tmp_path / "bolt")
    loader = ChronosLoader(backend="onnx")
    spec = loader.resolve(str(path))
    loaded = loader.load(spec)
    expected = answers(loaded)
    export = loaded.path  # type: ignore[attr-defined]
    copy = evict(loader, loaded)
    stat = export.stat()
    os.utime(export, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    probes: list[int] = []
    real_probe = onnx_backends.probe_batch
    monkeypatch.setattr(onnx_backends, "probe_batch", lambda b: probes.append(1) or real_probe(b))
    promoted = loader.load(spec, host=copy)
    assert probes == [1]  # loaded from disk: the parity probe ran again
    assert_same_answers(answers(promoted), expected)


def test_a_copy_made_with_other_settings_loads_from_disk() -> None:
    float32, bfloat16 = ChronosLoader(), ChronosLoader(dtype="bfloat16")
    copy = evict(float32, float32.load(float32.resolve("random/tiny-chronos-bolt")))
    loaded = bfloat16.load(bfloat16.resolve("random/tiny-chronos-bolt"), host=copy)
    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}  # type: ignore[attr-defined]


def test_a_copy_of_another_model_is_refused() -> None:
    loader = ChronosLoader()
    copy = evict(loader, loader.load(loader.resolve("random/tiny-chronos-bolt")))
    with pytest.raises(errors.ModelLoadError, match="not this model's"):
        loader.load(loader.resolve("random/tiny-chronos-2"), host=copy)
    with pytest.raises(errors.ModelLoadError, match="not this model's"):
        loader.load(loader.resolve("random/tiny-chronos-bolt"), host=HostCopy("random/tiny-chronos-bolt", 1, "x"))


# -- offload's None ---------------------------------------------------------------------------


def test_offload_returns_none_where_there_is_nothing_to_keep() -> None:
    loader = ChronosLoader()
    spec = loader.resolve("random/tiny-chronos-bolt")
    through_from_pretrained = ChronosLoader(fastload=False)
    assert through_from_pretrained.offload(through_from_pretrained.load(spec)) is None  # as a hub id
    assert loader.offload(ChronosLoader().load(spec)) is None  # another loader's model
    assert loader.offload(FakeModel(fake_spec("fake"))) is None
    loaded = loader.load(spec)
    assert loader.offload(loaded) is not None
    assert loader.offload(loaded) is None  # offloaded once: the engine closes it next


# -- tier ----------------------------------------------------------------------------------------


def test_tier_is_disk_for_local_checkpoints_and_random_ones_before_they_exist(tmp_path: Path) -> None:
    loader = ChronosLoader(cache_dir=tmp_path / "cache")
    random = loader.resolve("random/tiny-chronos-bolt")
    assert not Path(random.source).exists()
    assert loader.tier(random) == "disk"
    assert loader.tier(loader.resolve("chronos-2-pm25")) == "disk"
    assert loader.tier(loader.resolve(str(materialize("tiny-chronos-2", dir=tmp_path / "c2")))) == "disk"


def test_tier_of_a_hub_id_is_disk_only_with_its_weights_in_the_hf_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    loader = ChronosLoader(allow_hub="*")
    spec = loader.resolve("amazon/chronos-bolt-tiny")
    assert loader.tier(spec) == "hub"
    repo = tmp_path / "models--amazon--chronos-bolt-tiny"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    (snapshot / "config.json").write_text("{}")
    assert loader.tier(spec) == "hub"  # the config without the weights: a download first
    (snapshot / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "s1.safetensors"}}))
    assert loader.tier(spec) == "hub"  # a shard is missing
    (snapshot / "s1.safetensors").write_bytes(b"x")
    assert loader.tier(spec) == "disk"
    (snapshot / "model.safetensors").write_bytes(b"x")
    assert loader.tier(spec) == "disk"


# -- imports ---------------------------------------------------------------------------------------


def test_import_modules_imports_what_a_load_needs(tmp_path: Path) -> None:
    names = [f"random/{name}" for name in FAMILIES]
    materialising = ChronosLoader(cache_dir=tmp_path)
    for name in names:
        materialising.load(materialising.resolve(name))  # the checkpoints exist before the child starts
    code = f"""
import sys
from chronoserve.models import ChronosLoader
loader = ChronosLoader(cache_dir={str(tmp_path)!r})
assert "torch" not in sys.modules and "chronos" not in sys.modules
loader.import_modules()
assert {{"torch", "transformers", "chronos", "safetensors"}} <= set(sys.modules)
before = {{m.split(".")[0] for m in sys.modules}}
for name in {names!r}:
    loader.load(loader.resolve(name))
print(sorted({{m.split(".")[0] for m in sys.modules}} - before))
"""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, "-c", code], check=True, env=env, capture_output=True, text=True)
    assert done.stdout.strip().splitlines()[-1] == "[]"  # a load after them imports no other package


# -- the engine ------------------------------------------------------------------------------------


async def test_the_engine_demotes_and_promotes_a_real_model_with_the_same_answers() -> None:
    engine = Engine(
        "lru", policy_options={"max_resident": 1}, loader=ChronosLoader(), workers=1, torch_threads=1, host_budget=10**9
    )
    target = [float(20 + (i % 12)) for i in range(96)]
    async with engine:
        first = await engine.forecast(ForecastRequest(model="random/tiny-chronos-bolt", target=target, horizon=12))
        await engine.forecast(ForecastRequest(model="random/tiny-chronos-2", target=target, horizon=12))
        assert engine.stats().host_models == ("random/tiny-chronos-bolt",)
        again = await engine.forecast(ForecastRequest(model="random/tiny-chronos-bolt", target=target, horizon=12))
        assert engine.resident()["random/tiny-chronos-bolt"].loaded_from == "host"
    np.testing.assert_array_equal(again.quantiles, first.quantiles)
    np.testing.assert_array_equal(again.median, first.median)


# -- the benchmark -----------------------------------------------------------------------------------


def test_the_load_benchmark_measures_every_path_and_checks_the_answers() -> None:
    import benches

    bench = benches.load_bench("coldstart_loads")
    (row,) = bench.measure_tiers(["random/tiny-chronos-bolt"], repeats=1, backends=["torch"])
    assert row["random_weights"] and row["same_answers"] and row["ran"] == "torch float32"
    assert all(row[f"{path}_s"] > 0 for path in bench.PATHS)
    assert row["host_nbytes"] == 18_656 * 4
    result = bench.measure_concurrent(["random/tiny-chronos-bolt", "random/tiny-chronos-2"], n=2, repeats=1)
    assert result["random_weights"] and all(result[key] > 0 for key in bench.CONCURRENT)
