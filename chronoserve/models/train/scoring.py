"""Scoring a trained pipeline on a held-out slice of the training span, against the baselines.

:func:`score_span` is how the settings were chosen (see ``docs/training.md``): rolling windows
inside the training span (never the evaluation span), the ``chronoserve.eval`` metrics, and
the naive and seasonal-naive baselines on the same windows.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt

from chronoserve.models.catalog import CHRONOS_2_QUANTILES

from .data import FloatArray, SiteData, prepared_input


def score_span(
    pipeline: Any,
    sites: Sequence[SiteData],
    first: datetime,
    *,
    horizon: int,
    context_length: int,
    stride: int = 24,
    variant: str = "past",
    batch_size: int = 256,
    only_first: int | None = None,
) -> dict[str, float]:
    """Mean WQL and MASE of ``pipeline`` and of seasonal naive on rolling windows from ``first``.

    For choosing settings on a held-out slice inside the training span (never on the
    evaluation span). Returns ``wql``, ``mase``, ``rmse`` for the model, the same for
    seasonal naive (``snaive_*``) and naive (``naive_*``), and the geometric means across sites
    of the ratios to seasonal naive (``rel_wql``, ``rel_mase``). ``only_first`` scores only the first
    hours of each ``horizon``-hour forecast.
    """
    from chronoserve.eval.baselines import naive, seasonal_naive
    from chronoserve.eval.metrics import mase, rmse, wql

    levels = list(CHRONOS_2_QUANTILES)
    per_site: dict[str, dict[str, list[float]]] = {}
    for site in sites:
        offset = int((first - site.start) / timedelta(hours=1))
        cuts = list(range(max(offset, context_length), site.hours - horizon + 1, stride))
        if not cuts:
            continue
        inputs = [prepared_input(site.values[:, c - context_length : c], variant, horizon) for c in cuts]
        if variant == "future":
            for item, c in zip(inputs, cuts, strict=True):
                item["future_covariates"][1:] = _torch_tensor(site.values[1:, c : c + horizon])
        preds = pipeline.predict(inputs, prediction_length=horizon, batch_size=batch_size)
        contexts = [_fill(site.values[0, c - context_length : c]) for c in cuts]
        baselines = {"snaive": seasonal_naive(contexts, horizon, levels), "naive": naive(contexts, horizon, levels)}
        scores: dict[str, list[float]] = {
            f"{who}{metric}": [] for who in ("", "snaive_", "naive_") for metric in ("wql", "mase", "rmse")
        }
        n = horizon if only_first is None else min(only_first, horizon)
        for k, c in enumerate(cuts):
            y = site.values[0, c : c + n].astype(np.float64)
            q = preds[k][0].numpy().T.astype(np.float64)[:n]  # (H, Q)
            history = site.values[0, :c]
            median = q[:, levels.index(0.5)]
            scores["wql"].append(wql(y, q, levels))
            scores["mase"].append(mase(y, median, history))
            scores["rmse"].append(rmse(y, median))
            for who, forecasts in baselines.items():
                scores[f"{who}_wql"].append(wql(y, forecasts[k].quantiles[:n], levels))
                scores[f"{who}_mase"].append(mase(y, forecasts[k].median[:n], history))
                scores[f"{who}_rmse"].append(rmse(y, forecasts[k].median[:n]))
        per_site[site.name] = scores
    means = {name: {k: float(np.nanmean(v)) for k, v in s.items()} for name, s in per_site.items()}
    out = {k: float(np.mean([m[k] for m in means.values()])) for k in next(iter(means.values()))}
    for metric in ("wql", "mase"):
        ratios = [m[metric] / m[f"snaive_{metric}"] for m in means.values()]
        out[f"rel_{metric}"] = float(np.exp(np.mean(np.log(ratios))))
    return out


def _fill(x: FloatArray) -> npt.NDArray[np.float64]:
    """Forward-fill NaN (then back-fill the start) for the seasonal-naive baseline."""
    from chronoserve.eval.baselines import fill_gaps

    return fill_gaps(x)


def _torch_tensor(x: FloatArray) -> Any:
    import torch

    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
