"""Aggregating a sweep's per-window scores: per series, across series, relative to seasonal naive.

Every function reads finished configurations (:class:`~chronoserve.eval.rundir.ConfigResult`)
and returns numbers or rows; nothing here writes a file. The relative scores pair each model's
windows with seasonal naive's on the same windows and take the geometric mean across series
(:func:`~chronoserve.eval.metrics.geometric_mean_relative`, fev-bench's aggregate with series as
tasks); a :class:`Variant` is a model with one covariate set (a line in the plots, a row of the
overall table). :mod:`chronoserve.eval.report` and :mod:`chronoserve.eval.plots` present them.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from chronoserve.eval.grid import ANCHOR, METRICS, Config, display_covariates, model_label
from chronoserve.eval.metrics import RelativeScore, geometric_mean_relative, mean_over_windows
from chronoserve.eval.rundir import ConfigResult


def closest(values: Iterable[int], target: int) -> int:
    """The value nearest ``target`` (the larger one on a tie)."""
    return min(values, key=lambda v: (abs(v - target), -v))


def window_scores(result: ConfigResult, metric: str) -> dict[str, dict[int, float]]:
    """Per series: window number -> score."""
    out: dict[str, dict[int, float]] = defaultdict(dict)
    for row in result.rows:
        out[row["series"]][int(row["window"])] = float(row[metric])
    return dict(out)


def series_means(result: ConfigResult, metric: str) -> dict[str, float]:
    """Per series: the mean of ``metric`` over its windows (NaN windows left out)."""
    return {sid: mean_over_windows(list(scores.values())).mean for sid, scores in window_scores(result, metric).items()}


def mean_across_series(result: ConfigResult, metric: str) -> float:
    """The mean over series of the per-series means (each site counts once)."""
    values = [v for v in series_means(result, metric).values() if not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


def summary_rows(results: Sequence[ConfigResult]) -> list[dict[str, Any]]:
    """One row per (configuration, series): counts and mean metrics."""
    rows = []
    for result in results:
        c = result.config
        scores = {m: window_scores(result, m) for m in METRICS}
        for sid, counts in result.counts.items():
            row: dict[str, Any] = {
                "series": sid,
                "model": c.model,
                "random_weights": c.random_weights,
                "context_days": c.context_hours // 24,
                "horizon_hours": c.horizon,
                "covariates": c.covariates_label,
                "covariate_use": c.covariate_use,
                **counts,
            }
            for m in METRICS:
                mean = mean_over_windows(list(scores[m].get(sid, {}).values()))
                row[m] = mean.mean
                if m == "mase":
                    row["mase_excluded"] = mean.excluded
            rows.append(row)
    return rows


def anchor_of(config: Config) -> Config:
    """Seasonal naive at the same context and horizon: the same windows."""
    return Config(ANCHOR, "baseline", False, config.context_hours, config.horizon)


def _paired(
    anchor: Mapping[str, Mapping[int, float]], model: Mapping[str, Mapping[int, float]], prefix: str = ""
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    a_out: dict[str, list[float]] = {}
    m_out: dict[str, list[float]] = {}
    for sid in anchor:
        numbers = sorted(anchor[sid])
        theirs = model.get(sid, {})
        if sorted(theirs) != numbers:
            raise ValueError(f"series {sid!r}: the model and {ANCHOR} were scored on different windows")
        a_out[prefix + sid] = [anchor[sid][n] for n in numbers]
        m_out[prefix + sid] = [theirs[n] for n in numbers]
    return a_out, m_out


def relative_scores(results: Sequence[ConfigResult], metric: str) -> dict[Config, RelativeScore]:
    """Per configuration: the geometric mean across series of model / seasonal naive (``metric``)."""
    by_config = {r.config: r for r in results}
    out = {}
    for result in results:
        anchor = by_config.get(anchor_of(result.config))
        if anchor is None:
            continue
        a, m = _paired(window_scores(anchor, metric), window_scores(result, metric))
        out[result.config] = geometric_mean_relative(a, m)
    return out


@dataclass(frozen=True)
class Variant:
    """A model with one covariate set: a line in the plots, a row of the overall table."""

    model: str
    random_weights: bool
    kind: str
    covariates: str
    covariate_use: str

    @property
    def label(self) -> str:
        base = model_label(self.model, self.random_weights)
        if self.covariates == "none":
            return base
        return f"{base} + {display_covariates(self.covariates)} ({self.covariate_use})"


def variant_of(config: Config) -> Variant:
    return Variant(config.model, config.random_weights, config.kind, config.covariates_label, config.covariate_use)


def variants(results: Sequence[ConfigResult]) -> list[Variant]:
    """Every (model, covariate set), in grid order."""
    return list(dict.fromkeys(variant_of(r.config) for r in results))


def relative_overall(results: Sequence[ConfigResult], metric: str) -> dict[Variant, RelativeScore]:
    """Per variant: the geometric mean over every (series, context, horizon) task."""
    by_config = {r.config: r for r in results}
    anchors: dict[Variant, dict[str, list[float]]] = defaultdict(dict)
    models: dict[Variant, dict[str, list[float]]] = defaultdict(dict)
    for result in results:
        c = result.config
        anchor = by_config.get(anchor_of(c))
        if anchor is None:
            continue
        prefix = f"c{c.context_hours}h{c.horizon}:"
        a, m = _paired(window_scores(anchor, metric), window_scores(result, metric), prefix)
        anchors[variant_of(c)].update(a)
        models[variant_of(c)].update(m)
    return {v: geometric_mean_relative(anchors[v], models[v]) for v in anchors}


def relative_rows(results: Sequence[ConfigResult]) -> list[dict[str, Any]]:
    """The rows of ``relative.csv``: per configuration, then per variant over every context and horizon."""
    rel = {m: relative_scores(results, m) for m in ("mase", "wql")}
    rows = []
    for config, mase in rel["mase"].items():
        wql = rel["wql"][config]
        rows.append(
            _relative_row(variant_of(config), config.context_hours // 24, config.horizon, mase, wql),
        )
    overall = {m: relative_overall(results, m) for m in ("mase", "wql")}
    for variant, mase in overall["mase"].items():
        rows.append(_relative_row(variant, "all", "all", mase, overall["wql"][variant]))
    return rows


def _relative_row(
    v: Variant, days: int | str, horizon: int | str, mase: RelativeScore, wql: RelativeScore
) -> dict[str, Any]:
    return {
        "model": v.model,
        "random_weights": v.random_weights,
        "context_days": days,
        "horizon_hours": horizon,
        "covariates": v.covariates,
        "covariate_use": v.covariate_use,
        "relative_mase": mase.value,
        "relative_wql": wql.value,
        "skill_mase": mase.skill,
        "skill_wql": wql.skill,
        "tasks": mase.series,
        "excluded_tasks": len(mase.excluded_series),
        "windows": mase.windows,
        "excluded_windows": mase.excluded_windows,
    }


def find_result(results: Sequence[ConfigResult], v: Variant, days: int, horizon: int) -> ConfigResult | None:
    """The result of variant ``v`` at a ``days``-day context and a ``horizon``-hour horizon, if it ran."""
    for r in results:
        c = r.config
        if variant_of(c) == v and c.context_hours == days * 24 and c.horizon == horizon:
            return r
    return None


def series_mean(results: Sequence[ConfigResult], v: Variant, days: int, h: int, sid: str, metric: str) -> float:
    """The mean ``metric`` of series ``sid`` for variant ``v`` at (``days``, ``h``); NaN if it did not run."""
    r = find_result(results, v, days, h)
    return math.nan if r is None else series_means(r, metric).get(sid, math.nan)
