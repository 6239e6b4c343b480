"""Random checkpoints, the real ``from_pretrained`` path and the three torch backends.

Everything runs on the tiny test configurations (a few thousand parameters each),
materialised into the session's temporary cache.

Tolerances, measured on a 2-core AVX-512 CPU with torch 2.13:

- A request run alone through a backend equals upstream ``predict_quantiles`` bit for bit
  (Bolt; Chronos-2 with and without covariates differed by 0.0 too, asserted to 1e-5).
- The same request inside a batch of mixed context lengths is NOT always bit-identical to it
  alone, for Bolt as for Chronos-2: ``InstanceNorm``'s ``nanmean`` over a NaN-left-padded row
  rounds differently, and so do the GEMMs whose row count is the batch size (Bolt's decoder:
  batch 1 takes another kernel than batch 2). Observed differences are at most 2e-6 on values
  of about 10 (a few float32 ulps), so batches are compared with ``rtol=1e-5, atol=1e-5``.
- What does hold exactly: requests with equal contexts and different horizons (the prefix of a
  longer horizon is the shorter forecast), and T5 samples (seeded per request).
"""

from __future__ import annotations

import importlib.util
import math
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from chronoserve import errors
from chronoserve.errors import EngineClosed
from chronoserve.models import ChronosLoader, ModelBackend, PreparedRequest, is_materialized, materialize
from chronoserve.models import _cli as models_cli
from chronoserve.models.base import CHRONOS_2, CHRONOS_BOLT, CHRONOS_T5, interpolate_quantiles
from chronoserve.models.catalog import BOLT_QUANTILES as BOLT_LEVELS
from chronoserve.models.catalog import CatalogEntry
from chronoserve.stopping import BatchStopped, watching

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch")
# Found, not imported: chronos (and transformers) load with the first model, not at collection.
if importlib.util.find_spec("chronos") is None:
    pytest.skip("chronos-forecasting is not installed", allow_module_level=True)

from chronoserve.models import chronos as backends  # noqa: E402  (needs torch)

LEVELS = (0.1, 0.5, 0.9)
BATCH_RTOL = BATCH_ATOL = 1e-5


def assert_batch_close(actual: np.ndarray, desired: np.ndarray) -> None:
    """The tolerance between a request in a batch and alone (see the module docstring)."""
    np.testing.assert_allclose(actual, desired, rtol=BATCH_RTOL, atol=BATCH_ATOL)


def series(n: int, seed: int = 0, level: float = 10.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return (level + 3 * np.sin(t / 5 + seed) + rng.normal(size=n)).astype(np.float32)


@pytest.fixture(scope="session")
def loader() -> ChronosLoader:
    return ChronosLoader()


@pytest.fixture(scope="session")
def bolt(loader: ChronosLoader) -> Iterator[ModelBackend]:
    backend = loader.load(loader.resolve("random/tiny-chronos-bolt"))
    yield backend
    backend.close()


@pytest.fixture(scope="session")
def c2(loader: ChronosLoader) -> Iterator[ModelBackend]:
    backend = loader.load(loader.resolve("random/tiny-chronos-2"))
    yield backend
    backend.close()


@pytest.fixture(scope="session")
def t5(loader: ChronosLoader) -> Iterator[ModelBackend]:
    backend = loader.load(loader.resolve("random/tiny-chronos-t5"))
    yield backend
    backend.close()


def pipeline_of(backend: ModelBackend) -> object:
    assert isinstance(backend, backends.TorchBackend)
    return backend.pipeline


# -- materialize ----------------------------------------------------------------------------


def _weights(path: Path) -> bytes:
    return (path / "model.safetensors").read_bytes()


def test_materialize_is_deterministic_and_marked(tmp_path: Path) -> None:
    a = materialize("tiny-chronos-bolt", dir=tmp_path / "a", seed=0)
    b = materialize("random/tiny-chronos-bolt", dir=tmp_path / "b", seed=0)
    c = materialize("tiny-chronos-bolt", dir=tmp_path / "c", seed=1)
    assert _weights(a) == _weights(b)
    assert _weights(a) != _weights(c)
    import json

    config = json.loads((a / "config.json").read_text())
    assert config["chronoserve"] == {"random_weights": True, "catalog_name": "tiny-chronos-bolt", "seed": 0}
    assert config["chronos_pipeline_class"] == "ChronosBoltPipeline"
    assert is_materialized(a, "tiny-chronos-bolt", 0)
    assert not is_materialized(c, "tiny-chronos-bolt", 0)
    # No temporary directories are left beside the targets.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]


def test_materialize_leaves_the_global_rng_alone(tmp_path: Path) -> None:
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    materialize("tiny-chronos-2", dir=tmp_path / "x", seed=7)
    assert torch.equal(torch.rand(3), expected)


def test_materialize_returns_an_existing_checkpoint_untouched(tmp_path: Path) -> None:
    path = materialize("tiny-chronos-t5", dir=tmp_path / "t5")
    mtime = (path / "model.safetensors").stat().st_mtime_ns
    assert materialize("tiny-chronos-t5", dir=tmp_path / "t5") == path
    assert (path / "model.safetensors").stat().st_mtime_ns == mtime


def test_materialize_refuses_a_directory_holding_something_else(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="other files"):
        materialize("tiny-chronos-bolt", dir=tmp_path)
    materialize("tiny-chronos-bolt", dir=tmp_path / "ckpt", seed=0)
    with pytest.raises(FileExistsError, match="seed 0"):
        materialize("tiny-chronos-bolt", dir=tmp_path / "ckpt", seed=5)


def test_concurrent_materialize_calls_write_one_valid_checkpoint(tmp_path: Path) -> None:
    target = tmp_path / "shared"
    results: list[Path] = []
    failures: list[BaseException] = []

    def run() -> None:
        try:
            results.append(materialize("tiny-chronos-2", dir=target, seed=0))
        except BaseException as e:  # pragma: no cover - reported below
            failures.append(e)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures
    assert results == [target.absolute()] * 4
    assert is_materialized(target, "tiny-chronos-2", 0)
    assert [p.name for p in tmp_path.iterdir()] == ["shared"]


def test_materialize_losing_a_race_to_another_process_returns_the_winner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib

    # (``chronoserve.models.materialize`` the attribute is the function; the module is in sys.modules.)
    materialize_mod = importlib.import_module("chronoserve.models.materialize")
    target = tmp_path / "raced"
    original = materialize_mod._write_checkpoint

    def write_while_another_process_wins(entry: CatalogEntry, path: Path, seed: int) -> None:
        original(entry, path, seed)
        # Meanwhile "another process" renames its own complete copy into place first.
        other = tmp_path / "other"
        other.mkdir()
        original(entry, other, seed)
        other.rename(target)

    monkeypatch.setattr(materialize_mod, "_write_checkpoint", write_while_another_process_wins)
    assert materialize("tiny-chronos-bolt", dir=target) == target.absolute()
    assert is_materialized(target, "tiny-chronos-bolt", 0)
    assert [p.name for p in tmp_path.iterdir()] == ["raced"]  # our temporary copy is gone


def test_random_spec_is_materialised_on_first_load(tmp_path: Path) -> None:
    loader = ChronosLoader(cache_dir=tmp_path)
    spec = loader.resolve("random/tiny-chronos-bolt")
    assert not Path(spec.source).exists()
    backend = loader.load(spec)
    assert is_materialized(spec.source, "tiny-chronos-bolt", 0)
    assert len(backend.predict([PreparedRequest(series(40), 8, LEVELS)])) == 1


# -- loading --------------------------------------------------------------------------------


def test_cli_materialize_then_load_the_directory_with_from_pretrained(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "my-bolt"
    assert models_cli.main(["materialize", "tiny-chronos-bolt", "--dir", str(target), "--seed", "3"]) == 0
    assert capsys.readouterr().out.strip() == str(target.absolute())

    loader = ChronosLoader()
    spec = loader.resolve(str(target))
    assert spec.family == CHRONOS_BOLT
    assert spec.random_weights
    assert spec.extra["seed"] == 3
    assert spec.num_params == 18_656
    backend = loader.load(spec)
    assert isinstance(backend, backends.BoltBackend)
    assert not backend.model.training
    assert backend.nbytes == 18_656 * 4 + 9 * 4  # parameters and the quantile buffer
    (forecast,) = backend.predict([PreparedRequest(series(100), 12, LEVELS)])
    assert forecast.quantiles.shape == (12, 3) and forecast.quantiles.dtype == np.float32
    assert np.isfinite(forecast.quantiles).all()


@pytest.mark.parametrize(
    ("name", "backend_class", "family"),
    [
        ("tiny-chronos-2", "Chronos2Backend", CHRONOS_2),
        ("tiny-chronos-t5", "T5Backend", CHRONOS_T5),
    ],
)
def test_load_picks_the_backend_of_the_family(
    loader: ChronosLoader, name: str, backend_class: str, family: str
) -> None:
    spec = loader.resolve(f"random/{name}")
    backend = loader.load(spec)
    assert type(backend).__name__ == backend_class
    assert backend.spec is spec and spec.family == family
    assert backend.nbytes >= spec.est_nbytes > 0


def test_concurrent_loads_in_threads_give_complete_models(loader: ChronosLoader) -> None:
    # transformers' from_pretrained is not thread-safe: unserialised, concurrent loads left tied
    # embeddings on the meta device. The loader serialises them.
    specs = [loader.resolve(f"random/{name}") for name in ("tiny-chronos-bolt", "tiny-chronos-t5")]
    meta: list[str] = []
    failures: list[BaseException] = []

    def run(i: int) -> None:
        try:
            for _ in range(2):
                backend = loader.load(specs[i % 2])
                meta.extend(n for n, p in backend.model.named_parameters() if p.is_meta)  # type: ignore[attr-defined]
        except BaseException as e:  # pragma: no cover - reported below
            failures.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures
    assert meta == []


def test_hub_id_without_network_fails_with_model_load_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # Not allowed: refused before anything (test_hub_access.py has the rest); allowed, with a hub
    # that cannot be reached (a local port nobody listens on): a permanent load error at once.
    with pytest.raises(errors.HubNotAllowed):
        ChronosLoader().resolve("amazon/chronos-bolt-tiny")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    monkeypatch.delenv("https_proxy", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # the probe itself, not the offline switch
    allowed = ChronosLoader(allow_hub="*")
    spec = allowed.resolve("amazon/chronos-bolt-tiny")
    if allowed.tier(spec) != "hub":
        pytest.skip("this machine's Hugging Face cache holds amazon/chronos-bolt-tiny")
    with pytest.raises(errors.ModelLoadError, match="not reachable") as info:
        allowed.load(spec)
    assert info.value.model == "amazon/chronos-bolt-tiny" and info.value.permanent


def test_loading_a_broken_directory_fails_with_model_load_error(tmp_path: Path, loader: ChronosLoader) -> None:
    path = materialize("tiny-chronos-bolt", dir=tmp_path / "broken")
    spec = loader.resolve(str(path))
    (path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(errors.ModelLoadError):
        loader.load(spec)


# -- Chronos-Bolt ---------------------------------------------------------------------------


def test_bolt_alone_equals_upstream_predict_quantiles_bit_for_bit(bolt: ModelBackend) -> None:
    pipeline = pipeline_of(bolt)
    for n, h in [(30, 5), (200, 64), (700, 24)]:
        ctx = series(n, seed=n)
        (forecast,) = bolt.predict([PreparedRequest(ctx, h, (0.1, 0.3, 0.5, 0.9))])
        q, mean = pipeline.predict_quantiles(  # type: ignore[attr-defined]
            torch.tensor(ctx), prediction_length=h, quantile_levels=[0.1, 0.3, 0.5, 0.9]
        )
        assert np.array_equal(forecast.quantiles, q[0].numpy())
        assert np.array_equal(forecast.median, mean[0].numpy())  # upstream's "mean" is the median


def test_bolt_off_grid_levels_interpolate_like_upstream(bolt: ModelBackend) -> None:
    ctx = series(150)
    grid = list(BOLT_LEVELS)
    levels = [0.05, 0.25, 0.5, 0.75, 0.99]
    (native,) = bolt.predict([PreparedRequest(ctx, 16, tuple(grid))])
    (forecast,) = bolt.predict([PreparedRequest(ctx, 16, tuple(levels))])
    # Linear between the two nearest native levels, clamped to the outermost ones.
    assert np.array_equal(forecast.quantiles, interpolate_quantiles(grid, native.quantiles, levels))
    np.testing.assert_allclose(
        forecast.quantiles[:, 1], (native.quantiles[:, 1] + native.quantiles[:, 2]) / 2, rtol=1e-6
    )
    assert np.array_equal(forecast.quantiles[:, 0], native.quantiles[:, 0])
    # Upstream Bolt interpolates with torch.quantile over the grid padded with its end values,
    # which sorts the values first. For a model whose quantiles do not cross (a trained one;
    # here: sorted), that is the same interpolation.
    monotone = np.sort(native.quantiles, axis=-1)
    padded = torch.from_numpy(np.concatenate([monotone[:, :1], monotone, monotone[:, -1:]], axis=-1))
    upstream = torch.quantile(padded, q=torch.tensor(levels), dim=-1).T.numpy()
    np.testing.assert_allclose(interpolate_quantiles(grid, monotone, levels), upstream, rtol=1e-6, atol=1e-6)


def test_bolt_mixed_batch_matches_requests_alone(bolt: ModelBackend) -> None:
    batch = [
        PreparedRequest(series(n, seed=i), h, LEVELS)
        for i, (n, h) in enumerate([(30, 5), (200, 64), (77, 24), (512, 1), (513, 10), (3, 7)])
    ]
    together = bolt.predict(batch)
    assert [f.quantiles.shape for f in together] == [(r.horizon, 3) for r in batch]
    for req, forecast in zip(batch, together, strict=True):
        (alone,) = bolt.predict([req])
        assert_batch_close(forecast.quantiles, alone.quantiles)
        assert_batch_close(forecast.median, alone.median)


def test_bolt_horizons_share_one_forward_pass_exactly(bolt: ModelBackend) -> None:
    ctx = series(100)
    short, long_, other = bolt.predict(
        [PreparedRequest(ctx, 5, LEVELS), PreparedRequest(ctx, 64, LEVELS), PreparedRequest(series(300, 1), 9, LEVELS)]
    )
    assert np.array_equal(short.quantiles, long_.quantiles[:5])
    assert np.array_equal(short.median, long_.median[:5])
    assert other.quantiles.shape == (9, 3)


def test_bolt_chunks_large_batches(bolt: ModelBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    batch = [PreparedRequest(series(40, seed=i), 4, LEVELS) for i in range(10)]
    whole = bolt.predict(batch)
    monkeypatch.setattr(backends, "MAX_ROWS", 3)
    calls: list[int] = []
    model = bolt.model  # type: ignore[attr-defined]
    original = model.forward

    def counting_forward(*args: object, **kwargs: object) -> object:
        calls.append(kwargs["context"].shape[0])  # type: ignore[attr-defined]
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "forward", counting_forward)
    chunked = bolt.predict(batch)
    assert calls == [3, 3, 3, 1]
    for a, b in zip(whole, chunked, strict=True):
        assert_batch_close(a.quantiles, b.quantiles)


def test_bolt_truncates_long_contexts_like_upstream(bolt: ModelBackend) -> None:
    ctx = series(1500)
    (long_,) = bolt.predict([PreparedRequest(ctx, 8, LEVELS)])
    (cut,) = bolt.predict([PreparedRequest(ctx[-512:], 8, LEVELS)])
    assert np.array_equal(long_.quantiles, cut.quantiles)


def test_bolt_refuses_horizons_beyond_the_model(bolt: ModelBackend) -> None:
    with pytest.raises(errors.InvalidRequest, match="horizon"):
        bolt.predict([PreparedRequest(series(50), 65, LEVELS)])
    assert bolt.predict([]) == []


def test_predict_sets_nothing_process_global(bolt: ModelBackend, t5: ModelBackend) -> None:
    threads = torch.get_num_threads()
    rng_state = torch.get_rng_state()
    grad = torch.is_grad_enabled()
    bolt.predict([PreparedRequest(series(50), 8, LEVELS)])
    t5.predict([PreparedRequest(series(50), 8, LEVELS, seed=1)])
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.get_rng_state(), rng_state)
    assert torch.is_grad_enabled() == grad


# -- Chronos-2 ------------------------------------------------------------------------------


def test_chronos2_alone_equals_upstream_predict_quantiles(c2: ModelBackend) -> None:
    pipeline = pipeline_of(c2)
    for n, h in [(30, 5), (200, 16), (77, 40), (700, 1)]:
        ctx = series(n, seed=n)
        (forecast,) = c2.predict([PreparedRequest(ctx, h, LEVELS)])
        q, mean = pipeline.predict_quantiles([torch.tensor(ctx)], prediction_length=h, quantile_levels=list(LEVELS))  # type: ignore[attr-defined]
        np.testing.assert_allclose(forecast.quantiles, q[0][0].numpy(), rtol=0, atol=1e-5)
        np.testing.assert_allclose(forecast.median, mean[0][0].numpy(), rtol=0, atol=1e-5)


def test_chronos2_covariates_equal_upstream_list_of_dicts(c2: ModelBackend) -> None:
    n, h = 120, 20
    past = {"b_past_only": series(n, 1), "a_known": series(n, 2), "c_known": series(n, 3, level=50)}
    future = {"c_known": series(h, 4, level=50), "a_known": series(h, 5)}
    ctx = series(n, 6)
    (forecast,) = c2.predict([PreparedRequest(ctx, h, LEVELS, past_covariates=past, future_covariates=future)])
    q, mean = pipeline_of(c2).predict_quantiles(  # type: ignore[attr-defined]
        [{"target": ctx, "past_covariates": past, "future_covariates": future}],
        prediction_length=h,
        quantile_levels=list(LEVELS),
    )
    np.testing.assert_allclose(forecast.quantiles, q[0][0].numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(forecast.median, mean[0][0].numpy(), rtol=0, atol=1e-5)
    # The covariates matter: without them the forecast is another one.
    (plain,) = c2.predict([PreparedRequest(ctx, h, LEVELS)])
    assert not np.allclose(plain.quantiles, forecast.quantiles)


def test_chronos2_off_grid_levels_match_upstream(c2: ModelBackend) -> None:
    ctx = series(90)
    levels = [0.02, 0.33, 0.5, 0.97]
    (forecast,) = c2.predict([PreparedRequest(ctx, 10, tuple(levels))])
    q, _ = pipeline_of(c2).predict_quantiles([torch.tensor(ctx)], prediction_length=10, quantile_levels=levels)  # type: ignore[attr-defined]
    np.testing.assert_allclose(forecast.quantiles, q[0][0].numpy(), rtol=0, atol=1e-5)


def _c2_batch() -> list[PreparedRequest]:
    reqs = [
        PreparedRequest(series(n, seed=i), h, LEVELS)
        for i, (n, h) in enumerate([(30, 17), (200, 32), (77, 20), (513, 31)])
    ]
    n = 60
    reqs.append(
        PreparedRequest(
            series(n, 9),
            25,
            LEVELS,
            past_covariates={"x": series(n, 10), "y": series(n, 11)},
            future_covariates={"y": series(25, 12)},
        )
    )
    return reqs


def test_chronos2_mixed_context_batch_matches_requests_alone(c2: ModelBackend) -> None:
    batch = _c2_batch()
    assert len({math.ceil(r.horizon / 16) for r in batch}) == 1  # what the engine sends: one patch count
    together = c2.predict(batch)
    for req, forecast in zip(batch, together, strict=True):
        (alone,) = c2.predict([req])
        assert forecast.quantiles.shape == (req.horizon, 3)
        assert_batch_close(forecast.quantiles, alone.quantiles)
        assert_batch_close(forecast.median, alone.median)


def test_chronos2_splits_rows_by_whole_requests(c2: ModelBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    batch = _c2_batch()
    whole = c2.predict(batch)
    monkeypatch.setattr(backends, "MAX_ROWS", 3)  # the covariate request (3 rows) goes alone
    model = c2.model  # type: ignore[attr-defined]
    original = model.forward
    rows: list[tuple[int, int]] = []

    def counting_forward(*args: object, **kwargs: object) -> object:
        rows.append((kwargs["context"].shape[0], len(set(kwargs["group_ids"].tolist()))))  # type: ignore[attr-defined]
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "forward", counting_forward)
    chunked = c2.predict(batch)
    assert rows == [(3, 3), (1, 1), (3, 1)]
    for a, b in zip(whole, chunked, strict=True):
        assert_batch_close(a.quantiles, b.quantiles)


def test_chronos2_never_mixes_patch_counts_in_one_forward(c2: ModelBackend) -> None:
    ctx = series(100)
    h16, h17 = c2.predict([PreparedRequest(ctx, 16, LEVELS), PreparedRequest(ctx, 17, LEVELS)])
    (alone16,) = c2.predict([PreparedRequest(ctx, 16, LEVELS)])
    (alone17,) = c2.predict([PreparedRequest(ctx, 17, LEVELS)])
    assert np.array_equal(h16.quantiles, alone16.quantiles)
    assert np.array_equal(h17.quantiles, alone17.quantiles)


def test_chronos2_checks_covariate_lengths(c2: ModelBackend) -> None:
    bad_past = PreparedRequest(series(50), 8, LEVELS, past_covariates={"x": series(49)})
    with pytest.raises(errors.InvalidRequest, match=r"past_covariates\.x"):
        c2.predict([bad_past])
    bad_future = PreparedRequest(
        series(50), 8, LEVELS, past_covariates={"x": series(50)}, future_covariates={"x": series(7)}
    )
    with pytest.raises(errors.InvalidRequest, match=r"future_covariates\.x"):
        c2.predict([bad_future])
    with pytest.raises(errors.InvalidRequest, match="horizon"):
        c2.predict([PreparedRequest(series(50), 1025, LEVELS)])


# -- Chronos-T5 -----------------------------------------------------------------------------


def _t5_batch() -> list[PreparedRequest]:
    return [
        PreparedRequest(series(n, seed=i), h, LEVELS, seed=s)
        for i, (n, h, s) in enumerate([(30, 5, 1), (200, 64, 2), (77, 24, 3), (600, 10, 4), (50, 12, 1)])
    ]


def test_t5_request_with_a_seed_is_the_same_alone_and_in_any_batch(t5: ModelBackend) -> None:
    batch = _t5_batch()
    together = t5.predict(batch)
    reordered = t5.predict(batch[::-1])[::-1]
    for req, a, b in zip(batch, together, reordered, strict=True):
        (alone,) = t5.predict([req])
        assert a.quantiles.shape == (req.horizon, 3)
        # Exact: the samples depend only on the request and its seed.
        assert np.array_equal(a.quantiles, alone.quantiles)
        assert np.array_equal(a.median, alone.median)
        assert np.array_equal(b.quantiles, alone.quantiles)


def test_t5_samples_depend_on_the_seed(t5: ModelBackend) -> None:
    assert isinstance(t5, backends.T5Backend)
    ctx = series(80)
    s1, s1_again, s2 = t5.sample(
        [
            PreparedRequest(ctx, 16, LEVELS, seed=1),
            PreparedRequest(ctx, 16, LEVELS, seed=1),
            PreparedRequest(ctx, 16, LEVELS, seed=2),
        ]
    )
    assert s1.shape == (20, 16)
    assert torch.equal(s1, s1_again)
    assert not torch.equal(s1, s2)
    assert len({tuple(row.tolist()) for row in s1}) > 1  # the 20 samples of one request differ


def test_t5_quantiles_are_empirical_quantiles_of_the_samples(t5: ModelBackend) -> None:
    assert isinstance(t5, backends.T5Backend)
    req = PreparedRequest(series(80), 16, (0.1, 0.25, 0.5, 0.9), seed=5)
    (samples,) = t5.sample([req])
    (forecast,) = t5.predict([req])
    expected = torch.quantile(samples.T, q=torch.tensor([0.1, 0.25, 0.5, 0.9]), dim=-1).T
    assert np.array_equal(forecast.quantiles, expected.numpy())
    assert np.array_equal(forecast.median, torch.quantile(samples.T, 0.5, dim=-1).numpy())


def test_t5_with_top_k_1_equals_upstream_greedy_sampling(t5: ModelBackend) -> None:
    # With top_k=1 upstream's sampler has no randomness left: both must pick the same tokens.
    pipeline = pipeline_of(t5)
    greedy = backends.T5Backend(pipeline, t5.spec, top_k=1)
    ctx = series(100)
    (forecast,) = greedy.predict([PreparedRequest(ctx, 12, LEVELS, seed=3)])
    q, _ = pipeline.predict_quantiles(torch.tensor(ctx), prediction_length=12, quantile_levels=list(LEVELS), top_k=1)  # type: ignore[attr-defined]
    assert np.array_equal(forecast.quantiles, q[0].numpy())


def test_t5_chunks_by_whole_requests(t5: ModelBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    batch = _t5_batch()
    whole = t5.predict(batch)
    monkeypatch.setattr(backends, "MAX_ROWS", 40)  # two requests of 20 samples per generate call
    chunked = t5.predict(batch)
    for a, b in zip(whole, chunked, strict=True):
        assert np.array_equal(a.quantiles, b.quantiles)


def test_t5_refuses_horizons_beyond_the_model(t5: ModelBackend) -> None:
    with pytest.raises(errors.InvalidRequest, match="horizon"):
        t5.predict([PreparedRequest(series(50), 65, LEVELS)])


# -- the seeded sampler ---------------------------------------------------------------------


def test_uniform_is_a_pure_function_of_seed_sample_and_step() -> None:
    seeds = np.array([0, 0, 1, 2**64 - 1], dtype=np.uint64)
    ids = np.array([0, 1, 0, 5], dtype=np.uint64)
    u = backends.uniform(seeds, ids, 3)
    assert u.shape == (4,) and ((u >= 0) & (u < 1)).all()
    assert np.array_equal(u, backends.uniform(seeds, ids, 3))
    assert np.array_equal(u[2:], backends.uniform(seeds[2:], ids[2:], 3))  # rows are independent
    assert len(set(u.tolist())) == 4
    assert not np.array_equal(u, backends.uniform(seeds, ids, 4))


def test_inverse_cdf_draws_from_the_distribution() -> None:
    p = np.array([0.0, 0.5, 0.0, 0.3, 0.2])
    n = 20_000
    u = backends.uniform(np.zeros(n, dtype=np.uint64), np.arange(n, dtype=np.uint64), 0)
    tokens = backends.inverse_cdf(np.tile(p, (n, 1)), u)
    freq = np.bincount(tokens, minlength=5) / n
    np.testing.assert_allclose(freq, p, atol=0.015)
    assert freq[0] == 0 and freq[2] == 0
    edge = backends.inverse_cdf(np.array([[0.0, 1.0, 0.0], [0.5, 0.5, 0.0]]), np.array([0.0, 0.9999999999]))
    assert edge.tolist() == [1, 1]


def test_warp_logits_applies_top_k_top_p_temperature_and_bans_eos() -> None:
    scores = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0]])
    top2 = backends.warp_logits(scores, 1.0, 2, 1.0, None)
    assert torch.isinf(top2[0, :3]).all() and torch.equal(top2[0, 3:], scores[0, 3:])
    banned = backends.warp_logits(scores, 2.0, 0, 1.0, 4)
    assert banned[0, 4] == -math.inf and banned[0, 3] == 1.5
    nucleus = backends.warp_logits(scores, 1.0, 0, 0.5, None)
    assert torch.isfinite(nucleus[0]).tolist() == [False, False, False, False, True]


def test_seeded_sampler_returns_minus_inf_except_at_the_draw() -> None:
    sampler = backends.SeededSampler(np.array([1, 2], dtype=np.uint64), np.array([0, 0], dtype=np.uint64), top_k=3)
    scores = torch.randn(2, 10)
    out = sampler(torch.zeros((2, 1), dtype=torch.long), scores)
    assert (torch.isfinite(out).sum(dim=-1) == 1).all()
    top3 = torch.topk(scores, 3).indices
    for row in range(2):
        assert int(out[row].argmax()) in top3[row].tolist()


# -- stopping mid-batch -------------------------------------------------------------------------


class CountingSignal:
    """Stands in for the engine's StopSignal: counts checkpoints, stops after ``stop_after``."""

    def __init__(self, stop_after: int | None) -> None:
        self.calls = 0
        self.stop_after = stop_after

    def check(self) -> None:
        self.calls += 1
        if self.stop_after is not None and self.calls > self.stop_after:
            raise BatchStopped(EngineClosed("told to stop"))


@pytest.mark.parametrize("name", ["bolt", "c2", "t5"])
def test_every_backend_checks_for_a_stop_at_every_layer_and_stops_mid_pass(
    name: str, request: pytest.FixtureRequest
) -> None:
    backend = request.getfixturevalue(name)
    assert isinstance(backend, backends.TorchBackend)
    assert backend.checkpoints >= 2
    batch = [PreparedRequest(series(64, seed=i), 8, LEVELS) for i in range(3)]
    plain = backend.predict(batch)
    counting = CountingSignal(None)
    with watching(counting):  # type: ignore[arg-type]
        watched = backend.predict(batch)
    assert counting.calls >= backend.checkpoints  # at least one pass through every layer
    for a, b in zip(plain, watched, strict=True):  # the hooks compute nothing
        np.testing.assert_array_equal(a.quantiles, b.quantiles)
    stopping = CountingSignal(1)
    with watching(stopping), pytest.raises(BatchStopped, match="told to stop"):  # type: ignore[arg-type]
        backend.predict(batch)
    assert stopping.calls == 2  # stopped at the second layer, not at the end of the batch


# -- safetensors only ---------------------------------------------------------------------------


@pytest.mark.parametrize("pickle_name", ["pytorch_model.bin", "model.pt"])
def test_a_directory_with_only_pickle_weights_is_refused_naming_the_file(tmp_path: Path, pickle_name: str) -> None:
    source = materialize("tiny-chronos-bolt", dir=tmp_path / "ok")
    target = tmp_path / "pickled"
    target.mkdir()
    (target / "config.json").write_bytes((source / "config.json").read_bytes())
    from safetensors.torch import load_file

    torch.save(load_file(source / "model.safetensors"), target / pickle_name)
    with pytest.raises(errors.UnknownModel, match=f"pickle weights \\({pickle_name}\\)") as info:
        ChronosLoader().resolve(str(target))
    assert "safetensors only" in info.value.message
    # beside a safetensors file a stray pickle is never read (here it is not even a pickle)
    (target / "model.safetensors").write_bytes((source / "model.safetensors").read_bytes())
    (target / pickle_name).write_bytes(b"not a pickle: reading this would fail")
    assert ChronosLoader().load(ChronosLoader().resolve(str(target))).spec.family == CHRONOS_BOLT
