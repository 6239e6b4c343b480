"""The sweep's tables: per-window CSV, per-series summary, scores relative to seasonal naive.

Files written to ``OUT`` by :func:`write_report`:

- ``windows.csv``: one row per scored window and configuration (:data:`~chronoserve.eval.sweep.WINDOW_FIELDS`).
- ``summary.csv``: one row per (series, model, context, horizon, covariates): the mean of each
  metric over the windows (NaN windows left out), and the windows generated, scored and
  skipped (all-NaN target or context).
- ``relative.csv``: per (model, context, horizon, covariates), and over every context and
  horizon at once, the geometric mean across series of the model's mean MASE (WQL) divided by
  seasonal naive's on the same windows (:func:`~chronoserve.eval.metrics.geometric_mean_relative`,
  fev-bench's aggregate with series as tasks).
- ``summary.md``: the settings, the relative table, mean RMSE against context and horizon, the
  best context for a 24 h horizon and the best horizon for a 10-day context per series and
  model, coverage; random-weight models marked everywhere.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from chronoserve.data import SeriesStore
from chronoserve.eval.grid import (
    ANCHOR,
    METRICS,
    RANDOM_MARK,
    WINDOW_FIELDS,
    Config,
    SweepSettings,
    display_covariates,
    model_label,
)
from chronoserve.eval.metrics import RelativeScore, geometric_mean_relative, mean_over_windows
from chronoserve.eval.rundir import ConfigResult

SUMMARY_FIELDS: tuple[str, ...] = (
    "series",
    "model",
    "random_weights",
    "context_days",
    "horizon_hours",
    "covariates",
    "covariate_use",
    "windows",
    "scored",
    "skipped_target_nan",
    "skipped_context_nan",
    *METRICS,
    "mase_excluded",
)
RELATIVE_FIELDS: tuple[str, ...] = (
    "model",
    "random_weights",
    "context_days",
    "horizon_hours",
    "covariates",
    "covariate_use",
    "relative_mase",
    "relative_wql",
    "skill_mase",
    "skill_wql",
    "tasks",
    "excluded_tasks",
    "windows",
    "excluded_windows",
)
#: What the best-context and best-horizon tables compare: the study asks for them at these.
HEADLINE_HORIZON = 24
HEADLINE_CONTEXT_DAYS = 10


def closest(values: Iterable[int], target: int) -> int:
    """The value nearest ``target`` (the larger one on a tie)."""
    return min(values, key=lambda v: (abs(v - target), -v))


# ---------------------------------------------------------------------------------------------
# Aggregates


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


# ---------------------------------------------------------------------------------------------
# Files


def _write_csv(path: Path, fields: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(fields), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(row.get(k)) for k in fields})
    tmp.replace(path)
    return path


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return value


def write_report(
    out: Path, settings: SweepSettings, results: Sequence[ConfigResult], *, store: SeriesStore | None = None
) -> list[Path]:
    """Write ``windows.csv``, ``summary.csv``, ``relative.csv`` and ``summary.md`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    summary = summary_rows(results)
    relative = relative_rows(results)
    files = [
        _write_csv(out / "windows.csv", WINDOW_FIELDS, (row for r in results for row in r.rows)),
        _write_csv(out / "summary.csv", SUMMARY_FIELDS, summary),
        _write_csv(out / "relative.csv", RELATIVE_FIELDS, relative),
    ]
    md = out / "summary.md"
    md.write_text(format_markdown(settings, results, relative), encoding="utf-8")
    files.append(md)
    return files


# ---------------------------------------------------------------------------------------------
# Markdown


def _num(value: float, digits: int = 3) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}g}"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines + [""]


def covariate_note(settings: SweepSettings) -> str:
    if settings.covariates == "none":
        return "none (no covariates)"
    sets = "all three" if settings.covariates == "all" else "every subset of the three (2³ sets)"
    use = (
        "KNOWN-FUTURE: the true humidity, temperature and wind speed over the horizon are given to "
        "the model as known-future covariates (the study's optimistic assumption; a real forecast "
        "would need weather forecasts)"
        if settings.known_future
        else "past-only: the model reads the covariates over the context, not over the horizon"
    )
    return f"{settings.covariates}: {sets} of humidity, temperature, wind speed; {use}"


def _headline(results: Sequence[ConfigResult]) -> tuple[int, int]:
    days = sorted({r.config.context_hours // 24 for r in results})
    horizons = sorted({r.config.horizon for r in results})
    return closest(days, HEADLINE_CONTEXT_DAYS), closest(horizons, HEADLINE_HORIZON)


def _table_variants(results: Sequence[ConfigResult]) -> list[Variant]:
    """The columns of the per-series tables: every model without covariates, and with all three."""
    out = []
    for v in variants(results):
        if v.covariates == "none" or v.covariates.count("+") == 2:
            out.append(v)
    return out


def format_markdown(
    settings: SweepSettings, results: Sequence[ConfigResult], relative: Sequence[Mapping[str, Any]]
) -> str:
    """``summary.md``: the settings and the tables (see the module docstring)."""
    c_days, h = _headline(results)
    lines = ["# Accuracy sweep", ""]
    lines += _settings_lines(settings, results)
    random_models = sorted({r.config.model for r in results if r.config.random_weights})
    if random_models:
        lines += [
            f"**Random weights**: {', '.join(random_models)} are random-initialised: their forecasts are not "
            f"forecasts, they are here for cost only. Marked `{RANDOM_MARK.strip()}` in every table and plot.",
            "",
        ]
    lines += ["## MASE and WQL relative to seasonal naive", ""]
    lines += [
        "Geometric mean across series of (model's mean over windows) / (seasonal naive's mean over the "
        "same windows); below 1 is better, skill = 1 − value. *All* pools every (series, context, horizon) "
        "as one task.",
        "",
    ]
    overall = [r for r in relative if r["context_days"] == "all"]
    lines += _table(
        [
            "model",
            "covariates",
            "MASE (all)",
            "WQL (all)",
            "tasks",
            f"MASE ({c_days} d, {h} h)",
            f"WQL ({c_days} d, {h} h)",
        ],
        [
            [
                model_label(r["model"], r["random_weights"]),
                _cov(r),
                _num(r["relative_mase"]),
                _num(r["relative_wql"]),
                str(r["tasks"]),
                _num(_lookup(relative, r, c_days, h, "relative_mase")),
                _num(_lookup(relative, r, c_days, h, "relative_wql")),
            ]
            for r in overall
        ],
    )
    lines += _by_axis(results, relative, "horizon", c_days, h)
    lines += _by_axis(results, relative, "context", c_days, h)
    lines += _best_tables(results, c_days, h)
    lines += _coverage_table(results, c_days, h)
    return "\n".join(lines)


def _cov(row: Mapping[str, Any]) -> str:
    if row["covariates"] == "none":
        return "none"
    return f"{display_covariates(row['covariates'])} ({row['covariate_use']})"


def _lookup(relative: Sequence[Mapping[str, Any]], like: Mapping[str, Any], days: int, h: int, key: str) -> float:
    for r in relative:
        if (r["model"], r["covariates"], r["context_days"], r["horizon_hours"]) == (
            like["model"],
            like["covariates"],
            days,
            h,
        ):
            return float(r[key])
    return math.nan


def _settings_lines(settings: SweepSettings, results: Sequence[ConfigResult]) -> list[str]:
    windows = sum(len(r.rows) for r in results)
    skipped_t = sum(c["skipped_target_nan"] for r in results for c in r.counts.values())
    skipped_c = sum(c["skipped_context_nan"] for r in results for c in r.counts.values())
    span = f"{settings.start or 'the first hour'} to {settings.end or 'the last hour'} (end exclusive)"
    models = ", ".join(model_label(r.config.model, r.config.random_weights) for r in _unique_models(results))
    return [
        f"- data: {settings.data} ({len(settings.series)} series: {', '.join(settings.series)}); span {span}",
        f"- contexts: {', '.join(str(d) for d in settings.context_days)} days; horizons: "
        f"{', '.join(str(x) for x in settings.horizons)} h; stride {settings.stride} h; "
        f"at most {settings.max_windows or 'all'} windows per series and configuration",
        f"- models: {models}",
        f"- covariates: {covariate_note(settings)}",
        f"- configurations: {len(results)}; windows scored: {windows}; skipped: {skipped_t} with no observed "
        f"target, {skipped_c} with no observed context (window × configuration)",
        "- metrics per window, NaN targets skipped: RMSE, MAE (µg/m³), MASE (season 24 h, scaled by the "
        "mean absolute 24 h difference of the history before the window), WQL over the quantiles "
        f"{', '.join(f'{q:g}' for q in settings.levels)}, coverage of the 80 % interval (q0.1 to q0.9)",
        "",
    ]


def _unique_models(results: Sequence[ConfigResult]) -> list[ConfigResult]:
    seen: dict[str, ConfigResult] = {}
    for r in results:
        seen.setdefault(r.config.model, r)
    return list(seen.values())


def _by_axis(
    results: Sequence[ConfigResult], relative: Sequence[Mapping[str, Any]], axis: str, c_days: int, h: int
) -> list[str]:
    """Mean RMSE across series (and relative MASE) against horizon (at the headline context) or
    against context (at the headline horizon)."""
    cols = sorted(
        {r.config.horizon for r in results} if axis == "horizon" else {r.config.context_hours // 24 for r in results}
    )
    unit = "h" if axis == "horizon" else "d"
    fixed = f"context {c_days} d" if axis == "horizon" else f"horizon {h} h"
    lines = [f"## Error against {axis} ({fixed})", "", "Mean RMSE across series (µg/m³) / relative MASE.", ""]
    table = []
    for v in variants(results):
        cells = []
        for x in cols:
            days, hh = (c_days, x) if axis == "horizon" else (x, h)
            r = _find(results, v, days, hh)
            rel = _lookup(relative, {"model": v.model, "covariates": v.covariates}, days, hh, "relative_mase")
            cells.append("–" if r is None else f"{_num(mean_across_series(r, 'rmse'))} / {_num(rel)}")
        table.append([v.label, *cells])
    return lines + _table(["model", *[f"{x} {unit}" for x in cols]], table)


def _find(results: Sequence[ConfigResult], v: Variant, days: int, horizon: int) -> ConfigResult | None:
    for r in results:
        c = r.config
        if variant_of(c) == v and c.context_hours == days * 24 and c.horizon == horizon:
            return r
    return None


def _best_tables(results: Sequence[ConfigResult], c_days: int, h: int) -> list[str]:
    cols = _table_variants(results)
    series = list(dict.fromkeys(sid for r in results for sid in r.counts))
    days = sorted({r.config.context_hours // 24 for r in results})
    horizons = sorted({r.config.horizon for r in results})
    lines = [
        f"## Best context for a {h} h horizon",
        "",
        "Per series and model: the context with the lowest mean RMSE (that RMSE in µg/m³).",
        "",
    ]
    rows = []
    for sid in series:
        cells = []
        for v in cols:
            options = [(d, _series_mean(results, v, d, h, sid, "rmse")) for d in days]
            cells.append(_best(options, "d"))
        rows.append([sid, *cells])
    lines += _table(["series", *[v.label for v in cols]], rows)
    lines += [
        f"## Best horizon for a {c_days}-day context",
        "",
        "Per series and model: the horizon with the lowest mean MASE (that MASE). Errors grow with the "
        "horizon, so this is mostly the shortest one; the tables above show by how much.",
        "",
    ]
    rows = []
    for sid in series:
        cells = []
        for v in cols:
            options = [(x, _series_mean(results, v, c_days, x, sid, "mase")) for x in horizons]
            cells.append(_best(options, "h"))
        rows.append([sid, *cells])
    return lines + _table(["series", *[v.label for v in cols]], rows)


def _series_mean(results: Sequence[ConfigResult], v: Variant, days: int, h: int, sid: str, metric: str) -> float:
    r = _find(results, v, days, h)
    return math.nan if r is None else series_means(r, metric).get(sid, math.nan)


def _best(options: Sequence[tuple[int, float]], unit: str) -> str:
    valid = [(x, v) for x, v in options if not math.isnan(v)]
    if not valid:
        return "–"
    x, v = min(valid, key=lambda t: t[1])
    if len(valid) > 1 and max(t[1] for t in valid) - v <= 1e-9 * abs(v):
        return f"any ({_num(v)})"  # the naive baselines' point forecast ignores the context
    return f"{x} {unit} ({_num(v)})"


def _coverage_table(results: Sequence[ConfigResult], c_days: int, h: int) -> list[str]:
    lines = [
        f"## Coverage of the 80 % interval (context {c_days} d, horizon {h} h)",
        "",
        "Mean across series of the fraction of observed hours inside [q0.1, q0.9]; 0.8 is calibrated.",
        "",
    ]
    rows = []
    for v in variants(results):
        r = _find(results, v, c_days, h)
        if r is not None:
            rows.append([v.label, _num(mean_across_series(r, "coverage_80"))])
    return lines + _table(["model", "coverage"], rows)
