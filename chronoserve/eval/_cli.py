"""``chronoserve eval``: the command line of the accuracy sweep and of ``--perf``.

Only argparse and the standard library at import: the parser is built for every command.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from chronoserve._cli_common import UsageError, add_engine_options, engine_settings, positive_int
from chronoserve.models.catalog import DEFAULT_MODEL

DEFAULT_OUT = "results/eval"
DEFAULT_MODELS = DEFAULT_MODEL
INSTALL_HINT = "pip install 'chronoserve[eval]'"


def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive whole numbers, got {text!r}")
    if len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"a value is repeated in {text!r}")
    return values


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _max_windows(text: str) -> int | None:
    if text.strip().lower() in ("all", "0", "none"):
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number or 'all', got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1 or 'all', got {value}")
    return value


def _hour(text: str) -> str:
    try:
        t = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an ISO date or hour, e.g. 2016-10-01 or 2016-10-01T06:00, got {text!r}"
        ) from None
    if t.tzinfo is not None or t.minute or t.second or t.microsecond:
        raise argparse.ArgumentTypeError(f"{text!r} must be a naive local time on the hour")
    return t.isoformat()


def _days(text: str) -> list[str]:
    out = []
    for part in _names(text):
        try:
            out.append(datetime.fromisoformat(part).date().isoformat())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated dates like 2016-10-01, got {part!r}") from None
    return out


def register(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "eval",
        help="offline accuracy sweep: models and baselines over contexts, horizons and covariates",
        description="Score Chronos models and baselines (naive, seasonal naive, AutoTheta; AutoARIMA with "
        "--auto-arima) on rolling windows of the PM2.5 series: RMSE, MAE, MASE, WQL and 80 % coverage per "
        "window, aggregates per series and relative to seasonal naive (geometric mean across series). The "
        "models run on the server's engine. Writes windows.csv, summary.csv, relative.csv, summary.md and PNG "
        "plots to --out; an interrupted run resumes. With --perf, forecast continuously for --budget per "
        "configuration and log latency, CPU and memory instead. See docs/accuracy.md.",
    )
    p.add_argument(
        "--models",
        type=_names,
        default=_names(DEFAULT_MODELS),
        help=f"comma-separated Chronos models: catalog names, random/NAME, checkpoint directories "
        f"(default: {DEFAULT_MODELS}); 'none' for the baselines only",
    )
    p.add_argument("--series", type=_names, default=None, help="comma-separated series ids (default: every series)")
    p.add_argument("--data", default=None, help="directory of series CSVs (default: the embedded 12 PM2.5 sites)")
    p.add_argument(
        "--context-days",
        type=_int_list,
        default=[2, 4, 8, 10, 14],
        help="contexts in days (default: 2,4,8,10,14)",
    )
    p.add_argument(
        "--horizons",
        type=_int_list,
        default=[4, 8, 12, 24, 48],
        help="horizons in hours (default: 4,8,12,24,48)",
    )
    p.add_argument("--stride", type=positive_int, default=4, help="hours between forecast starts (default: 4)")
    p.add_argument(
        "--max-windows",
        type=_max_windows,
        default=256,
        help="at most this many windows per series and configuration, evenly spaced (default: 256; 'all')",
    )
    p.add_argument(
        "--covariates",
        choices=["none", "all", "combos"],
        default="none",
        help="Chronos-2 only: none, all (humidity, temperature, wind), combos (all 2^3 subsets)",
    )
    p.add_argument(
        "--covariate-models",
        type=_names,
        default=None,
        help="the Chronos-2 models that get the covariate sets (default: all of them)",
    )
    p.add_argument(
        "--known-future",
        action="store_true",
        help="also give the covariates' TRUE values over the horizon (optimistic; default: past-only)",
    )
    p.add_argument("--auto-arima", action="store_true", help="add statsforecast AutoARIMA (slow: seconds per window)")
    p.add_argument("--start", type=_hour, default=None, help="first hour of the span (default: 2016-07-01)")
    p.add_argument("--end", type=_hour, default=None, help="the hour after the span (default: 2017-01-01)")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output directory (default: {DEFAULT_OUT})")
    p.add_argument("--overwrite", action="store_true", help="replace a sweep with other settings in --out")
    p.add_argument(
        "--plot-days",
        type=_days,
        default=None,
        help="days of the forecast-against-truth plot, e.g. 2016-10-01,2016-12-01 (default: 3 spread over the span)",
    )
    p.add_argument("--plot-series", default=None, help="series of that plot (default: the first)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    perf = p.add_argument_group("performance (--perf)")
    perf.add_argument(
        "--perf",
        action="store_true",
        help="forecast continuously for --budget per (model, context, horizon) and log every batch "
        "(batches.csv) and the system (system_stats.csv), with plots, instead of scoring",
    )
    perf.add_argument("--budget", default="2m", help="wall-clock time per configuration with --perf (default: 2m)")
    perf.add_argument("--interval", default="1s", help="system sampling interval with --perf (default: 1s)")
    add_engine_options(p)
    p.set_defaults(func=cmd_eval)
    parser: argparse.ArgumentParser = p
    return parser


def _usage(message: str) -> Exception:
    return UsageError(message)


def check_statsforecast() -> None:
    """Refuse to start (exit 2) without statsforecast: the AutoTheta baseline always runs."""
    try:
        import statsforecast  # noqa: F401
    except ImportError:
        raise _usage(
            f"--baselines: the statistical baselines need statsforecast, which is not installed: {INSTALL_HINT}"
        ) from None


def build_settings(args: argparse.Namespace) -> tuple[Any, Any]:
    """The :class:`SweepSettings` and the store from the parsed arguments (errors name the flag)."""
    from chronoserve.data import SeriesStore
    from chronoserve.errors import InvalidRequest
    from chronoserve.eval.grid import DEFAULT_BASELINES, SweepError, SweepSettings, default_span

    if args.data is not None:
        try:
            store = SeriesStore.from_dir(args.data)
        except ValueError as exc:
            raise _usage(f"--data: {exc}") from None
        data = str(Path(args.data).resolve())
    else:
        store = SeriesStore.embedded()
        data = "embedded"
    series = []
    for sid in args.series or store.ids():
        try:
            series.append(store.info(sid).id)
        except InvalidRequest as exc:
            raise _usage(f"--series: {exc.message}") from None
    models = [] if [m.lower() for m in args.models] == ["none"] else list(args.models)
    start, end = args.start, args.end
    if start is None and end is None:
        start, end = default_span(store, series)
    baselines = (*DEFAULT_BASELINES, "auto_arima") if args.auto_arima else DEFAULT_BASELINES
    try:
        settings = SweepSettings(
            models=tuple(models),
            series=tuple(series),
            data=data,
            baselines=tuple(baselines),
            context_days=tuple(args.context_days),
            horizons=tuple(args.horizons),
            stride=args.stride,
            max_windows=args.max_windows,
            covariates=args.covariates,
            covariate_models=None if args.covariate_models is None else tuple(args.covariate_models),
            known_future=args.known_future,
            start=start,
            end=end,
            dtype=args.dtype,
            backend=args.backend,
        )
    except SweepError as exc:
        raise _usage(str(exc)) from None
    return settings, store


def cmd_eval(args: argparse.Namespace) -> int:
    from chronoserve.errors import UnknownModel
    from chronoserve.eval.grid import SweepError, check_settings
    from chronoserve.eval.sweep import resolve_models

    settings, store = build_settings(args)
    if not args.perf:
        check_statsforecast()
    engine = engine_settings(args)
    loader = engine.loader()
    try:
        specs = resolve_models(settings.models, loader)
    except UnknownModel as exc:
        raise _usage(f"--models: {exc.message}") from None
    try:
        check_settings(settings, store, specs)
    except SweepError as exc:
        raise _usage(str(exc)) from None
    options = engine.engine_kwargs(loader)
    if args.perf:
        return _perf(args, settings, store, specs, options)
    return _sweep(args, settings, store, specs, options)


def _sweep(args: argparse.Namespace, settings: Any, store: Any, specs: Any, options: dict[str, Any]) -> int:
    from chronoserve.eval.aggregate import relative_rows
    from chronoserve.eval.grid import SettingsMismatch, SweepError
    from chronoserve.eval.sweep import run_sweep

    random_models = [m for m, s in specs.items() if s.random_weights]
    try:
        result = asyncio.run(
            run_sweep(
                settings,
                args.out,
                store=store,
                engine_options=options,
                specs=specs,
                overwrite=args.overwrite,
                progress=not args.quiet,
                plots=not args.no_plots,
                plot_days=args.plot_days,
                plot_series=args.plot_series,
            )
        )
    except (SettingsMismatch, SweepError) as exc:
        raise _usage(str(exc)) from None
    overall = [r for r in relative_rows(result.results) if r["context_days"] == "all"]
    print("MASE and WQL relative to seasonal naive (geometric mean across series; every context and horizon):")
    labels = [_row_label(r) for r in overall]
    width = max((len(label) for label in labels), default=10)
    for label, r in zip(labels, overall, strict=True):
        print(f"  {label:<{width}}  MASE {r['relative_mase']:.3f}  WQL {r['relative_wql']:.3f}")
    if random_models:
        print(f"({', '.join(random_models)}: random weights, their forecasts are not forecasts)")
    resumed = f", {result.resumed} resumed from earlier runs" if result.resumed else ""
    print(
        f"{len(result.configs)} configurations{resumed}; wrote {len(result.files)} files to {args.out} "
        f"in {result.seconds:.0f} s"
    )
    return 0


def _row_label(row: Any) -> str:
    from chronoserve.eval.grid import display_covariates, model_label

    label = model_label(row["model"], row["random_weights"])
    if row["covariates"] == "none":
        return label
    return f"{label} + {display_covariates(row['covariates'])} ({row['covariate_use']})"


def _perf(args: argparse.Namespace, settings: Any, store: Any, specs: Any, options: dict[str, Any]) -> int:
    from chronoserve._units import parse_seconds

    try:
        budget = parse_seconds(args.budget)
    except ValueError as exc:
        raise _usage(f"--budget: {exc}") from None
    try:
        interval = parse_seconds(args.interval)
    except ValueError as exc:
        raise _usage(f"--interval: {exc}") from None
    if budget <= 0:
        raise _usage("--budget: must be more than 0 seconds")
    if interval <= 0:
        raise _usage("--interval: must be more than 0 seconds")
    if not settings.models:
        raise _usage("--models: --perf measures Chronos models; name at least one")
    try:
        from chronoserve.eval.perf import run_perf
    except ImportError as exc:  # pragma: no cover - the perf package ships with chronoserve
        raise _usage(f"--perf: {exc}") from None
    result = asyncio.run(
        run_perf(
            settings,
            args.out,
            store=store,
            specs=specs,
            engine_options=options,
            budget=budget,
            interval=interval,
            progress=not args.quiet,
            plots=not args.no_plots,
        )
    )
    print(result.format_table())
    print(f"wrote {len(result.files)} files to {args.out}", file=sys.stdout)
    return 0
