"""The published Chronos checkpoints and their architectures, plus tiny test configurations.

Each :class:`CatalogEntry` knows how to build the ``transformers`` config of its checkpoint,
so :func:`chronoserve.models.materialize` can write a random-initialised checkpoint with the
published architecture (no download), and :class:`chronoserve.models.ChronosLoader` can
describe a model without loading it. Importing this module does not import torch,
transformers or chronos: :meth:`CatalogEntry.build_config` and
:meth:`CatalogEntry.model_class` import them when called.

``num_params`` is the exact parameter count of the config built here (the test suite checks
it on torch's meta device); ``published_params`` is the figure the model card publishes,
rounded to ``published_params_rounding``.

One entry is not published anywhere: ``chronos-2-pm25``, a small Chronos-2 trained here from
random initialisation (``chronoserve models train``) whose checkpoint ships inside the package
(:attr:`CatalogEntry.shipped`). Its name loads those weights; nothing is downloaded or
materialised.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chronoserve import errors
from chronoserve.models.base import CHRONOS_2, CHRONOS_BOLT, CHRONOS_T5

#: Prefix of the names that ask for a random-initialised checkpoint: ``random/chronos-bolt-tiny``.
RANDOM_PREFIX = "random/"

BOLT_QUANTILES: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
CHRONOS_2_QUANTILES: tuple[float, ...] = (0.01, 0.05, *(round(0.05 * i, 2) for i in range(2, 19)), 0.95, 0.99)
#: Chronos-T5 samples; any level is an empirical quantile of the samples. These are the defaults.
T5_QUANTILES: tuple[float, ...] = BOLT_QUANTILES

_T5_SIZES: dict[str, tuple[int, int, int, int]] = {  # d_model, d_ff, layers, heads (t5-efficient-*)
    "tiny": (256, 1024, 4, 4),
    "mini": (384, 1536, 4, 8),
    "small": (512, 2048, 6, 8),
    "base": (768, 3072, 12, 12),
    "large": (1024, 4096, 24, 16),
}


@dataclass(frozen=True)
class CatalogEntry:
    """One checkpoint: its name, where it is published, and how to build its architecture."""

    name: str
    """Short name: ``chronos-bolt-tiny``. ``random/<name>`` asks for random weights."""
    family: str
    """``chronos-2``, ``chronos-bolt`` or ``chronos-t5`` (see :mod:`chronoserve.models.base`)."""
    hub_id: str | None
    """Hugging Face hub id (``amazon/chronos-bolt-tiny``); None for the test-only entries."""
    num_params: int
    """Exact parameter count of :meth:`build_config`'s architecture (checked by the tests)."""
    published_params: int | None
    """The parameter count the model card publishes (None for test-only entries)."""
    published_params_rounding: int
    """The unit ``published_params`` is rounded to (``8M`` is published to the nearest 1M)."""
    context_length: int
    max_horizon: int
    quantiles: tuple[float, ...]
    batch_patch: int | None
    """Chronos-2's output patch size; None for the other families."""
    checkpoint_dtype: str
    """The dtype the published weights are stored in, and the one :func:`materialize` writes."""
    test_only: bool = False
    """Tiny configurations like upstream's test dummies: fast, meaningless forecasts."""
    arch: Mapping[str, Any] = field(default_factory=dict)
    """Architecture hyper-parameters (``d_model``, ``d_ff``, ``num_layers``, ...)."""
    shipped: str | None = None
    """A checkpoint directory inside the package (relative to ``chronoserve/models``) holding
    weights trained here: the name loads them. None for the published and test entries."""
    description: str = ""
    """What the model is, for ``models list`` and ``GET /models``."""

    @property
    def trained_here(self) -> bool:
        """Weights trained by ``chronoserve models train`` and shipped with chronoserve."""
        return self.shipped is not None

    def shipped_dir(self) -> Path | None:
        """The absolute path of :attr:`shipped`, or None."""
        return None if self.shipped is None else Path(__file__).resolve().parent / self.shipped

    @property
    def supports_covariates(self) -> bool:
        return self.family == CHRONOS_2

    def params_tolerance(self, rel: float = 0.02) -> float:
        """How far a measured count may be from ``published_params``: ``rel`` or the rounding."""
        published = self.published_params or self.num_params
        return max(rel * published, self.published_params_rounding / 2)

    def build_config(self) -> Any:
        """The ``transformers`` config of this architecture (imports transformers and chronos)."""
        if self.family == CHRONOS_BOLT:
            return _bolt_config(self)
        if self.family == CHRONOS_2:
            return _chronos2_config(self)
        return _t5_config(self)

    def model_class(self) -> Any:
        """The ``transformers`` model class ``from_pretrained`` instantiates for this entry."""
        if self.family == CHRONOS_BOLT:
            from chronos.chronos_bolt import ChronosBoltModelForForecasting

            return ChronosBoltModelForForecasting
        if self.family == CHRONOS_2:
            from chronos.chronos2 import Chronos2Model

            return Chronos2Model
        from transformers import T5ForConditionalGeneration

        return T5ForConditionalGeneration


def _bolt_config(entry: CatalogEntry) -> Any:
    from transformers import T5Config

    a = entry.arch
    return T5Config(
        architectures=["ChronosBoltModelForForecasting"],
        chronos_pipeline_class="ChronosBoltPipeline",
        chronos_config={
            "context_length": entry.context_length,
            "input_patch_size": 16,
            "input_patch_stride": 16,
            "prediction_length": entry.max_horizon,
            "quantiles": list(entry.quantiles),
            "use_reg_token": True,
        },
        d_model=a["d_model"],
        d_ff=a["d_ff"],
        d_kv=a["d_kv"],
        num_layers=a["num_layers"],
        num_decoder_layers=a["num_layers"],
        num_heads=a["num_heads"],
        feed_forward_proj="relu",
        vocab_size=2,
        pad_token_id=0,
        decoder_start_token_id=0,
        eos_token_id=1,
        reg_token_id=1,
        initializer_factor=0.05,
        is_encoder_decoder=True,
    )


def chronos2_config(
    *,
    d_model: int,
    d_kv: int,
    d_ff: int,
    num_layers: int,
    num_heads: int,
    context_length: int,
    max_horizon: int,
    quantiles: Sequence[float],
    patch: int = 16,
    dropout: float = 0.1,
) -> Any:
    """A ``Chronos2CoreConfig`` with the published Chronos-2 layout (relu feed-forward, RoPE,
    patches of ``patch`` in and out, register token, arcsinh scaling) at the given sizes: the
    catalog's entries and :mod:`chronoserve.models.train`'s models are both built from it.
    """
    from chronos.chronos2.config import Chronos2CoreConfig

    return Chronos2CoreConfig(
        d_model=d_model,
        d_kv=d_kv,
        d_ff=d_ff,
        num_layers=num_layers,
        num_heads=num_heads,
        dropout_rate=dropout,
        initializer_factor=0.05,
        feed_forward_proj="relu",
        rope_theta=10000.0,
        architectures=["Chronos2Model"],
        chronos_pipeline_class="Chronos2Pipeline",
        chronos_config={
            "context_length": context_length,
            "input_patch_size": patch,
            "input_patch_stride": patch,
            "output_patch_size": patch,
            "max_output_patches": math.ceil(max_horizon / patch),
            "quantiles": list(quantiles),
            "use_reg_token": True,
            "use_arcsinh": True,
            "time_encoding_scale": context_length,
        },
    )


def _chronos2_config(entry: CatalogEntry) -> Any:
    a = entry.arch
    assert entry.batch_patch is not None
    return chronos2_config(
        d_model=a["d_model"],
        d_kv=a["d_kv"],
        d_ff=a["d_ff"],
        num_layers=a["num_layers"],
        num_heads=a["num_heads"],
        context_length=entry.context_length,
        max_horizon=entry.max_horizon,
        quantiles=entry.quantiles,
        patch=entry.batch_patch,
    )


def _t5_config(entry: CatalogEntry) -> Any:
    from transformers import T5Config

    a = entry.arch
    n_tokens = a["vocab_size"]
    return T5Config(
        architectures=["T5ForConditionalGeneration"],
        chronos_pipeline_class="ChronosPipeline",
        chronos_config={
            "tokenizer_class": "MeanScaleUniformBins",
            "tokenizer_kwargs": {"low_limit": -15.0, "high_limit": 15.0},
            "n_tokens": n_tokens,
            "n_special_tokens": 2,
            "pad_token_id": 0,
            "eos_token_id": 1,
            "use_eos_token": True,
            "model_type": "seq2seq",
            "context_length": entry.context_length,
            "prediction_length": entry.max_horizon,
            "num_samples": 20,
            "temperature": 1.0,
            "top_k": 50,
            "top_p": 1.0,
        },
        vocab_size=n_tokens,
        d_model=a["d_model"],
        d_ff=a["d_ff"],
        d_kv=a["d_kv"],
        num_layers=a["num_layers"],
        num_decoder_layers=a["num_decoder_layers"],
        num_heads=a["num_heads"],
        feed_forward_proj="relu",
        dropout_rate=0.1,
        initializer_factor=a.get("initializer_factor", 1.0),
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
        is_encoder_decoder=True,
        n_positions=512,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        tie_word_embeddings=True,
        use_cache=True,
    )


def _bolt(size: str, num_params: int, published: int, rounding: int) -> CatalogEntry:
    d_model, d_ff, layers, heads = _T5_SIZES[size]
    return CatalogEntry(
        name=f"chronos-bolt-{size}",
        family=CHRONOS_BOLT,
        hub_id=f"amazon/chronos-bolt-{size}",
        num_params=num_params,
        published_params=published,
        published_params_rounding=rounding,
        context_length=2048,
        max_horizon=64,
        quantiles=BOLT_QUANTILES,
        batch_patch=None,
        checkpoint_dtype="float32",
        arch={"d_model": d_model, "d_ff": d_ff, "d_kv": 64, "num_layers": layers, "num_heads": heads},
    )


def _t5(size: str, num_params: int, published: int, rounding: int) -> CatalogEntry:
    d_model, d_ff, layers, heads = _T5_SIZES[size]
    return CatalogEntry(
        name=f"chronos-t5-{size}",
        family=CHRONOS_T5,
        hub_id=f"amazon/chronos-t5-{size}",
        num_params=num_params,
        published_params=published,
        published_params_rounding=rounding,
        context_length=512,
        max_horizon=64,
        quantiles=T5_QUANTILES,
        batch_patch=None,
        checkpoint_dtype="bfloat16",
        arch={
            "d_model": d_model,
            "d_ff": d_ff,
            "d_kv": 64,
            "num_layers": layers,
            "num_decoder_layers": layers,
            "num_heads": heads,
            "vocab_size": 4096,
            "initializer_factor": 0.05,
        },
    )


_ENTRIES: tuple[CatalogEntry, ...] = (
    CatalogEntry(
        name="chronos-2",
        family=CHRONOS_2,
        hub_id="amazon/chronos-2",
        num_params=119_477_664,
        published_params=119_500_000,
        published_params_rounding=100_000,
        context_length=8192,
        max_horizon=1024,
        quantiles=CHRONOS_2_QUANTILES,
        batch_patch=16,
        checkpoint_dtype="float32",
        arch={"d_model": 768, "d_ff": 3072, "d_kv": 64, "num_layers": 12, "num_heads": 12},
    ),
    _bolt("tiny", 8_652_672, 8_650_000, 10_000),
    _bolt("mini", 21_236_096, 21_200_000, 100_000),
    _bolt("small", 47_718_016, 47_700_000, 100_000),
    _bolt("base", 205_292_928, 205_000_000, 1_000_000),
    _t5("tiny", 8_394_496, 8_000_000, 1_000_000),
    _t5("mini", 20_456_192, 20_000_000, 1_000_000),
    _t5("small", 46_154_240, 46_000_000, 1_000_000),
    _t5("base", 201_374_976, 200_000_000, 10_000_000),
    _t5("large", 708_963_328, 710_000_000, 10_000_000),
    # Tiny test configurations, like upstream's test/dummy-* checkpoints (T5 in fp32, not bf16).
    CatalogEntry(
        name="tiny-chronos-bolt",
        family=CHRONOS_BOLT,
        hub_id=None,
        num_params=18_656,
        published_params=None,
        published_params_rounding=0,
        context_length=512,
        max_horizon=64,
        quantiles=BOLT_QUANTILES,
        batch_patch=None,
        checkpoint_dtype="float32",
        test_only=True,
        arch={"d_model": 8, "d_ff": 8, "d_kv": 4, "num_layers": 4, "num_heads": 4},
    ),
    CatalogEntry(
        name="tiny-chronos-2",
        family=CHRONOS_2,
        hub_id=None,
        num_params=7_954,
        published_params=None,
        published_params_rounding=0,
        context_length=8192,
        max_horizon=1024,
        quantiles=CHRONOS_2_QUANTILES,
        batch_patch=16,
        checkpoint_dtype="float32",
        test_only=True,
        arch={"d_model": 6, "d_ff": 8, "d_kv": 4, "num_layers": 2, "num_heads": 4},
    ),
    CatalogEntry(
        name="tiny-chronos-t5",
        family=CHRONOS_T5,
        hub_id=None,
        num_params=23_040,
        published_params=None,
        published_params_rounding=0,
        context_length=512,
        max_horizon=64,
        quantiles=T5_QUANTILES,
        batch_patch=None,
        checkpoint_dtype="float32",
        test_only=True,
        arch={
            "d_model": 64,
            "d_ff": 32,
            "d_kv": 16,
            "num_layers": 1,
            "num_decoder_layers": 1,
            "num_heads": 1,
            "vocab_size": 32,
            "initializer_factor": 1.0,
        },
    ),
)

#: The small Chronos-2 trained here on Beijing PM2.5 (see ``pretrained/chronos-2-pm25/README.md``).
PM25_MODEL = "chronos-2-pm25"
#: The model of ``serve``, ``forecast``, ``eval`` and HTTP requests that name none: the one
#: defined here, imported everywhere else.
DEFAULT_MODEL = PM25_MODEL

_TRAINED: tuple[CatalogEntry, ...] = (
    CatalogEntry(
        name=PM25_MODEL,
        family=CHRONOS_2,
        hub_id=None,
        num_params=805_792,
        published_params=None,
        published_params_rounding=0,
        context_length=512,
        max_horizon=48,
        quantiles=CHRONOS_2_QUANTILES,
        batch_patch=16,
        checkpoint_dtype="float32",
        arch={"d_model": 128, "d_ff": 256, "d_kv": 32, "num_layers": 3, "num_heads": 4},
        shipped=f"pretrained/{PM25_MODEL}",
        description=(
            "TRAINED HERE, not a published model: a small Chronos-2 (0.8M parameters) trained by "
            "`chronoserve models train --seed 0` from random initialisation (3000 steps, 12 min on 2 CPU "
            "cores) on hourly Beijing PM2.5 (12 sites, 2013-03-01 to 2016-06-30; July-December 2016 never "
            "seen), with humidity, temperature and wind as covariates; horizons up to 48 h. See its "
            "training.json and docs/training.md."
        ),
    ),
)

#: Every entry by short name: the one trained here, the published checkpoints, the test-only ones.
CATALOG: Mapping[str, CatalogEntry] = {e.name: e for e in (*_TRAINED, *_ENTRIES)}
_BY_HUB_ID: Mapping[str, CatalogEntry] = {e.hub_id: e for e in _ENTRIES if e.hub_id}


#: The largest seed a ``random/<name>@<seed>`` may name.
MAX_RANDOM_SEED = 2**31 - 1


def random_seed(name: str) -> tuple[str, int]:
    """Split ``random/<name>@<seed>`` into ``random/<name>`` and its seed (0 without ``@``).

    Each seed is another random checkpoint of the same architecture (its own directory in the
    cache), so ``random/chronos-bolt-tiny@1`` and ``@2`` are two models: what a multi-model
    trace needs. A suffix that is not a decimal seed up to :data:`MAX_RANDOM_SEED`, or a name
    without ``random/``, is left as it is (and is then no catalog name).
    """
    key = name.strip()
    base, at, seed = key.rpartition("@")
    if not at or not key.startswith(RANDOM_PREFIX) or not seed.isdecimal() or not seed.isascii() or len(seed) > 10:
        return key, 0
    value = int(seed)
    return (base, value) if value <= MAX_RANDOM_SEED else (key, 0)


def find_entry(name: str) -> CatalogEntry | None:
    """The entry called ``name`` (short name or hub id, with or without ``random/``, and for
    ``random/`` with or without an ``@<seed>``), or None."""
    key, _ = random_seed(name)
    if key.startswith(RANDOM_PREFIX):
        key = key[len(RANDOM_PREFIX) :]
    return CATALOG.get(key) or _BY_HUB_ID.get(key)


def catalog_entry(name: str) -> CatalogEntry:
    """The entry called ``name``: ``chronos-bolt-tiny``, ``amazon/chronos-bolt-tiny`` or
    ``random/chronos-bolt-tiny``. Raises :class:`~chronoserve.errors.UnknownModel` naming it."""
    entry = find_entry(name)
    if entry is None:
        known = ", ".join(CATALOG)
        raise errors.UnknownModel(name, f"unknown model {name!r}: not in the catalog (known: {known})")
    return entry
