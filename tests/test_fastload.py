"""fastload builds what ``from_pretrained`` builds, without it, on many threads at once.

Every comparison is exact: each parameter and buffer (bits, dtype, device, ``requires_grad``),
which parameters are one tied object, the config, eval mode, T5's generation config, and the
forecasts of the wrapped backends. The tiny test configurations run for each family and for
float32, bfloat16 and float16 (where ``_keep_in_fp32_modules`` keeps T5's ``wo`` in float32).
Concurrency tests load many models on many threads and compare every tensor with a reference
load; they pass or fail the same way whatever the machine's load (no timing is asserted).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch")
if importlib.util.find_spec("chronos") is None:
    pytest.skip("chronos-forecasting is not installed", allow_module_level=True)

from chronos import BaseChronosPipeline  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from chronoserve import errors  # noqa: E402
from chronoserve.models import ChronosLoader, PreparedRequest, fastload, materialize  # noqa: E402
from chronoserve.models.chronos import wrap_pipeline  # noqa: E402

FAMILIES = ("tiny-chronos-bolt", "tiny-chronos-2", "tiny-chronos-t5")
DTYPES = ("float32", "bfloat16", "float16")
LEVELS = (0.1, 0.5, 0.9)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One materialised checkpoint per family (seed 0), in this module's own directory."""
    root = tmp_path_factory.mktemp("fastload")
    return {name: materialize(name, dir=root / name) for name in FAMILIES}


def from_pretrained(path: Path | str, dtype: str = "float32") -> Any:
    return BaseChronosPipeline.from_pretrained(str(path), dtype=getattr(torch, dtype), use_safetensors=True)


def fast(path: Path | str, dtype: str = "float32") -> Any:
    return fastload.load(str(path), dtype=getattr(torch, dtype), device="cpu").pipeline


def tensors_of(model: Any) -> dict[str, Any]:
    return {
        **dict(model.named_parameters(remove_duplicate=False)),
        **dict(model.named_buffers(remove_duplicate=False)),
    }


def tie_groups(model: Any) -> list[list[str]]:
    groups: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(param), []).append(name)
    return sorted(sorted(g) for g in groups.values() if len(g) > 1)


def assert_same_model(actual: Any, expected: Any) -> None:
    """The two inner models are the same, tensor for tensor and setting for setting."""
    a, e = tensors_of(actual), tensors_of(expected)
    assert a.keys() == e.keys()
    for name in e:
        assert a[name].dtype == e[name].dtype, name
        assert a[name].device == e[name].device, name
        assert a[name].requires_grad == e[name].requires_grad, name
        assert not a[name].is_meta, name
        assert torch.equal(a[name], e[name]), name
    assert tie_groups(actual) == tie_groups(expected)
    assert actual.config.to_dict() == expected.config.to_dict()
    assert actual.config._attn_implementation == expected.config._attn_implementation
    assert actual.training is expected.training is False
    assert all(not m.training for m in actual.modules())
    if getattr(expected, "generation_config", None) is not None:
        assert actual.generation_config.to_dict() == expected.generation_config.to_dict()
    else:
        assert getattr(actual, "generation_config", None) is None


def requests(seed: int = 0) -> list[PreparedRequest]:
    rng = np.random.default_rng(seed)
    out = []
    for n in (7, 60, 130):
        values = (10 + 3 * np.sin(np.arange(n) / 5) + rng.normal(size=n)).astype(np.float32)
        out.append(PreparedRequest(values, 12, LEVELS, seed=n))
    return out


def answers(pipeline: Any, name: str) -> list[np.ndarray]:
    loader = ChronosLoader()
    spec = loader.resolve(f"random/{name}")
    return [f.quantiles for f in wrap_pipeline(pipeline, spec).predict(requests())]


# -- the same model as from_pretrained ------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", FAMILIES)
def test_every_tensor_tie_and_setting_equals_from_pretrained(
    checkpoints: dict[str, Path], name: str, dtype: str
) -> None:
    expected = from_pretrained(checkpoints[name], dtype)
    actual = fast(checkpoints[name], dtype)
    assert type(actual) is type(expected)
    assert type(actual.inner_model) is type(expected.inner_model)
    assert_same_model(actual.inner_model, expected.inner_model)


def test_float16_keeps_t5s_wo_in_float32_as_from_pretrained_does(checkpoints: dict[str, Path]) -> None:
    model = fast(checkpoints["tiny-chronos-t5"], "float16").inner_model
    kept = {name for name, p in model.named_parameters() if p.dtype == torch.float32}
    assert kept and all(".wo." in name for name in kept)


@pytest.mark.parametrize("name", FAMILIES)
def test_forecasts_equal_from_pretrained_bit_for_bit(checkpoints: dict[str, Path], name: str) -> None:
    expected = answers(from_pretrained(checkpoints[name]), name)
    actual = answers(fast(checkpoints[name]), name)
    for a, e in zip(actual, expected, strict=True):
        np.testing.assert_array_equal(a, e)


def test_the_loader_loads_local_checkpoints_through_fastload(
    checkpoints: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("from_pretrained was called")

    monkeypatch.setattr(BaseChronosPipeline, "from_pretrained", refuse)
    loader = ChronosLoader()
    for name in FAMILIES:
        backend = loader.load(loader.resolve(str(checkpoints[name])))
        assert len(backend.predict(requests())) == 3


def test_fastload_false_loads_through_from_pretrained(checkpoints: dict[str, Path]) -> None:
    loader = ChronosLoader(fastload=False)
    backend = loader.load(loader.resolve(str(checkpoints["tiny-chronos-bolt"])))
    assert_same_model(backend.model, from_pretrained(checkpoints["tiny-chronos-bolt"]).inner_model)
    assert loader.offload(backend) is None  # no host tier for what from_pretrained loaded


def test_a_load_leaves_process_wide_state_alone(checkpoints: dict[str, Path]) -> None:
    from transformers.modeling_utils import PreTrainedModel

    def state() -> tuple[Any, ...]:
        return (torch.get_default_dtype(), torch.get_default_device(), PreTrainedModel.tie_weights, torch.linspace)

    before = state()
    torch.manual_seed(99)
    expected = torch.rand(3)
    torch.manual_seed(99)
    for name in FAMILIES:
        fast(checkpoints[name], "bfloat16")
    assert torch.equal(torch.rand(3), expected)  # the global RNG was not drawn from
    assert state() == before
    assert torch.empty(1).device.type == "cpu"  # no meta device left on this thread


@pytest.mark.parametrize("name", FAMILIES)
def test_models_cloned_from_one_template_share_no_mutable_state(checkpoints: dict[str, Path], name: str) -> None:
    fastload.clear_templates()
    first = fast(checkpoints[name]).inner_model  # builds the template, and clones it
    second = fast(checkpoints[name]).inner_model  # clones it
    assert_same_model(second, from_pretrained(checkpoints[name]).inner_model)
    atomic = (int, float, str, bool, type(None), torch.dtype, torch.device, torch.Tensor)
    for (path, a), (_, b) in zip(first.named_modules(), second.named_modules(), strict=True):
        assert a is not b and type(a) is type(b), path
        for key, value in vars(a).items():
            if not isinstance(value, atomic):
                assert vars(b)[key] is not value, f"{path}.{key} is shared"
    first.config.name_or_path = "changed"
    first.encoder.block[0].register_forward_pre_hook(lambda module, args: None)
    third = fast(checkpoints[name]).inner_model
    assert third.config.name_or_path == str(checkpoints[name])
    assert not third.encoder.block[0]._forward_pre_hooks


def test_a_meta_tensor_left_is_an_error_naming_it(checkpoints: dict[str, Path]) -> None:
    model = fast(checkpoints["tiny-chronos-bolt"]).inner_model
    fastload.check_materialised(model, torch.device("cpu"))
    model.quantiles = torch.empty(9, device="meta")
    with pytest.raises(fastload.IncompleteModel, match="quantiles"):
        fastload.check_materialised(model, torch.device("cpu"))


# -- checkpoints that differ from what save_pretrained writes ----------------------------------


def copy_checkpoint(src: Path, dst: Path, edit: Callable[[dict[str, Any]], None] | None = None) -> Path:
    shutil.copytree(src, dst)
    if edit is not None:
        tensors = load_file(dst / "model.safetensors")
        edit(tensors)
        save_file({k: v.contiguous() for k, v in tensors.items()}, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def test_tied_weights_stored_as_the_target_key_tie_as_from_pretrained(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    def only_lm_head(t: dict[str, Any]) -> None:
        t["lm_head.weight"] = t.pop("shared.weight").clone()

    path = copy_checkpoint(checkpoints["tiny-chronos-t5"], tmp_path / "t5", only_lm_head)
    assert_same_model(fast(path).inner_model, from_pretrained(path).inner_model)


@pytest.mark.parametrize("equal", [True, False])
def test_a_tied_key_stored_twice_ties_only_if_equal_as_from_pretrained(
    checkpoints: dict[str, Path], tmp_path: Path, equal: bool
) -> None:
    def both(t: dict[str, Any]) -> None:
        t["lm_head.weight"] = t["shared.weight"].clone() if equal else t["shared.weight"] + 1

    path = copy_checkpoint(checkpoints["tiny-chronos-t5"], tmp_path / "t5", both)
    actual = fast(path).inner_model
    assert_same_model(actual, from_pretrained(path).inner_model)
    assert (actual.lm_head.weight is actual.shared.weight) is equal


def test_unknown_keys_are_skipped_and_known_leftovers_quietly(
    checkpoints: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def extra(t: dict[str, Any]) -> None:
        t["lm_head.weight"] = torch.zeros(2, 8)  # Bolt ignores it (_keys_to_ignore_on_load_unexpected)
        t["something.else"] = torch.ones(3)

    path = copy_checkpoint(checkpoints["tiny-chronos-bolt"], tmp_path / "bolt", extra)
    with caplog.at_level(logging.WARNING, logger="chronoserve.models"):
        actual = fast(path).inner_model
    assert_same_model(actual, from_pretrained(path).inner_model)
    assert "something.else" in caplog.text and "lm_head" not in caplog.text


def test_a_missing_weight_is_refused_not_initialised_at_random(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    def drop(t: dict[str, Any]) -> None:
        del t["output_patch_embedding.output_layer.weight"]

    path = copy_checkpoint(checkpoints["tiny-chronos-bolt"], tmp_path / "bolt", drop)
    with pytest.raises(fastload.IncompleteCheckpoint, match="output_patch_embedding.output_layer.weight"):
        fast(path)
    loader = ChronosLoader()
    with pytest.raises(errors.ModelLoadError, match="initialise at random") as info:
        loader.load(loader.resolve(str(path)))
    assert isinstance(info.value.__cause__, fastload.IncompleteCheckpoint)


def test_a_weight_of_the_wrong_shape_fails_the_load(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    def reshape(t: dict[str, Any]) -> None:
        t["shared.weight"] = torch.zeros(3, 8)

    path = copy_checkpoint(checkpoints["tiny-chronos-bolt"], tmp_path / "bolt", reshape)
    loader = ChronosLoader()
    with pytest.raises(errors.ModelLoadError, match="shared.weight"):
        loader.load(loader.resolve(str(path)))


def test_a_sharded_checkpoint_loads_like_the_single_file(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    path = shutil.copytree(checkpoints["tiny-chronos-2"], tmp_path / "c2")
    tensors = load_file(path / "model.safetensors")
    keys = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for file, names in shards.items():
        save_file({k: tensors[k] for k in names}, path / file, metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {k: f for f, names in shards.items() for k in names}}
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    (path / "model.safetensors").unlink()
    assert len(fastload.read_checkpoint(path).weights) == 2
    assert_same_model(fast(path).inner_model, from_pretrained(path).inner_model)
    single = tensors_of(fast(checkpoints["tiny-chronos-2"]).inner_model)
    assert all(torch.equal(t, single[k]) for k, t in tensors_of(fast(path).inner_model).items())


def test_t5_without_a_generation_config_file_reads_it_from_the_config(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    path = shutil.copytree(checkpoints["tiny-chronos-t5"], tmp_path / "t5")
    (path / "generation_config.json").unlink()
    assert_same_model(fast(path).inner_model, from_pretrained(path).inner_model)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda p, c: (p / "adapter_config.json").write_text("{}"), "LoRA adapter"),
        (lambda p, c: c.update(quantization_config={"quant_method": "x"}), "quantization_config"),
        (lambda p, c: c["chronos_config"].update(model_type="causal"), "model type"),
        (lambda p, c: c.update(architectures=["SomethingElse"]), "architecture"),
        (lambda p, c: c.update(chronos_pipeline_class="OtherPipeline"), "pipeline class"),
        (lambda p, c: (p / "model.safetensors").unlink(), "no model.safetensors"),
    ],
)
def test_checkpoints_fastload_does_not_cover_are_named(
    checkpoints: dict[str, Path], tmp_path: Path, change: Callable[[Path, dict[str, Any]], Any], reason: str
) -> None:
    name = "tiny-chronos-t5" if reason == "model type" else "tiny-chronos-bolt"
    path = shutil.copytree(checkpoints[name], tmp_path / "x")
    config = json.loads((path / "config.json").read_text())
    change(path, config)
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(fastload.NotCovered, match=reason):
        fastload.read_checkpoint(path)


def test_a_not_covered_local_checkpoint_goes_through_from_pretrained_with_a_log_line(
    checkpoints: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = shutil.copytree(checkpoints["tiny-chronos-bolt"], tmp_path / "bolt")
    config = json.loads((path / "config.json").read_text())
    config["architectures"] = ["ChronosBoltModelForForecasting", "Other"]
    config["architectures"].reverse()  # upstream takes the first: unknown, so it warns and builds Bolt
    (path / "config.json").write_text(json.dumps(config))
    loader = ChronosLoader()
    with caplog.at_level(logging.INFO, logger="chronoserve.models"):
        backend = loader.load(loader.resolve(str(path)))
    assert "loads through from_pretrained" in caplog.text
    assert len(backend.predict(requests())) == 3


def test_unchanged_tells_a_rewritten_file(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    path = shutil.copytree(checkpoints["tiny-chronos-bolt"], tmp_path / "bolt")
    checkpoint = fastload.read_checkpoint(path)
    assert checkpoint.unchanged()
    (path / "model.safetensors").write_bytes((path / "model.safetensors").read_bytes())
    assert not checkpoint.unchanged()
    again = fastload.read_checkpoint(path)
    (path / "adapter_config.json").write_text("{}")  # appeared: a load would go another way
    assert not again.unchanged()


# -- threads -----------------------------------------------------------------------------------


def run_threads(n: int, work: Callable[[int], None]) -> list[BaseException]:
    failures: list[BaseException] = []
    barrier = threading.Barrier(n)

    def run(i: int) -> None:
        try:
            barrier.wait()
            work(i)
        except BaseException as e:  # reported by the caller
            failures.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return failures


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Six different models: each family with seeds 1 and 2."""
    root = tmp_path_factory.mktemp("seeded")
    return {f"{n}@{s}": materialize(n, dir=root / f"{n}-{s}", seed=s) for n in FAMILIES for s in (1, 2)}


@pytest.fixture(scope="module")
def references(seeded: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """Each model's tensors as from_pretrained loads it, alone."""
    return {key: dict(tensors_of(from_pretrained(path).inner_model)) for key, path in seeded.items()}


def test_many_concurrent_loads_never_leave_a_weight_uninitialised_or_different(
    seeded: dict[str, Path], references: dict[str, dict[str, Any]]
) -> None:
    keys = sorted(seeded)
    wrong: list[str] = []

    def work(i: int) -> None:
        for round_ in range(3):
            for key in keys[i % len(keys) :] + keys[: i % len(keys)]:
                model = fast(seeded[key]).inner_model
                tensors = tensors_of(model)
                for name, expected in references[key].items():
                    if tensors[name].is_meta or not torch.equal(tensors[name], expected):
                        wrong.append(f"thread {i} round {round_} {key} {name}")

    assert run_threads(8, work) == []
    assert wrong == []


def test_concurrent_loader_loads_give_complete_models_with_the_same_answers(seeded: dict[str, Path]) -> None:
    loader = ChronosLoader()
    specs = {key: loader.resolve(str(path)) for key, path in seeded.items()}
    expected = {key: [f.quantiles for f in loader.load(spec).predict(requests())] for key, spec in specs.items()}
    keys = sorted(specs)
    wrong: list[str] = []

    def work(i: int) -> None:
        for key in keys[i % len(keys) :] + keys[: i % len(keys)]:
            backend = loader.load(specs[key])
            got = [f.quantiles for f in backend.predict(requests())]
            if not all(np.array_equal(a, e) for a, e in zip(got, expected[key], strict=True)):
                wrong.append(f"thread {i}: {key}")
            backend.close()

    assert run_threads(8, work) == []
    assert wrong == []


def test_fastload_stays_exact_while_from_pretrained_patches_process_wide_state(
    seeded: dict[str, Path], references: dict[str, dict[str, Any]]
) -> None:
    # from_pretrained (under its lock) sets the default dtype to bfloat16 and swaps tie_weights for
    # a no-op while it builds; fastload on other threads meanwhile must not notice.
    slow = ChronosLoader(dtype="bfloat16", fastload=False)
    slow_specs = [slow.resolve(str(path)) for path in seeded.values()]
    keys = sorted(seeded)
    wrong: list[str] = []

    def work(i: int) -> None:
        if i % 2 == 0:
            for spec in slow_specs:
                slow.load(spec).close()
            return
        for _ in range(2):
            for key in keys:
                tensors = tensors_of(fast(seeded[key]).inner_model)
                for name, expected in references[key].items():
                    got = tensors[name]
                    if got.is_meta or got.dtype != expected.dtype or not torch.equal(got, expected):
                        wrong.append(f"{key} {name}")

    assert run_threads(6, work) == []
    assert wrong == []


def test_concurrent_from_pretrained_loads_are_still_serialised_and_complete(seeded: dict[str, Path]) -> None:
    # The old bug (transformers 5's from_pretrained is not thread-safe) still applies to that path:
    # the loader serialises it. Concurrent loads through it give complete models.
    loader = ChronosLoader(fastload=False)
    specs = [loader.resolve(str(path)) for path in seeded.values()]
    meta: list[str] = []

    def work(i: int) -> None:
        for spec in specs[i % 2 :: 2]:
            backend = loader.load(spec)
            meta.extend(n for n, t in tensors_of(backend.model).items() if t.is_meta)

    assert run_threads(4, work) == []
    assert meta == []
