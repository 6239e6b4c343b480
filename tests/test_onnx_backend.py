"""The ONNX Runtime backends answer like the torch backends, on the tiny test models.

Parity is measured the way the loader checks it, relative to the answer's scale
(``max |onnx - torch| / max |torch|`` per request): measured here at most ~2e-7 for Bolt and
Chronos-2 on ragged batches (contexts of 1 to 700 points, NaN gaps, NaN-left-padded rows,
covariates); asserted within 1e-5, the loader's own limit.

Two exports run per test process (Bolt and Chronos-2, a few seconds each); every other load
finds them in the cache beside the session's random checkpoints.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
if importlib.util.find_spec("chronos") is None:
    pytest.skip("chronos-forecasting is not installed", allow_module_level=True)

from chronoserve import Engine, ForecastRequest  # noqa: E402
from chronoserve.errors import InferenceTimeout  # noqa: E402
from chronoserve.models import (  # noqa: E402
    ChronosLoader,
    ModelBackend,
    PreparedRequest,
    onnx_export,
)
from chronoserve.models import onnx as onnx_backends  # noqa: E402
from chronoserve.models.chronos import TorchBackend  # noqa: E402
from chronoserve.stopping import BatchStopped, StopSignal, watching  # noqa: E402
from chronoserve.testing import FakeClock  # noqa: E402

BOLT = "random/tiny-chronos-bolt"
C2 = "random/tiny-chronos-2"
T5 = "random/tiny-chronos-t5"
LEVELS = (0.1, 0.5, 0.9)
TOLERANCE = onnx_backends.PARITY_TOLERANCE


def series(n: int, seed: int, level: float = 10.0, gaps: bool = True) -> np.ndarray:
    rng = np.random.default_rng(seed)
    values = (level + 3 * np.sin(np.arange(n) / 5 + seed) + rng.normal(size=n)).astype(np.float32)
    if gaps and n > 10:
        values[rng.random(n) < 0.05] = np.nan
        values[n // 2 : n // 2 + 3] = np.nan
    return values


def ragged(size: int, horizons: Sequence[int], seed: int = 0) -> list[PreparedRequest]:
    """``size`` requests of different context lengths (1 to 700 points) and gaps."""
    rng = np.random.default_rng(seed)
    lengths = [int(n) for n in rng.integers(1, 700, size=size)]
    return [PreparedRequest(series(n, seed + i), horizons[i % len(horizons)], LEVELS) for i, n in enumerate(lengths)]


def assert_parity(actual: list, desired: list) -> None:
    assert [a.quantiles.shape for a in actual] == [d.quantiles.shape for d in desired]
    assert onnx_backends.relative_difference(actual, desired) <= TOLERANCE
    for a, d in zip(actual, desired, strict=True):
        scale = float(np.abs(d.quantiles).max())
        np.testing.assert_allclose(a.median, d.median, rtol=0, atol=TOLERANCE * scale)


def load(name: str, **options: object) -> ModelBackend:
    loader = ChronosLoader(**options)  # type: ignore[arg-type]
    return loader.load(loader.resolve(name))


@pytest.fixture(scope="module")
def bolt_torch() -> Iterator[ModelBackend]:
    backend = load(BOLT)
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def bolt_onnx() -> Iterator[ModelBackend]:
    backend = load(BOLT, backend="onnx")
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def c2_torch() -> Iterator[ModelBackend]:
    backend = load(C2)
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def c2_onnx() -> Iterator[ModelBackend]:
    backend = load(C2, backend="onnx")
    yield backend
    backend.close()


# -- parity ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fixture", "backend_class"),
    [("bolt_onnx", onnx_backends.OnnxBoltBackend), ("c2_onnx", onnx_backends.OnnxChronos2Backend)],
)
def test_the_onnx_backends_say_what_runs(request: pytest.FixtureRequest, fixture: str, backend_class: type) -> None:
    backend = request.getfixturevalue(fixture)  # one export per test's setup: each well inside the timeout
    assert isinstance(backend, backend_class)
    assert (backend.backend, backend.dtype) == ("onnx", "float32")
    assert backend.nbytes > 0 and backend.spec.extra["backend"] == "onnx"


@pytest.mark.parametrize("size", [1, 3, 17])
def test_bolt_onnx_answers_like_torch_on_ragged_batches(
    bolt_torch: ModelBackend, bolt_onnx: ModelBackend, size: int
) -> None:
    batch = ragged(size, horizons=[1, 12, 64, 30], seed=size)
    assert_parity(bolt_onnx.predict(batch), bolt_torch.predict(batch))


def test_bolt_onnx_answers_short_and_truncated_contexts_like_torch(
    bolt_torch: ModelBackend, bolt_onnx: ModelBackend
) -> None:
    # A context of one point, one shorter than a patch, exactly two patches, and one longer than the model reads.
    batch = [PreparedRequest(series(n, n, gaps=False), 24, LEVELS) for n in (1, 7, 32, 1500)]
    assert_parity(bolt_onnx.predict(batch), bolt_torch.predict(batch))
    for request in batch:  # alone too: no padding from the others
        assert_parity(bolt_onnx.predict([request]), bolt_torch.predict([request]))


@pytest.mark.parametrize(("size", "horizon"), [(1, 16), (3, 17), (17, 40), (3, 64)])
def test_chronos2_onnx_answers_like_torch_on_ragged_batches(
    c2_torch: ModelBackend, c2_onnx: ModelBackend, size: int, horizon: int
) -> None:
    # One number of output patches per batch, as the engine sends them: 1, 2, 3 and 4 patches.
    batch = ragged(size, horizons=[horizon, horizon - 1], seed=100 + size)
    assert_parity(c2_onnx.predict(batch), c2_torch.predict(batch))


def test_chronos2_onnx_answers_covariates_like_torch(c2_torch: ModelBackend, c2_onnx: ModelBackend) -> None:
    def with_covariates(n: int, h: int, seed: int) -> PreparedRequest:
        return PreparedRequest(
            series(n, seed),
            h,
            LEVELS,
            past_covariates={"temp": series(n, seed + 1, 20.0), "wind": series(n, seed + 2, 3.0)},
            future_covariates={"temp": series(h, seed + 3, 20.0, gaps=False)},
        )

    batch = [with_covariates(n, h, i) for i, (n, h) in enumerate([(60, 20), (300, 25), (9, 32), (130, 17)])]
    batch.append(PreparedRequest(series(80, 9), 30, LEVELS))  # a plain request among them
    assert_parity(c2_onnx.predict(batch), c2_torch.predict(batch))


def test_an_onnx_request_alone_is_the_same_in_a_batch(bolt_onnx: ModelBackend) -> None:
    batch = ragged(5, horizons=[8, 64], seed=7)
    together = bolt_onnx.predict(batch)
    for request, forecast in zip(batch, together, strict=True):
        (alone,) = bolt_onnx.predict([request])
        assert onnx_backends.relative_difference([forecast], [alone]) <= TOLERANCE


# -- the export cache ---------------------------------------------------------------------------


def test_a_second_load_reuses_the_export(
    bolt_onnx: ModelBackend, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    assert isinstance(bolt_onnx, onnx_backends.OnnxBackend)
    path = bolt_onnx.path
    assert path.parent == Path(bolt_onnx.spec.source) / "onnx"  # beside the checkpoint: it is writable
    assert path.name.startswith("chronos-bolt-") and path.suffix == ".onnx"
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temporary file left
    exports: list[Path] = []
    original = onnx_export.export_model

    def counting(model: object, family: str, target: Path) -> None:
        exports.append(target)
        original(model, family, target)

    monkeypatch.setattr(onnx_export, "export_model", counting)
    with caplog.at_level(logging.WARNING, logger="chronoserve.models"):
        again = load(BOLT, backend="onnx")
    assert exports == [] and not [r for r in caplog.records if r.name == "chronoserve.models"]
    assert isinstance(again, onnx_backends.OnnxBackend) and again.path == path


def test_the_export_key_follows_the_weights(bolt_torch: ModelBackend) -> None:
    assert isinstance(bolt_torch, TorchBackend)
    model = bolt_torch.model
    key = onnx_export.export_key(model, "chronos-bolt")
    assert key == onnx_export.export_key(model, "chronos-bolt") and len(key) == 32
    import copy

    changed = copy.deepcopy(model)
    with torch.no_grad():
        next(changed.parameters()).view(-1)[0] += 1e-3
    assert onnx_export.export_key(changed, "chronos-bolt") != key
    assert onnx_export.int8_key(key) != key


def test_an_unwritable_checkpoint_directory_exports_into_the_cache(tmp_path: Path) -> None:
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    checkpoint.chmod(0o555)
    try:
        path = onnx_export.cache_file(str(checkpoint), "chronos-bolt", "k" * 32, tmp_path / "cache")
    finally:
        checkpoint.chmod(0o755)
    import os

    if os.geteuid() == 0:  # root writes anywhere: the directory counts as writable
        assert path == checkpoint / "onnx" / f"chronos-bolt-{'k' * 32}.onnx"
    else:
        assert path == tmp_path / "cache" / "onnx" / f"chronos-bolt-{'k' * 32}.onnx"
    hub = onnx_export.cache_file("amazon/chronos-bolt-tiny", "chronos-bolt", "k" * 32, tmp_path / "cache")
    assert hub == tmp_path / "cache" / "onnx" / f"chronos-bolt-{'k' * 32}.onnx"


def test_the_shipped_models_export_goes_to_the_cache_not_into_the_package(tmp_path: Path) -> None:
    from chronoserve.models.catalog import find_entry
    from chronoserve.models.loader import ChronosLoader

    shipped = ChronosLoader().resolve("chronos-2-pm25").source
    assert find_entry("chronos-2-pm25") is not None and Path(shipped).is_dir()
    path = onnx_export.cache_file(shipped, "chronos-2", "k" * 32, tmp_path / "cache")
    assert path == tmp_path / "cache" / "onnx" / f"chronos-2-{'k' * 32}.onnx"
    assert not (Path(shipped) / "onnx").exists()  # nothing written beside the package's checkpoint
    own = tmp_path / "mine"
    own.mkdir()
    assert onnx_export.cache_file(str(own), "chronos-2", "k" * 32, tmp_path / "cache").parent == own / "onnx"


def test_a_failed_write_leaves_nothing(tmp_path: Path) -> None:
    def fail(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        onnx_export.write_atomic(tmp_path / "x.onnx", fail)
    assert list(tmp_path.iterdir()) == []


# -- fallback ----------------------------------------------------------------------------------


def test_a_failing_export_falls_back_to_the_unchanged_torch_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, bolt_torch: ModelBackend
) -> None:
    touched: list[object] = []

    def broken(module: torch.nn.Module, *args: object, **kwargs: object) -> None:
        # What a failed legacy export did: left the module it exported in training mode.
        module.train()
        touched.append(module.model)
        raise RuntimeError("no")

    monkeypatch.setattr(torch.export, "export", broken)
    batch = ragged(4, horizons=[12, 64], seed=3)
    with caplog.at_level(logging.WARNING, logger="chronoserve.models"):
        backend = load(BOLT, backend="onnx", cache_dir=tmp_path)
    assert isinstance(backend, TorchBackend) and (backend.backend, backend.dtype) == ("torch", "float32")
    assert len(touched) == 1 and touched[0] is not backend.model  # it exported a copy
    assert touched[0].training and not backend.model.training  # type: ignore[attr-defined]
    assert [r.name for r in caplog.records] == ["chronoserve.models"]
    assert "runs on torch (float32), not onnx: torch.export failed" in caplog.text
    for a, b in zip(backend.predict(batch), bolt_torch.predict(batch), strict=True):
        assert np.array_equal(a.quantiles, b.quantiles)
    assert not list((Path(backend.spec.source) / "onnx").glob(".*"))  # no temporary file left behind


def test_answers_beyond_the_tolerance_fall_back_to_torch(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(onnx_backends, "relative_difference", lambda actual, desired: 1e-3)
    with caplog.at_level(logging.WARNING, logger="chronoserve.models"):
        backend = load(BOLT, backend="onnx")
    assert backend.backend == "torch"
    assert "differ from torch by 0.001 of their scale" in caplog.text


def test_t5_runs_on_torch_with_one_log_line(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="chronoserve.models"):
        backend = load(T5, backend="onnx")
    assert backend.backend == "torch" and backend.dtype == "float32"
    assert len(caplog.records) == 1 and "chronos-t5 has no onnx backend" in caplog.text
    (forecast,) = backend.predict([PreparedRequest(series(50, 1), 8, LEVELS, seed=1)])
    assert np.isfinite(forecast.quantiles).all()


def test_an_unknown_backend_is_refused_naming_the_field() -> None:
    with pytest.raises(ValueError, match="backend must be one of torch, onnx, not 'tensorrt'"):
        ChronosLoader(backend="tensorrt")


# -- int8 ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("runtime", ["torch", "onnx"])
def test_int8_runs_on_both_backends_and_says_so(runtime: str, bolt_torch: ModelBackend) -> None:
    backend = load(BOLT, backend=runtime, dtype="int8")
    assert (backend.backend, backend.dtype) == (runtime, "int8")
    assert backend.spec.extra["dtype"] == "int8"
    assert backend.nbytes > 0
    batch = ragged(3, horizons=[12, 64], seed=11)
    answers = backend.predict(batch)
    assert all(np.isfinite(f.quantiles).all() for f in answers)
    assert onnx_backends.relative_difference(answers, bolt_torch.predict(batch)) < 0.5  # changed, not broken


def test_torch_int8_quantises_linear_layers_and_keeps_the_stop_hooks() -> None:
    backend = load(C2, dtype="int8")
    assert isinstance(backend, TorchBackend)
    quantised = [m for m in backend.model.modules() if type(m).__module__.startswith("torch.ao.nn.quantized.dynamic")]
    assert quantised and not any(isinstance(m, torch.nn.Linear) for m in backend.model.modules())
    signal = StopSignal(FakeClock())
    signal.stop(InferenceTimeout("stop"))
    with watching(signal), pytest.raises(BatchStopped):
        backend.predict([PreparedRequest(series(40, 0), 16, LEVELS)])


# -- stopping ------------------------------------------------------------------------------------


def test_a_stopped_batch_stops_before_its_next_onnx_pass(bolt_onnx: ModelBackend) -> None:
    signal = StopSignal(FakeClock())
    signal.stop(InferenceTimeout("stop"))  # type: ignore[arg-type]
    with watching(signal), pytest.raises(BatchStopped):
        bolt_onnx.predict(ragged(2, horizons=[8]))


def test_stopping_a_batch_terminates_its_onnx_pass(bolt_onnx: ModelBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(bolt_onnx, onnx_backends.OnnxBackend)
    signal = StopSignal(FakeClock())
    session = bolt_onnx.session

    class Stopping:
        """A session whose pass is stopped from outside while it runs, as the engine would."""

        def run(self, outputs: object, feeds: object, options: object) -> object:
            signal.stop(InferenceTimeout("stop"))  # type: ignore[arg-type]
            assert options.terminate  # type: ignore[attr-defined]  # the callback aborted the pass
            return session.run(outputs, feeds, options)  # ONNX Runtime refuses to run: terminated

    monkeypatch.setattr(bolt_onnx, "session", Stopping())
    with watching(signal), pytest.raises(BatchStopped):
        bolt_onnx.predict(ragged(2, horizons=[8]))


def test_a_deadline_fires_the_stop_callback() -> None:
    import threading
    import time

    from chronoserve.clock import MonotonicClock

    clock = MonotonicClock()
    signal = StopSignal(clock, deadline=clock.now() + 0.05, limit=0.05)
    fired = threading.Event()
    unregister = signal.on_stop(fired.set)
    assert fired.wait(5.0)
    assert signal.stopped
    unregister()
    late = threading.Event()
    signal.on_stop(late.set)  # already stopped: called at once
    assert late.is_set()
    quiet = StopSignal(clock, deadline=clock.now() + 0.05, limit=0.05)
    never = threading.Event()
    quiet.on_stop(never.set)()  # unregistered at once
    time.sleep(0.1)
    assert not never.is_set()


# -- the engine --------------------------------------------------------------------------------


async def test_an_engine_with_the_onnx_backend_answers_like_torch(bolt_onnx: ModelBackend) -> None:
    def requests(model: str) -> list[ForecastRequest]:
        return [
            ForecastRequest(model=model, target=series(n, i).tolist(), horizon=h, request_id=f"r{i}")
            for i, (n, h) in enumerate([(48, 24), (200, 4), (97, 64), (5, 12)])
        ]

    results = {}
    for backend in ("torch", "onnx"):
        loader = ChronosLoader(backend=backend, torch_threads=1)
        async with Engine("batched", loader=loader, policy_options={"max_batch": 8, "max_wait": 0.2}) as engine:
            results[backend] = await engine.forecast_many(requests(BOLT))
            (info,) = engine.resident().values()
        assert info.status == "ready"
    assert [r.batch_size for r in results["onnx"]] == [4] * 4
    for o, t in zip(results["onnx"], results["torch"], strict=True):
        scale = float(np.abs(t.quantiles).max())
        np.testing.assert_allclose(o.quantiles, t.quantiles, rtol=0, atol=TOLERANCE * scale)


async def test_the_engine_reports_the_backend_that_actually_serves() -> None:
    """A T5 model asked for on onnx is served by torch: the engine's snapshot says torch."""
    from chronoserve.settings import EngineSettings

    engine = EngineSettings(backend="onnx").engine()
    async with engine:
        await engine.warm("random/tiny-chronos-t5")
        info = engine.resident()["random/tiny-chronos-t5"]
    assert (info.backend, info.dtype) == ("torch", "float32")
