"""The accuracy sweep behind ``chronoserve eval``: the grid of configurations and its runner.

A *configuration* is one model (a Chronos model or a baseline), one context length, one
horizon and one covariate set. It is scored on the rolling windows of every chosen series
(:func:`~chronoserve.eval.windows.store_windows`: context ``[i - C, i)``, horizon ``[i, i +
H)``, the stride, at most ``max_windows`` per series, inside the span). The windows depend on
the data only, and every configuration forecasts from the same hours: the first forecast
start leaves room for the longest context in the span, the last for the longest horizon,
whatever the configuration's own context and horizon. So error against context and against
horizon compare forecasts of the same hours, and the relative scores pair the same windows.

- Chronos models run through :class:`~chronoserve.Engine`, the server's engine: the requests
  of a configuration are submitted at once and the policy batches them; models run in its
  worker threads.
- Baselines (:data:`~chronoserve.eval.baselines.BASELINES`) run in a thread, a chunk of
  windows at a time, alongside the models (two lanes on one event loop).
- Windows whose horizon has no observed value (nothing to score) or whose context has none
  (nothing to forecast from) are skipped and counted; NaN targets inside a window are skipped
  by the metrics (:func:`~chronoserve.eval.metrics.score_window`).
- Covariates (Chronos-2 only): ``none``, ``all`` (humidity, temperature and wind speed) or
  ``combos`` (all 2³ subsets, the empty one included). Their context values are past-only
  covariates; with ``known_future`` their true horizon values are passed as known-future
  covariates too (the study's optimistic assumption). Other models run once, with none.
- MASE's scale is the mean absolute seasonal (24 h) difference of the whole history before
  the forecast start (:attr:`EvalWindow.history <chronoserve.eval.windows.EvalWindow.history>`),
  as fev and gluonts compute it: the scale of a window is then the same for every context
  length, so MASE against context compares forecasts, not denominators.

Resuming: each finished configuration is written atomically to ``OUT/configs/<key>.json``
and ``OUT/settings.json`` holds the settings. A run with the same settings skips the
configurations already there; a run with other settings into the same directory raises
:class:`SettingsMismatch` unless ``overwrite``.

Importing this module is cheap (numpy and the standard library): the engine, the models and
matplotlib are imported when a sweep runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import math
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np

from chronoserve.data import SeriesStore
from chronoserve.eval.baselines import BASELINES
from chronoserve.eval.metrics import SEASON, score_window
from chronoserve.eval.windows import EvalWindow, series_data, store_windows
from chronoserve.request import DEFAULT_QUANTILES

if TYPE_CHECKING:
    from chronoserve.engine import Engine
    from chronoserve.models.base import ModelLoader, ModelSpec
    from chronoserve.request import ForecastRequest, ForecastResult

#: The study's meteorological covariates (columns of the PM2.5 CSVs).
COVARIATES: tuple[str, ...] = ("relative_humidity", "temperature", "wind_speed")
COVARIATE_MODES: tuple[str, ...] = ("none", "all", "combos")
#: Baselines that always run; ``auto_arima`` may be added (slow: seconds per window).
DEFAULT_BASELINES: tuple[str, ...] = ("naive", "seasonal_naive", "auto_theta")
#: The anchor of every relative score (fev-bench, GIFT-Eval, Chronos Benchmark II).
ANCHOR = "seasonal_naive"
STATISTICAL_BASELINES = frozenset({"auto_theta", "auto_arima"})
#: The quantile levels asked of every model and baseline: WQL is their mean loss, the 80 %
#: interval is 0.1 to 0.9.
LEVELS: tuple[float, ...] = DEFAULT_QUANTILES
#: The evaluation span of the study and of the embedded data: July to December 2016.
EVAL_START = datetime(2016, 7, 1)
EVAL_END = datetime(2017, 1, 1)
#: Windows per thread call, per baseline: small enough that progress moves and Ctrl-C is quick.
_BASELINE_CHUNK = {"naive": 4096, "seasonal_naive": 4096, "auto_theta": 16, "auto_arima": 2}
#: Bumped when a change of the code changes the numbers, so older runs are not resumed.
SWEEP_FORMAT = 2
#: The columns of ``windows.csv``, one row per scored window and configuration.
WINDOW_FIELDS: tuple[str, ...] = (
    "series",
    "model",
    "random_weights",
    "context_days",
    "context_hours",
    "horizon_hours",
    "covariates",
    "covariate_use",
    "window",
    "forecast_start",
    "target_observed",
    "rmse",
    "mae",
    "mase",
    "wql",
    "coverage_80",
)
METRICS: tuple[str, ...] = ("rmse", "mae", "mase", "wql", "coverage_80")


class SweepError(ValueError):
    """Settings that cannot run; ``option`` names the command-line flag at fault."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(f"{option}: {message}")
        self.option = option
        self.message = message


class SettingsMismatch(SweepError):
    """``out`` holds a sweep run with other settings (pass ``overwrite`` to replace it)."""


# ---------------------------------------------------------------------------------------------
# Settings and the grid


@dataclass(frozen=True)
class SweepSettings:
    """Everything that decides a sweep's numbers (and nothing that does not, like the policy)."""

    models: tuple[str, ...]
    """Chronos models: catalog names, ``random/NAME``, checkpoint directories, hub ids."""
    series: tuple[str, ...]
    """Series ids of the store (resolved, in order)."""
    data: str = "embedded"
    """``embedded`` or the absolute path of the CSV directory."""
    baselines: tuple[str, ...] = DEFAULT_BASELINES
    context_days: tuple[int, ...] = (2, 4, 8, 10, 14)
    horizons: tuple[int, ...] = (4, 8, 12, 24, 48)
    """Horizons in hours."""
    stride: int = 4
    max_windows: int | None = 256
    """Per series and configuration (None: every window)."""
    covariates: str = "none"
    """``none``, ``all`` or ``combos``."""
    covariate_models: tuple[str, ...] | None = None
    """The Chronos-2 models that get the covariate sets (None: every Chronos-2 model)."""
    known_future: bool = False
    start: str | None = None
    """First hour of the span (ISO), or None for the data's first."""
    end: str | None = None
    """The hour after the span (ISO, exclusive), or None for the hour after the data's last."""
    dtype: str = "float32"
    levels: tuple[float, ...] = LEVELS

    def __post_init__(self) -> None:
        if not self.models and not self.baselines:
            raise SweepError("--models", "nothing to evaluate")
        if ANCHOR not in self.baselines:
            raise SweepError("--baselines", f"{ANCHOR} must run: every relative score is measured against it")
        unknown = [b for b in self.baselines if b not in BASELINES]
        if unknown:
            raise SweepError("--baselines", f"unknown baseline(s) {unknown} (known: {', '.join(BASELINES)})")
        if len(set(self.models)) != len(self.models):
            raise SweepError("--models", f"a model is named twice: {list(self.models)}")
        if set(self.models) & set(BASELINES):
            raise SweepError("--models", f"{sorted(set(self.models) & set(BASELINES))} is a baseline name")
        for option, values in (("--context-days", self.context_days), ("--horizons", self.horizons)):
            if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
                raise SweepError(option, f"expected positive integers, got {list(values)}")
            if len(set(values)) != len(values):
                raise SweepError(option, f"a value is repeated: {list(values)}")
        if self.stride < 1:
            raise SweepError("--stride", f"must be at least 1, got {self.stride}")
        if self.max_windows is not None and self.max_windows < 1:
            raise SweepError("--max-windows", f"must be at least 1, got {self.max_windows}")
        if self.covariates not in COVARIATE_MODES:
            raise SweepError("--covariates", f"must be one of {', '.join(COVARIATE_MODES)}, got {self.covariates!r}")
        if self.known_future and self.covariates == "none":
            raise SweepError("--known-future", "needs covariates: add --covariates all or --covariates combos")
        if self.covariate_models is not None:
            extra = sorted(set(self.covariate_models) - set(self.models))
            if extra:
                raise SweepError("--covariate-models", f"{extra} not among --models")
        if not self.series:
            raise SweepError("--series", "no series chosen")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; what ``settings.json`` holds and a resumed run must match."""
        return {
            "format": SWEEP_FORMAT,
            "models": list(self.models),
            "series": list(self.series),
            "data": self.data,
            "baselines": list(self.baselines),
            "context_days": list(self.context_days),
            "horizons": list(self.horizons),
            "stride": self.stride,
            "max_windows": self.max_windows,
            "covariates": self.covariates,
            "covariate_models": None if self.covariate_models is None else list(self.covariate_models),
            "known_future": self.known_future,
            "start": self.start,
            "end": self.end,
            "dtype": self.dtype,
            "levels": list(self.levels),
        }


@dataclass(frozen=True)
class Config:
    """One configuration of the grid: a model or baseline, a context, a horizon, covariates."""

    model: str
    kind: str
    """``model`` (through the engine) or ``baseline``."""
    random_weights: bool
    context_hours: int
    horizon: int
    covariates: tuple[str, ...] = ()
    known_future: bool = False

    @property
    def context_days(self) -> float:
        return self.context_hours / 24

    @property
    def covariates_label(self) -> str:
        """``none`` or the names joined by ``+``."""
        return "+".join(self.covariates) if self.covariates else "none"

    @property
    def covariate_use(self) -> str:
        """``none``, ``past-only`` or ``known-future``."""
        if not self.covariates:
            return "none"
        return "known-future" if self.known_future else "past-only"

    @property
    def label(self) -> str:
        """The model as tables and legends show it: random weights are marked."""
        return model_label(self.model, self.random_weights)

    @property
    def key(self) -> str:
        """A file name for the configuration (unique: the model name is hashed in)."""
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", self.model).strip("_")[:60]
        digest = hashlib.sha1(self.model.encode()).hexdigest()[:6]
        cov = "none" if not self.covariates else "+".join(COVARIATE_SHORT.get(c, c) for c in self.covariates)
        future = "-kf" if self.known_future else ""
        return f"{slug}-{digest}__c{self.context_hours}__h{self.horizon}__{cov}{future}"

    def describe(self) -> str:
        cov = "" if not self.covariates else f", {display_covariates(self.covariates_label)} ({self.covariate_use})"
        return f"{self.label}, context {self.context_hours // 24} d, horizon {self.horizon} h{cov}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "kind": self.kind,
            "random_weights": self.random_weights,
            "context_hours": self.context_hours,
            "horizon": self.horizon,
            "covariates": list(self.covariates),
            "known_future": self.known_future,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Config:
        return cls(
            model=str(data["model"]),
            kind=str(data["kind"]),
            random_weights=bool(data["random_weights"]),
            context_hours=int(data["context_hours"]),
            horizon=int(data["horizon"]),
            covariates=tuple(str(c) for c in data["covariates"]),
            known_future=bool(data["known_future"]),
        )


COVARIATE_SHORT = {"relative_humidity": "rh", "temperature": "temp", "wind_speed": "wind"}
_COVARIATE_DISPLAY = {"relative_humidity": "humidity", "temperature": "temperature", "wind_speed": "wind"}


def display_covariates(label: str) -> str:
    """A covariate label (``none`` or names joined by ``+``) as tables and plots show it:
    ``relative_humidity+wind_speed`` -> ``humidity+wind``."""
    return "+".join(_COVARIATE_DISPLAY.get(name, name) for name in label.split("+"))


RANDOM_MARK = " [random weights]"


def model_label(model: str, random_weights: bool) -> str:
    """``model``, marked ``[random weights]`` when its weights are random (its name says ``random/``
    too for catalog models, but a random checkpoint directory might not)."""
    return model + RANDOM_MARK if random_weights else model


def covariate_sets(mode: str, names: Sequence[str] = COVARIATES) -> list[tuple[str, ...]]:
    """The covariate sets of a mode: ``none`` -> [()], ``all`` -> [(), names], ``combos`` -> every
    subset of ``names`` (2**len, the empty one first), in a fixed order."""
    if mode == "none":
        return [()]
    if mode == "all":
        return [(), tuple(names)]
    if mode == "combos":
        return [combo for k in range(len(names) + 1) for combo in itertools.combinations(names, k)]
    raise SweepError("--covariates", f"must be one of {', '.join(COVARIATE_MODES)}, got {mode!r}")


def configurations(settings: SweepSettings, specs: Mapping[str, ModelSpec]) -> list[Config]:
    """The grid, models first (model, context, horizon, covariates), then the baselines.

    Covariate sets apply to the models that read covariates (Chronos-2) and are listed in
    ``settings.covariate_models`` (default: all of them); the others run once without.
    """
    out: list[Config] = []
    for model in settings.models:
        spec = specs[model]
        chosen = settings.covariate_models is None or model in settings.covariate_models
        sets = covariate_sets(settings.covariates) if spec.supports_covariates and chosen else [()]
        for days, horizon, cov in itertools.product(settings.context_days, settings.horizons, sets):
            kf = settings.known_future and bool(cov)
            out.append(Config(model, "model", spec.random_weights, days * 24, horizon, cov, kf))
    for baseline in settings.baselines:
        for days, horizon in itertools.product(settings.context_days, settings.horizons):
            out.append(Config(baseline, "baseline", False, days * 24, horizon))
    return out


def check_settings(settings: SweepSettings, store: SeriesStore, specs: Mapping[str, ModelSpec]) -> None:
    """Refuse what cannot run, naming the flag: a horizon or context a model cannot take, a
    covariate column a series lacks, a span too short for the longest window."""
    longest_c = max(settings.context_days) * 24
    for name, spec in specs.items():
        too_long = [h for h in settings.horizons if h > spec.max_horizon]
        if too_long:
            raise SweepError(
                "--horizons", f"{too_long} exceed what {name} produces in one pass ({spec.max_horizon} hours)"
            )
        if longest_c > spec.context_length:
            raise SweepError(
                "--context-days",
                f"{max(settings.context_days)} days ({longest_c} h) exceed the context of {name} "
                f"({spec.context_length} points): it would read only the last {spec.context_length}",
            )
    wants_covariates = settings.covariates != "none" and any(
        spec.supports_covariates and (settings.covariate_models is None or name in settings.covariate_models)
        for name, spec in specs.items()
    )
    for sid in settings.series:
        info = store.info(sid)
        if wants_covariates:
            missing = [c for c in COVARIATES if c not in info.covariates]
            if missing:
                raise SweepError(
                    "--covariates", f"series {sid!r} has no column(s) {missing} (it has {info.covariates})"
                )
        lo, hi = span_rows(store, sid, settings.start, settings.end)
        need = longest_c + max(settings.horizons)
        if hi - lo < need:
            raise SweepError(
                "--start/--end",
                f"the span of {sid!r} has {max(0, hi - lo)} hours; the longest context plus the longest "
                f"horizon need {need}",
            )


def default_span(store: SeriesStore, series: Iterable[str]) -> tuple[str | None, str | None]:
    """July to December 2016 (the study's evaluation span) when every series covers it, else the
    whole data (None, None)."""
    infos = [store.info(sid) for sid in series]
    if infos and all(i.start <= EVAL_START and i.end >= EVAL_END - timedelta(hours=1) for i in infos):
        return EVAL_START.isoformat(), EVAL_END.isoformat()
    return None, None


def span_rows(store: SeriesStore, series_id: str, start: str | None, end: str | None) -> tuple[int, int]:
    """Row bounds ``[lo, hi)`` of the span in one series (``hi`` clipped to the data)."""
    data = series_data(store, series_id)
    lo = 0
    hi = data.values.size
    for option, value in (("--start", start), ("--end", end)):
        if value is None:
            continue
        try:
            row = data.row(value)
        except ValueError as exc:
            raise SweepError(option, str(exc)) from None
        if row < 0:
            raise SweepError(option, f"{value} is before the first hour of {series_id!r} ({data.start.isoformat()})")
        if option == "--start":
            lo = row
        else:
            hi = min(row, hi)
    return lo, hi


# ---------------------------------------------------------------------------------------------
# Results and the run directory


@dataclass
class ConfigResult:
    """One finished configuration: its scored windows and, per series, what was skipped."""

    config: Config
    rows: list[dict[str, Any]]
    counts: dict[str, dict[str, int]]
    """Per series: ``windows`` (generated), ``scored``, ``skipped_target_nan``, ``skipped_context_nan``."""
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "counts": self.counts, "seconds": self.seconds, "rows": self.rows}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ConfigResult:
        return cls(
            config=Config.from_dict(data["config"]),
            rows=list(data["rows"]),
            counts={k: dict(v) for k, v in data["counts"].items()},
            seconds=float(data["seconds"]),
        )


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class RunDir:
    """``OUT``: ``settings.json``, and one ``configs/<key>.json`` per finished configuration."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.configs = path / "configs"

    def prepare(self, settings: SweepSettings, *, overwrite: bool) -> None:
        """Create it, or check that it holds the same settings (see :class:`SettingsMismatch`)."""
        settings_file = self.path / "settings.json"
        wanted = settings.to_dict()
        if settings_file.is_file():
            try:
                found = json.loads(settings_file.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                found = None
            if found != wanted:
                if not overwrite:
                    raise SettingsMismatch("--out", _mismatch_message(self.path, found, wanted))
                shutil.rmtree(self.configs, ignore_errors=True)
        self.configs.mkdir(parents=True, exist_ok=True)
        _write_atomic(settings_file, json.dumps(wanted, indent=2) + "\n")

    def file(self, config: Config) -> Path:
        return self.configs / f"{config.key}.json"

    def done(self, config: Config) -> bool:
        return self.file(config).is_file()

    def save(self, result: ConfigResult) -> None:
        _write_atomic(self.file(result.config), json.dumps(result.to_dict()))

    def load(self, config: Config) -> ConfigResult:
        return ConfigResult.from_dict(json.loads(self.file(config).read_text(encoding="utf-8")))


def _mismatch_message(path: Path, found: Mapping[str, Any] | None, wanted: Mapping[str, Any]) -> str:
    if not isinstance(found, Mapping):
        return f"{path} holds an unreadable settings.json; pass --overwrite to replace it, or choose another --out"
    diffs = [
        f"{key} {found.get(key)!r} there, {wanted.get(key)!r} now"
        for key in sorted(set(found) | set(wanted))
        if found.get(key) != wanted.get(key)
    ]
    return (
        f"{path} holds a sweep with other settings ({'; '.join(diffs)}); "
        "re-run with the same settings to resume it, pass --overwrite to replace it, or choose another --out"
    )


# ---------------------------------------------------------------------------------------------
# Progress


class SweepProgress:
    """Progress on a stream (stderr): configurations and windows done, elapsed time and ETA.

    On a terminal the status line is rewritten in place; otherwise a plain line is printed
    every ``every`` seconds and at each finished configuration.
    """

    def __init__(
        self,
        total_configs: int,
        total_windows: int,
        *,
        enabled: bool = True,
        stream: TextIO | None = None,
        every: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.enabled = enabled
        self.every = every if every is not None else (0.5 if self.tty else 5.0)
        self.clock = clock
        self.total_configs, self.total_windows = total_configs, total_windows
        self.configs_done = self.windows_done = 0
        self.skipped_configs = self.skipped_windows = 0
        self.started = clock()
        self.last = -math.inf

    def resumed(self, configs: int, windows: int, out: Path) -> None:
        """``configs`` configurations (``windows`` windows) were already done in ``out``."""
        self.skipped_configs += configs
        self.skipped_windows += windows
        self.configs_done += configs
        self.windows_done += windows
        if configs:
            self._print(
                f"resuming: {configs} of {self.total_configs} configurations already done in {out}; skipping them"
            )

    def windows(self, n: int) -> None:
        self.windows_done += n
        now = self.clock()
        if now - self.last >= self.every:
            self.last = now
            self._status()

    def config_done(self, config: Config, scored: int, seconds: float) -> None:
        self.configs_done += 1
        self._print(
            f"[{self.configs_done}/{self.total_configs}] {config.describe()}: {scored} windows in {seconds:.1f} s"
        )
        if self.tty:
            self._status()

    def status_line(self) -> str:
        elapsed = self.clock() - self.started
        done = self.windows_done - self.skipped_windows
        todo = self.total_windows - self.windows_done
        eta = "?" if done <= 0 else _duration(elapsed / done * todo)
        pct = 100.0 * self.windows_done / self.total_windows if self.total_windows else 100.0
        return (
            f"  eval: {self.configs_done}/{self.total_configs} configurations, "
            f"{self.windows_done}/{self.total_windows} windows ({pct:.0f} %), "
            f"elapsed {_duration(elapsed)}, ETA {eta}"
        )

    def _status(self) -> None:
        if not self.enabled:
            return
        if self.tty:
            print("\r" + self.status_line() + "\033[K", end="", file=self.stream, flush=True)
        else:
            print(self.status_line(), file=self.stream, flush=True)

    def _print(self, line: str) -> None:
        if not self.enabled:
            return
        prefix = "\r\033[K" if self.tty else ""
        print(prefix + line, file=self.stream, flush=True)

    def finish(self) -> None:
        if self.enabled and self.tty:
            print(file=self.stream, flush=True)


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


# ---------------------------------------------------------------------------------------------
# Windows and scoring


@dataclass
class Cell:
    """The windows of one (series, context, horizon), shared by every configuration."""

    series: str
    windows: list[EvalWindow]
    usable: list[EvalWindow] = field(default_factory=list)
    skipped_target: int = 0
    skipped_context: int = 0

    def __post_init__(self) -> None:
        for w in self.windows:
            if w.target_all_nan:
                self.skipped_target += 1
            elif w.context_all_nan:
                self.skipped_context += 1
            else:
                self.usable.append(w)

    def counts(self) -> dict[str, int]:
        return {
            "windows": len(self.windows),
            "scored": len(self.usable),
            "skipped_target_nan": self.skipped_target,
            "skipped_context_nan": self.skipped_context,
        }


class WindowSet:
    """Cuts the windows of each (series, context, horizon) once."""

    def __init__(self, store: SeriesStore, settings: SweepSettings) -> None:
        self.store, self.settings = store, settings
        self._cells: dict[tuple[str, int, int], Cell] = {}

    def cell(self, series: str, context: int, horizon: int) -> Cell:
        key = (series, context, horizon)
        if key not in self._cells:
            s = self.settings
            lo, hi = span_rows(self.store, series, s.start, s.end)
            # Every context and horizon forecasts from the same hours: the first start leaves
            # room for the longest context, the last for the longest horizon.
            windows = store_windows(
                self.store,
                series,
                context=context,
                horizon=horizon,
                stride=s.stride,
                start=lo + max(s.context_days) * 24 - context,
                end=hi - max(s.horizons) + horizon,
                max_windows=s.max_windows,
            )
            self._cells[key] = Cell(series, list(windows))
        return self._cells[key]


def _score(config: Config, w: EvalWindow, median: Any, quantiles: Any, levels: Sequence[float]) -> dict[str, Any]:
    scores = score_window(w.target, median, quantiles, levels, w.history, season=SEASON)
    return {
        "series": w.series,
        "model": config.model,
        "random_weights": config.random_weights,
        "context_days": config.context_hours // 24,
        "context_hours": config.context_hours,
        "horizon_hours": config.horizon,
        "covariates": config.covariates_label,
        "covariate_use": config.covariate_use,
        "window": w.number,
        "forecast_start": w.forecast_time.isoformat() if w.forecast_time is not None else str(w.forecast_start),
        "target_observed": w.target_observed,
        **scores,
    }


def window_request(
    store: SeriesStore, config: Config, w: EvalWindow, levels: Sequence[float] = LEVELS
) -> ForecastRequest:
    """The engine request of one window: its context, and the covariates the config asks for."""
    from chronoserve.request import ForecastRequest

    i, c, h = w.forecast_start, config.context_hours, config.horizon
    past = {name: store.values(w.series, name)[i - c : i] for name in config.covariates} or None
    future = None
    if config.known_future and config.covariates:
        future = {name: store.values(w.series, name)[i : i + h] for name in config.covariates}
    return ForecastRequest(
        model=config.model,
        target=w.context,
        horizon=h,
        quantile_levels=tuple(levels),
        past_covariates=past,
        future_covariates=future,
        request_id=f"{w.series}:{c}:{h}:{w.number}",
    )


async def forecast_all(
    engine: Engine, requests: Sequence[ForecastRequest], on_done: Callable[[int], None] | None = None
) -> list[ForecastResult]:
    """Submit every request to ``engine`` at once (its policy batches them) and wait for all;
    ``on_done(1)`` is called as each finishes. The first error cancels the rest and is raised."""
    futures: list[asyncio.Future[ForecastResult]] = []
    try:
        for request in requests:
            future = await engine.submit(request)
            if on_done is not None:
                future.add_done_callback(lambda f: None if f.cancelled() else on_done(1))
            futures.append(future)
        return list(await asyncio.gather(*futures))
    except BaseException:
        for future in futures:
            future.cancel()
        raise


async def _run_model(
    engine: Engine, store: SeriesStore, config: Config, cells: Sequence[Cell], progress: SweepProgress
) -> ConfigResult:
    started = time.monotonic()
    windows = [w for cell in cells for w in cell.usable]
    requests = [window_request(store, config, w) for w in windows]
    results = await forecast_all(engine, requests, progress.windows)
    rows = [_score(config, w, r.median, r.quantiles, r.quantile_levels) for w, r in zip(windows, results, strict=True)]
    counts = {cell.series: cell.counts() for cell in cells}
    return ConfigResult(config, rows, counts, time.monotonic() - started)


async def _run_baseline(config: Config, cells: Sequence[Cell], progress: SweepProgress) -> ConfigResult:
    started = time.monotonic()
    fn = BASELINES[config.model]
    chunk = _BASELINE_CHUNK.get(config.model, 16)
    rows: list[dict[str, Any]] = []
    for cell in cells:
        for k in range(0, len(cell.usable), chunk):
            part = cell.usable[k : k + chunk]
            forecasts = await asyncio.to_thread(fn, [w.context for w in part], config.horizon, LEVELS)
            rows.extend(_score(config, w, f.median, f.quantiles, LEVELS) for w, f in zip(part, forecasts, strict=True))
            progress.windows(len(part))
    counts = {cell.series: cell.counts() for cell in cells}
    return ConfigResult(config, rows, counts, time.monotonic() - started)


# ---------------------------------------------------------------------------------------------
# Forecast examples for the forecast-against-truth plot


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
                median, quantiles = fc.median, fc.quantiles
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


# ---------------------------------------------------------------------------------------------
# The runner


@dataclass
class SweepResult:
    settings: SweepSettings
    configs: list[Config]
    results: list[ConfigResult]
    """In grid order."""
    resumed: int
    """Configurations found done in ``out`` and not recomputed."""
    examples: list[Example]
    files: list[Path]
    seconds: float


def resolve_models(names: Sequence[str], loader: ModelLoader) -> dict[str, ModelSpec]:
    """Describe each model without loading it (raises :class:`~chronoserve.errors.UnknownModel`)."""
    return {name: loader.resolve(name) for name in names}


async def run_sweep(
    settings: SweepSettings,
    out: str | os.PathLike[str],
    *,
    store: SeriesStore | None = None,
    engine_options: Mapping[str, Any] | None = None,
    specs: Mapping[str, ModelSpec] | None = None,
    overwrite: bool = False,
    progress: bool | SweepProgress = True,
    plots: bool = True,
    plot_days: Sequence[str] | None = None,
    plot_series: str | None = None,
) -> SweepResult:
    """Run (or resume) the sweep into ``out`` and write its report and plots.

    ``engine_options`` are :class:`~chronoserve.Engine`'s arguments (``policy``,
    ``policy_options``, ``workers``, ``loader``, ``observers``...). ``specs`` may give the
    models' resolved specs (else they are resolved here). Raises :class:`SweepError` for
    settings that cannot run and :class:`SettingsMismatch` for an ``out`` that holds another
    sweep.
    """
    from chronoserve.engine import Engine

    started = time.monotonic()
    store = store if store is not None else _open_store(settings.data)
    options = dict(engine_options or {})
    loader = options.get("loader")
    if loader is None:
        from chronoserve.models.loader import ChronosLoader

        loader = ChronosLoader(device=str(options.get("device", "cpu")), dtype=settings.dtype)
        options["loader"] = loader
    options.setdefault("dtype", settings.dtype)
    if specs is None:
        specs = await asyncio.to_thread(resolve_models, settings.models, loader)
    check_settings(settings, store, specs)
    wants_examples = plots and (plot_days is None or len(plot_days) > 0)
    example_args: dict[str, Any] = {}
    if wants_examples:  # checked now, not after the sweep
        sid = plot_series or settings.series[0]
        if sid not in settings.series:
            raise SweepError("--plot-series", f"{sid!r} is not among the series of the sweep {list(settings.series)}")
        days = list(plot_days) if plot_days is not None else default_plot_days(settings, store, sid)
        c_days, h = _closest(settings.context_days, 10), _closest(settings.horizons, 24)
        plot_starts(store, sid, days, context_days=c_days, horizon=h)
        example_args = {"series": sid, "days": days, "context_days": c_days, "horizon": h}
    run_dir = RunDir(Path(out))
    run_dir.prepare(settings, overwrite=overwrite)
    configs = configurations(settings, specs)
    windows = WindowSet(store, settings)

    def n_windows(config: Config) -> int:
        return sum(len(windows.cell(sid, config.context_hours, config.horizon).usable) for sid in settings.series)

    done = [c for c in configs if run_dir.done(c)]
    todo = [c for c in configs if not run_dir.done(c)]
    meter = (
        progress
        if isinstance(progress, SweepProgress)
        else SweepProgress(len(configs), sum(n_windows(c) for c in configs), enabled=bool(progress))
    )
    meter.resumed(len(done), sum(n_windows(c) for c in done), Path(out))

    def cells(config: Config) -> list[Cell]:
        return [windows.cell(sid, config.context_hours, config.horizon) for sid in settings.series]

    def finished(result: ConfigResult) -> None:
        run_dir.save(result)
        meter.config_done(result.config, len(result.rows), result.seconds)

    examples: list[Example] = []
    model_todo = [c for c in todo if c.kind == "model"]
    baseline_todo = [c for c in todo if c.kind == "baseline"]
    needs_engine = bool(model_todo) or (wants_examples and bool(settings.models))
    engine = Engine(**options) if needs_engine else None
    try:
        if engine is not None:
            await engine.start()

        async def model_lane() -> None:
            for config in model_todo:
                assert engine is not None
                finished(await _run_model(engine, store, config, cells(config), meter))

        async def baseline_lane() -> None:
            for config in baseline_todo:
                finished(await _run_baseline(config, cells(config), meter))

        await _both(model_lane(), baseline_lane())
        meter.finish()
        if wants_examples:
            examples = await forecast_examples(engine, store, settings, specs, **example_args)
    except BaseException:
        if engine is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(engine.close(drain=False))
        raise
    if engine is not None:
        await engine.close()

    results = [run_dir.load(c) for c in configs]
    from chronoserve.eval.report import write_report

    files = write_report(Path(out), settings, results, store=store)
    if plots:
        from chronoserve.eval.plots import plot_sweep

        files += plot_sweep(Path(out), settings, results, examples)
    return SweepResult(settings, configs, results, len(done), examples, files, time.monotonic() - started)


def _closest(values: Sequence[int], target: int) -> int:
    return min(values, key=lambda v: (abs(v - target), -v))


async def _both(*coros: Any) -> None:
    """Run the lanes together; the first error is raised and cancels the other lanes."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _open_store(data: str) -> SeriesStore:
    return SeriesStore.embedded() if data == "embedded" else SeriesStore.from_dir(data)
