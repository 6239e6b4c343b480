"""The forecasts drawn in ``forecast_vs_truth.png``: :class:`Example` and how they are made.

:func:`forecast_examples` forecasts from 00:00 of a few days of one series (by default
:func:`default_plot_days`, checked by :func:`plot_starts`) with every model of the sweep,
without covariates and with all of them for the Chronos-2 models that ran with covariates, and
with every baseline; :mod:`chronoserve.eval.plots` draws them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import numpy as np

from chronoserve.data import SeriesStore
from chronoserve.eval.baselines import BASELINES
from chronoserve.eval.grid import COVARIATES, LEVELS, Config, SweepError, SweepSettings, span_rows
from chronoserve.eval.lanes import window_request
from chronoserve.eval.windows import EvalWindow, series_data
from chronoserve.request import clip_below

if TYPE_CHECKING:
    from chronoserve.engine import Engine
    from chronoserve.models.base import ModelSpec


@dataclass
class Example:
    """One forecast drawn in ``forecast_vs_truth.png``: the truth around it and the 80 % band."""

    model: str
    label: str
    covariates: str
    series: str
    forecast_start: datetime
    history_times: list[datetime]
    history: list[float]
    times: list[datetime]
    truth: list[float]
    median: list[float]
    lower: list[float]
    """q0.1."""
    upper: list[float]
    """q0.9."""


def default_plot_days(settings: SweepSettings, store: SeriesStore, series: str, n: int = 3) -> list[str]:
    """``n`` days evenly spaced in the span, after the longest context and before the last day."""
    lo, hi = span_rows(store, series, settings.start, settings.end)
    first = series_data(store, series).start
    a = lo + max(settings.context_days) * 24
    b = hi - max(settings.horizons)
    if b <= a:
        return []
    days = []
    for k in range(n):
        row = a + (b - a) * (k + 1) // (n + 1)
        day = (first + timedelta(hours=row)).replace(hour=0)
        days.append(day.date().isoformat())
    return sorted(set(days))


def plot_starts(
    store: SeriesStore, series: str, days: Sequence[str], *, context_days: int, horizon: int
) -> list[tuple[datetime, int]]:
    """00:00 of each day and its row in ``series``; :class:`SweepError` (``--plot-days``) for a day
    without the context before it or the horizon after it in the data."""
    data = series_data(store, series)
    out = []
    for day in days:
        start = datetime.fromisoformat(day).replace(hour=0, minute=0, second=0, microsecond=0)
        i = data.row(start)
        if i - context_days * 24 < 0 or i + horizon > data.values.size:
            raise SweepError(
                "--plot-days",
                f"{day}: {series!r} has no {context_days}-day context before it or {horizon} h after it "
                f"(its data runs from {data.start:%Y-%m-%d %H:%M} for {data.values.size} hours)",
            )
        out.append((start, i))
    return out


async def forecast_examples(
    engine: Engine | None,
    store: SeriesStore,
    settings: SweepSettings,
    specs: Mapping[str, ModelSpec],
    series: str,
    days: Sequence[str],
    *,
    context_days: int,
    horizon: int,
) -> list[Example]:
    """Forecasts from 00:00 of each day: every model without covariates (and with all of
    them, for the Chronos-2 models that ran with covariates) and every baseline."""
    data = series_data(store, series)
    c = context_days * 24
    starts = plot_starts(store, series, days, context_days=context_days, horizon=horizon)
    configs: list[Config] = []
    for model in settings.models:
        spec = specs[model]
        configs.append(Config(model, "model", spec.random_weights, c, horizon))
        chosen = settings.covariate_models is None or model in settings.covariate_models
        if spec.supports_covariates and chosen and settings.covariates != "none":
            configs.append(Config(model, "model", spec.random_weights, c, horizon, COVARIATES, settings.known_future))
    configs += [Config(b, "baseline", False, c, horizon) for b in settings.baselines]
    out: list[Example] = []
    for start, i in starts:
        w = EvalWindow(series, 0, i, data.values[i - c : i], data.values[i : i + horizon], data.values[:i], start)
        if w.context_all_nan:
            continue
        shown = min(c, 48)
        for config in configs:
            if config.kind == "baseline":
                (fc,) = await asyncio.to_thread(BASELINES[config.model], [w.context], horizon, LEVELS)
                quantiles, median, _ = clip_below(fc.quantiles, fc.median, store.info(series).lower_bound)
            else:
                assert engine is not None
                result = await engine.forecast(window_request(store, config, w))
                median, quantiles = result.median, result.quantiles
            out.append(
                Example(
                    model=config.model,
                    label=config.label,
                    covariates=config.covariates_label if not config.covariates else f"all ({config.covariate_use})",
                    series=series,
                    forecast_start=start,
                    history_times=[start - timedelta(hours=shown - k) for k in range(shown)],
                    history=[float(v) for v in w.context[-shown:]],
                    times=[start + timedelta(hours=k) for k in range(horizon)],
                    truth=[float(v) for v in w.target],
                    median=[float(v) for v in median],
                    lower=[float(v) for v in np.asarray(quantiles)[:, LEVELS.index(0.1)]],
                    upper=[float(v) for v in np.asarray(quantiles)[:, LEVELS.index(0.9)]],
                )
            )
    return out
