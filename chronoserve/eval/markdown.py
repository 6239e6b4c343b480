"""``summary.md``: a sweep's settings and tables in markdown (see :mod:`chronoserve.eval.report`).

The relative MASE and WQL per model and covariate set (over everything, and at the headline
context and horizon: 10 days and 24 h, or the closest in the grid), mean RMSE against horizon
and against context, the best context and the best horizon per series and model, and the
coverage of the 80 % interval; random-weight models are marked everywhere.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from chronoserve.eval.aggregate import Variant, closest, find_result, mean_across_series, series_mean, variants
from chronoserve.eval.grid import RANDOM_MARK, SweepSettings, display_covariates, model_label
from chronoserve.eval.rundir import ConfigResult

#: What the best-context and best-horizon tables compare: the study asks for them at these.
HEADLINE_HORIZON = 24
HEADLINE_CONTEXT_DAYS = 10


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
            r = find_result(results, v, days, hh)
            rel = _lookup(relative, {"model": v.model, "covariates": v.covariates}, days, hh, "relative_mase")
            cells.append("–" if r is None else f"{_num(mean_across_series(r, 'rmse'))} / {_num(rel)}")
        table.append([v.label, *cells])
    return lines + _table(["model", *[f"{x} {unit}" for x in cols]], table)


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
            options = [(d, series_mean(results, v, d, h, sid, "rmse")) for d in days]
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
            options = [(x, series_mean(results, v, c_days, x, sid, "mase")) for x in horizons]
            cells.append(_best(options, "h"))
        rows.append([sid, *cells])
    return lines + _table(["series", *[v.label for v in cols]], rows)


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
        r = find_result(results, v, c_days, h)
        if r is not None:
            rows.append([v.label, _num(mean_across_series(r, "coverage_80"))])
    return lines + _table(["model", "coverage"], rows)
