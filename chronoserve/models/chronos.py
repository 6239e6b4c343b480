"""The three torch backends: Chronos-Bolt, Chronos-2 and Chronos-T5.

Each backend feeds tensors straight to the pipeline's inner model (no DataFrames, no
``predict_df``) under ``torch.inference_mode()`` and returns one :class:`BackendForecast` per request.

- **Bolt** NaN-left-pads the contexts to the longest in the batch and runs the model in chunks
  of at most :data:`MAX_ROWS` rows. A request alone gives upstream ``predict_quantiles``'s
  answer bit for bit, and the first steps of a longer horizon are exactly a shorter forecast.
  Inside a batch of other requests it agrees with itself alone to float32 rounding (measured:
  at most 2e-6 on values near 10), not always bit for bit: ``InstanceNorm``'s ``nanmean`` over a
  NaN-padded row, and the decoder's GEMMs (whose row count is the batch size), round
  differently with the batch shape.
- **Chronos-2** builds the rows the way ``Chronos2Pipeline._predict_step`` does (target,
  past-only covariates, known-future covariates; one group id per request) and runs each
  number of output patches separately (the engine batches one ``ceil(H / 16)`` at a time).
  Alone it equals upstream ``predict_quantiles`` (measured: 0.0); in a batch, as for Bolt.
- **T5** samples with its own seeded sampler: each request's samples depend only on the
  request and its ``seed`` (a counter-based hash of seed, sample index and step), never on the
  global RNG or on the other requests in the batch (upstream issues #126, #262). Each request is
  tokenised alone, so its scale is exact; a sampled token could only change if batching moved a
  logit across a CDF boundary, which float32 rounding makes vanishingly rare.

Nothing process-global (threads, RNG, grad mode) is changed by ``predict``.

The pre- and post-processing of Bolt and Chronos-2 (padding, rows, chunks, quantiles) lives in
:class:`BoltForecaster` and :class:`Chronos2Forecaster`, which call one ``_run`` per forward
pass; :class:`BoltBackend` and :class:`Chronos2Backend` run it with torch, and
:mod:`chronoserve.models.onnx` with ONNX Runtime, so both give answers from the same arrays.

Every backend can be stopped mid-batch: a forward pre-hook on each layer of the model calls
:func:`chronoserve.stopping.checkpoint`, which raises once the engine has told the batch to
stop (its clients left, it ran past ``max_inference_seconds``, or the engine closed). The hooks
compute nothing, so answers are unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from chronoserve import errors
from chronoserve.models.base import (
    CHRONOS_2,
    CHRONOS_BOLT,
    CHRONOS_T5,
    BackendForecast,
    FloatArray,
    ModelBackend,
    ModelSpec,
    PreparedRequest,
    interpolate_quantiles,
)
from chronoserve.stopping import checkpoint

#: The most rows (series, including Chronos-2's covariate rows and T5's samples) per forward pass.
MAX_ROWS = 256

_U64 = np.uint64
_MASK64 = (1 << 64) - 1


class ChronosBackend(ModelBackend):
    """What every Chronos backend shares, whatever runs the model: checks and contexts.

    The family classes (:class:`BoltForecaster`, :class:`Chronos2Forecaster`) hold the pre- and
    post-processing and call one hook per forward pass (``_run``); the runtime classes
    (:class:`TorchBackend` here, ``OnnxBackend`` in :mod:`chronoserve.models.onnx`) implement it.
    So the torch and ONNX Runtime backends of a family turn requests into the same arrays and
    answers into the same forecasts.
    """

    family: str = ""

    def __init__(self, pipeline: Any, spec: ModelSpec) -> None:
        self.spec = spec
        self.dtype = str(spec.extra.get("dtype", "float32"))
        self.context_length = int(pipeline.model_context_length)
        self._configure(pipeline)

    def _configure(self, pipeline: Any) -> None:
        """Read what the family needs from the pipeline (extended by the family classes)."""

    @property
    def is_closed(self) -> bool:
        raise NotImplementedError

    def _check(self, batch: Sequence[PreparedRequest], max_horizon: int) -> None:
        if self.is_closed:
            raise RuntimeError(f"model {self.spec.name!r} is closed")
        for req in batch:
            if not 1 <= req.horizon <= max_horizon:
                raise errors.InvalidRequest(
                    "horizon", f"must be between 1 and {max_horizon} for {self.spec.name!r}, got {req.horizon}"
                )
            if not req.quantile_levels:
                raise errors.InvalidRequest("quantile_levels", "must not be empty")

    def _context(self, req: PreparedRequest) -> FloatArray:
        ctx = np.asarray(req.context, dtype=np.float32).reshape(-1)
        return ctx[-self.context_length :] if len(ctx) > self.context_length else ctx


class TorchBackend(ChronosBackend):
    """A Chronos backend that runs the pipeline's inner torch model (eager PyTorch)."""

    backend = "torch"

    def __init__(self, pipeline: Any, spec: ModelSpec) -> None:
        super().__init__(pipeline, spec)
        self.pipeline = pipeline
        self.model = pipeline.inner_model
        self.device = self.model.device
        self.nbytes = _module_nbytes(self.model)
        self.checkpoints = install_checkpoints(self.model)

    @property
    def is_closed(self) -> bool:
        return self.model is None

    def close(self) -> None:
        self.pipeline = None
        self.model = None

    def quantize_int8(self) -> None:
        """Quantise the model's ``Linear`` layers to int8 in place (dynamic quantisation).

        ``torch.ao.quantization.quantize_dynamic``: int8 weights, activations quantised per
        batch at run time; the rest (embeddings, norms) stays float32. Answers change (see
        docs/backends.md for how much); the layer hooks stay, so batches still stop mid-pass.
        """
        import warnings

        from torch.ao.quantization import quantize_dynamic

        with warnings.catch_warnings():
            # torch.ao.quantization and quantised tensors are deprecated (for torchao); they still run.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", UserWarning)
            quantize_dynamic(self.model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
        self.model.eval()
        self.nbytes = _module_nbytes(self.model)
        self.dtype = "int8"


class BoltForecaster(ChronosBackend):
    """Chronos-Bolt: one forward pass gives every horizon up to ``prediction_length``."""

    family = CHRONOS_BOLT

    def _configure(self, pipeline: Any) -> None:
        super()._configure(pipeline)
        self.native_levels = tuple(float(q) for q in pipeline.quantiles)
        self.prediction_length = int(pipeline.model_prediction_length)

    def predict(self, batch: Sequence[PreparedRequest]) -> list[BackendForecast]:
        self._check(batch, self.prediction_length)
        if not batch:
            return []
        context = left_pad([self._context(r) for r in batch])
        preds = np.empty((len(batch), len(self.native_levels), self.prediction_length), dtype=np.float32)
        for start in range(0, len(batch), MAX_ROWS):
            preds[start : start + MAX_ROWS] = self._run(context[start : start + MAX_ROWS])
        return [
            _quantile_forecast(self.native_levels, preds[i, :, : r.horizon].T, r.quantile_levels)
            for i, r in enumerate(batch)
        ]

    def _run(self, context: FloatArray) -> FloatArray:
        """One forward pass: ``(rows, quantiles, prediction_length)`` for NaN-left-padded ``(rows, T)``."""
        raise NotImplementedError


class BoltBackend(BoltForecaster, TorchBackend):
    """Chronos-Bolt on torch."""

    def _run(self, context: FloatArray) -> FloatArray:
        with torch.inference_mode():
            chunk = torch.from_numpy(context).to(self.device)
            out: FloatArray = self.model(context=chunk).quantile_preds.to(chunk).cpu().numpy()
        return out


class Chronos2Forecaster(ChronosBackend):
    """Chronos-2: targets with past-only and known-future covariates, one group per request."""

    family = CHRONOS_2

    def _configure(self, pipeline: Any) -> None:
        super()._configure(pipeline)
        self.native_levels = tuple(float(q) for q in pipeline.quantiles)
        self.patch = int(pipeline.model_output_patch_size)
        self.max_horizon = int(pipeline.max_output_patches) * self.patch

    def predict(self, batch: Sequence[PreparedRequest]) -> list[BackendForecast]:
        self._check(batch, self.max_horizon)
        results: list[BackendForecast | None] = [None] * len(batch)
        # Requests with different numbers of output patches never share a forward pass: the
        # number changes the forecast. The engine sends one number per batch; this is a guard.
        by_patches: dict[int, list[int]] = {}
        for i, req in enumerate(batch):
            by_patches.setdefault(math.ceil(req.horizon / self.patch), []).append(i)
        for n_patches, indices in by_patches.items():
            rows = [self._rows(batch[i], n_patches) for i in indices]
            for chunk in _chunks([len(r[0]) for r in rows], MAX_ROWS):
                preds = self._forward([rows[j] for j in chunk], n_patches)
                for j, target_row in zip(chunk, preds, strict=True):
                    req = batch[indices[j]]
                    results[indices[j]] = _quantile_forecast(
                        self.native_levels, target_row[:, : req.horizon].T, req.quantile_levels
                    )
        return [r for r in results if r is not None]

    def _rows(self, req: PreparedRequest, n_patches: int) -> tuple[list[FloatArray], FloatArray]:
        """The request's context rows (target, past-only, known-future) and future covariates."""
        target = np.asarray(req.context, dtype=np.float32).reshape(-1)
        length = len(target)
        past = req.past_covariates or {}
        future = req.future_covariates or {}
        past_only = sorted(k for k in past if k not in future)
        known = sorted(future)
        context_rows = [target]
        for name in (*past_only, *known):
            if name in past:
                row = np.asarray(past[name], dtype=np.float32).reshape(-1)
                if len(row) != length:
                    raise errors.InvalidRequest(
                        f"past_covariates.{name}", f"has {len(row)} values, the context has {length}"
                    )
            else:  # a known-future covariate without past values
                row = np.full(length, np.nan, dtype=np.float32)
            context_rows.append(row)
        if length > self.context_length:
            context_rows = [row[-self.context_length :] for row in context_rows]
        future_rows = np.full((len(context_rows), n_patches * self.patch), np.nan, dtype=np.float32)
        for k, name in enumerate(known):
            values = np.asarray(future[name], dtype=np.float32).reshape(-1)
            if len(values) != req.horizon:
                raise errors.InvalidRequest(
                    f"future_covariates.{name}", f"has {len(values)} values, the horizon is {req.horizon}"
                )
            future_rows[1 + len(past_only) + k, : req.horizon] = values
        return context_rows, future_rows

    def _forward(self, rows: Sequence[tuple[list[FloatArray], FloatArray]], n_patches: int) -> list[FloatArray]:
        """Run one chunk of requests; return each request's target row, ``(Q, n_patches * patch)``."""
        context = left_pad([row for ctx_rows, _ in rows for row in ctx_rows])
        future = np.concatenate([fut for _, fut in rows], axis=0)
        group_ids = np.concatenate([np.full(len(ctx_rows), g, dtype=np.int64) for g, (ctx_rows, _) in enumerate(rows)])
        preds = self._run(context, group_ids, future, n_patches)
        starts = np.cumsum([0] + [len(ctx_rows) for ctx_rows, _ in rows])[:-1]
        return [preds[int(s)] for s in starts]

    def _run(
        self, context: FloatArray, group_ids: npt.NDArray[np.int64], future: FloatArray, n_patches: int
    ) -> FloatArray:
        """One forward pass: ``(rows, quantiles, n_patches * patch)`` for the rows of ``context``."""
        raise NotImplementedError


class Chronos2Backend(Chronos2Forecaster, TorchBackend):
    """Chronos-2 on torch."""

    def _run(
        self, context: FloatArray, group_ids: npt.NDArray[np.int64], future: FloatArray, n_patches: int
    ) -> FloatArray:
        with torch.inference_mode():
            context_t = torch.from_numpy(context).to(self.device)
            out = self.model(
                context=context_t,
                group_ids=torch.from_numpy(group_ids).to(self.device),
                future_covariates=torch.from_numpy(future).to(self.device),
                num_output_patches=n_patches,
            ).quantile_preds.to(context_t)
            preds: FloatArray = out.cpu().numpy()
        return preds


class T5Backend(TorchBackend):
    """Chronos-T5: tokenised context, seeded sampling, empirical quantiles over the samples."""

    family = CHRONOS_T5

    def __init__(
        self,
        pipeline: Any,
        spec: ModelSpec,
        *,
        num_samples: int | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
    ) -> None:
        super().__init__(pipeline, spec)
        self.tokenizer = pipeline.tokenizer
        config = pipeline.model.config  # chronos.ChronosConfig
        if config.model_type not in ("seq2seq", "causal"):
            raise ValueError(f"unsupported Chronos model_type {config.model_type!r}")
        self.seq2seq = config.model_type == "seq2seq"
        self.eos_token_id = int(config.eos_token_id)
        self.pad_token_id = int(config.pad_token_id)
        self.prediction_length = int(config.prediction_length)
        self.num_samples = int(num_samples if num_samples is not None else config.num_samples)
        self.temperature = float(temperature if temperature is not None else config.temperature)
        self.top_k = int(top_k if top_k is not None else config.top_k)
        self.top_p = float(top_p if top_p is not None else config.top_p)
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be at least 1, not {self.num_samples}")

    def predict(self, batch: Sequence[PreparedRequest]) -> list[BackendForecast]:
        self._check(batch, self.prediction_length)
        results: list[BackendForecast] = []
        per_chunk = max(1, MAX_ROWS // self.num_samples)
        with torch.inference_mode():
            for start in range(0, len(batch), per_chunk):
                chunk = batch[start : start + per_chunk]
                samples = self._sample(chunk)
                for req, s in zip(chunk, samples, strict=True):
                    results.append(_sample_forecast(s[:, : req.horizon], req.quantile_levels))
        return results

    def sample(self, batch: Sequence[PreparedRequest]) -> list[torch.Tensor]:
        """Draw ``num_samples`` sample paths per request: one ``(S, H_max)`` float32 tensor each."""
        with torch.inference_mode():
            return self._sample(batch)

    def _sample(self, batch: Sequence[PreparedRequest]) -> list[torch.Tensor]:
        from transformers import GenerationConfig, LogitsProcessorList
        from transformers.modeling_outputs import BaseModelOutput

        n, s = len(batch), self.num_samples
        horizon = max(r.horizon for r in batch)
        # Tokenise each request alone, then left-pad the tokens: the tokenizer's mean scale over a
        # NaN-padded row would round differently from the request's own (by an ulp or so).
        encoded = [self.tokenizer.context_input_transform(torch.from_numpy(self._context(r))[None]) for r in batch]
        width = max(ids.shape[-1] for ids, _, _ in encoded)
        token_ids = torch.full((n, width), self.pad_token_id, dtype=encoded[0][0].dtype)
        attention_mask = torch.zeros((n, width), dtype=encoded[0][1].dtype)
        for i, (ids, mask, _) in enumerate(encoded):
            token_ids[i, width - ids.shape[-1] :] = ids[0]
            attention_mask[i, width - mask.shape[-1] :] = mask[0]
        scale = torch.cat([sc for _, _, sc in encoded])
        token_ids = token_ids.to(self.device)
        attention_mask = attention_mask.to(self.device)
        inputs: dict[str, Any]
        if self.seq2seq:
            # Encode each request once and repeat the encoder states for its samples, as
            # generate(num_return_sequences=S) does: encoding S copies would cost S times as much.
            encoder_outputs = self.model.get_encoder()(
                input_ids=token_ids, attention_mask=attention_mask, return_dict=True
            )
            inputs = {
                "encoder_outputs": BaseModelOutput(
                    last_hidden_state=encoder_outputs.last_hidden_state.repeat_interleave(s, dim=0)
                )
            }
        else:
            inputs = {"input_ids": token_ids.repeat_interleave(s, dim=0)}
        sampler = SeededSampler(
            seeds=np.repeat(np.array([r.seed & _MASK64 for r in batch], dtype=_U64), s),
            sample_ids=np.tile(np.arange(s, dtype=_U64), n),
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            banned_token_id=self.eos_token_id,
        )
        generation_config = GenerationConfig(
            min_new_tokens=horizon,
            max_new_tokens=horizon,
            do_sample=False,
            num_beams=1,
            num_return_sequences=1,
            eos_token_id=self.eos_token_id,
            pad_token_id=self.pad_token_id,
            decoder_start_token_id=getattr(self.model.config, "decoder_start_token_id", None),
        )
        preds = self.model.generate(
            **inputs,
            attention_mask=attention_mask.repeat_interleave(s, dim=0),
            generation_config=generation_config,
            logits_processor=LogitsProcessorList([sampler]),
        )
        preds = preds[..., -horizon:]  # drop the decoder start token (seq2seq) or the prompt (causal)
        samples = self.tokenizer.output_transform(preds.reshape(n, s, horizon).cpu(), scale)
        return [samples[i].to(torch.float32) for i in range(n)]


class SeededSampler:
    """A logits processor that samples one token per row from a counter-based random stream.

    For row ``r`` at decoding step ``t`` it applies temperature, top-k and top-p the way
    ``transformers``' warpers do, bans ``banned_token_id`` (EOS: upstream generates with
    ``min_new_tokens = max_new_tokens``), and draws the token by inverse CDF with the uniform
    ``uniform(seeds[r], sample_ids[r], t)``. It returns scores that are ``-inf`` except at the
    drawn token, so greedy decoding picks it. Rows never influence each other.
    """

    def __init__(
        self,
        seeds: npt.NDArray[np.uint64],
        sample_ids: npt.NDArray[np.uint64],
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        banned_token_id: int | None = None,
    ) -> None:
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, not {temperature}")
        self.seeds = seeds
        self.sample_ids = sample_ids
        self.temperature = temperature
        self.top_k = top_k
        self.top_p = top_p
        self.banned_token_id = banned_token_id
        self._start: int | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self._start is None:
            self._start = int(input_ids.shape[-1])
        step = int(input_ids.shape[-1]) - self._start
        logits = warp_logits(scores, self.temperature, self.top_k, self.top_p, self.banned_token_id)
        probs = torch.softmax(logits, dim=-1).to(torch.float64).cpu().numpy()
        u = uniform(self.seeds, self.sample_ids, step)
        tokens = inverse_cdf(probs, u)
        out = torch.full_like(scores, -math.inf)
        out[torch.arange(out.shape[0], device=out.device), torch.from_numpy(tokens).to(out.device)] = 0.0
        return out


def warp_logits(
    scores: torch.Tensor, temperature: float, top_k: int, top_p: float, banned_token_id: int | None
) -> torch.Tensor:
    """Temperature, then top-k, then top-p, as ``transformers``' logits warpers apply them."""
    logits = scores.to(torch.float32)
    if banned_token_id is not None:
        logits = logits.clone()
        logits[:, banned_token_id] = -math.inf
    if temperature != 1.0:
        logits = logits / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    if top_p < 1.0:
        sorted_logits, sorted_idx = torch.sort(logits, descending=False, dim=-1)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        remove_sorted = cum <= (1 - top_p)
        remove_sorted[..., -1:] = False
        remove = remove_sorted.scatter(1, sorted_idx, remove_sorted)
        logits = logits.masked_fill(remove, -math.inf)
    return logits


def splitmix64(x: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """SplitMix64's step and finaliser, elementwise on uint64 (wrapping arithmetic)."""
    z = x + _U64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> _U64(27))) * _U64(0x94D049BB133111EB)
    out: npt.NDArray[np.uint64] = z ^ (z >> _U64(31))
    return out


def uniform(seeds: npt.NDArray[np.uint64], sample_ids: npt.NDArray[np.uint64], step: int) -> npt.NDArray[np.float64]:
    """One uniform in [0, 1) per row, a pure function of (seed, sample index, step)."""
    with np.errstate(over="ignore"):
        h = splitmix64(splitmix64(splitmix64(seeds) ^ sample_ids) ^ _U64(step & _MASK64))
    out: npt.NDArray[np.float64] = (h >> _U64(11)).astype(np.float64) * (1.0 / (1 << 53))
    return out


def inverse_cdf(probs: npt.NDArray[np.float64], u: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    """The token of each row whose CDF interval holds ``u * total``; never a zero-probability one."""
    cdf = np.cumsum(probs, axis=-1)
    total = cdf[:, -1]
    tokens = (cdf <= (u * total)[:, None]).sum(axis=-1).astype(np.int64)
    tokens = np.minimum(tokens, probs.shape[-1] - 1)
    rows = np.arange(len(tokens))
    last_nonzero = probs.shape[-1] - 1 - np.argmax(probs[:, ::-1] > 0, axis=-1)
    tokens = np.where(probs[rows, tokens] > 0, tokens, last_nonzero)
    bad = ~np.isfinite(total) | (total <= 0)
    if bad.any():
        tokens[bad] = np.argmax(np.nan_to_num(probs[bad], nan=-1.0), axis=-1)
    out: npt.NDArray[np.int64] = tokens.astype(np.int64)
    return out


def left_pad(rows: Sequence[FloatArray]) -> FloatArray:
    """Stack 1-D float32 rows into ``(len(rows), longest)``, NaN-padding each on the left."""
    width = max(1, max((len(r) for r in rows), default=1))
    out = np.full((len(rows), width), np.nan, dtype=np.float32)
    for i, row in enumerate(rows):
        if len(row):
            out[i, width - len(row) :] = row
    return out


def _chunks(sizes: Sequence[int], cap: int) -> Iterator[list[int]]:
    """Consecutive index groups whose sizes sum to at most ``cap`` (an oversized item goes alone)."""
    chunk: list[int] = []
    total = 0
    for i, size in enumerate(sizes):
        if chunk and total + size > cap:
            yield chunk
            chunk, total = [], 0
        chunk.append(i)
        total += size
    if chunk:
        yield chunk


def _quantile_forecast(native_levels: Sequence[float], native: FloatArray, levels: Sequence[float]) -> BackendForecast:
    """``native`` is ``(H, len(native_levels))``; pick or interpolate ``levels``, and the median.

    Levels on the native grid are copied; others are interpolated linearly between the two
    nearest native levels (:func:`~chronoserve.models.base.interpolate_quantiles`). That equals
    upstream wherever the model's quantiles do not cross; where they do (random weights),
    upstream Bolt's ``torch.quantile`` over the padded grid sorts them first and differs.
    """
    native = np.ascontiguousarray(native, dtype=np.float32)
    return BackendForecast(
        quantiles=interpolate_quantiles(native_levels, native, levels),
        median=np.ascontiguousarray(interpolate_quantiles(native_levels, native, [0.5])[:, 0]),
    )


def _sample_forecast(samples: torch.Tensor, levels: Sequence[float]) -> BackendForecast:
    """Empirical quantiles over samples ``(S, H)``, like upstream ``ChronosPipeline.predict_quantiles``."""
    per_step = samples.T.contiguous()  # (H, S)
    q = torch.quantile(per_step, q=torch.tensor(list(levels), dtype=per_step.dtype), dim=-1)  # (Q, H)
    median = torch.quantile(per_step, q=0.5, dim=-1)
    return BackendForecast(
        quantiles=np.ascontiguousarray(q.T.numpy(), dtype=np.float32),
        median=np.ascontiguousarray(median.numpy(), dtype=np.float32),
    )


def _checkpoint_hook(module: Any, args: Any) -> None:
    checkpoint()


def install_checkpoints(model: Any) -> int:
    """Register :func:`~chronoserve.stopping.checkpoint` before every layer of ``model``.

    Layers are the members of its outermost ``ModuleList``s (the encoder's and decoder's
    blocks); lists nested inside a hooked layer are left alone, so a pass costs one Python
    call per block. Returns the number of hooks.
    """
    hooked: set[int] = set()
    count = 0
    for module in model.modules():
        if id(module) in hooked or not isinstance(module, torch.nn.ModuleList):
            continue
        for layer in module:
            layer.register_forward_pre_hook(_checkpoint_hook)
            hooked.update(id(m) for m in layer.modules())
            count += 1
    return count


def _module_nbytes(module: Any) -> int:
    """Parameters and buffers, and the packed int8 weights of dynamically quantised layers
    (which are neither: ``torch.ao.nn.quantized.dynamic.Linear`` keeps them in ``_packed_params``)."""
    params = sum(p.numel() * p.element_size() for p in module.parameters())
    buffers = sum(b.numel() * b.element_size() for b in module.buffers())
    packed = 0
    for layer in module.modules():
        if hasattr(layer, "_packed_params") and callable(getattr(layer, "weight", None)):
            for tensor in (layer.weight(), layer.bias()):
                if tensor is not None:
                    packed += tensor.numel() * tensor.element_size()
    return int(params + buffers + packed)


def wrap_pipeline(pipeline: Any, spec: ModelSpec) -> TorchBackend:
    """Put the pipeline's inner model in eval mode and wrap it in the backend of its family."""
    from chronos import Chronos2Pipeline, ChronosBoltPipeline, ChronosPipeline

    backend_class: type[TorchBackend]
    if isinstance(pipeline, ChronosBoltPipeline):
        backend_class = BoltBackend
    elif isinstance(pipeline, Chronos2Pipeline):
        backend_class = Chronos2Backend
    elif isinstance(pipeline, ChronosPipeline):
        backend_class = T5Backend
    else:
        raise TypeError(f"unsupported pipeline {type(pipeline).__name__}")
    if spec.family != backend_class.family:
        raise TypeError(f"{spec.source} holds a {backend_class.family} model, but its spec says {spec.family}")
    pipeline.inner_model.eval()
    return backend_class(pipeline, spec)


__all__ = [
    "MAX_ROWS",
    "BoltBackend",
    "BoltForecaster",
    "Chronos2Backend",
    "Chronos2Forecaster",
    "ChronosBackend",
    "SeededSampler",
    "T5Backend",
    "TorchBackend",
    "install_checkpoints",
    "inverse_cdf",
    "left_pad",
    "splitmix64",
    "uniform",
    "wrap_pipeline",
]
