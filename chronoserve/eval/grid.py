"""The grid of ``chronoserve eval``: its settings, its configurations and their checks.

A *configuration* is one model (a Chronos model or a baseline), one context length, one
horizon and one covariate set; :func:`configurations` lists them for a
:class:`SweepSettings`, :func:`check_settings` refuses settings that cannot run with a
:class:`SweepError` naming the flag at fault. The runner is :mod:`chronoserve.eval.sweep`.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from chronoserve.data import SeriesStore
from chronoserve.eval.baselines import BASELINES
from chronoserve.eval.windows import series_data
from chronoserve.request import DEFAULT_QUANTILES

if TYPE_CHECKING:
    from chronoserve.models.base import ModelSpec

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
BASELINE_CHUNK = {"naive": 4096, "seasonal_naive": 4096, "auto_theta": 16, "auto_arima": 2}
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
    backend: str = "torch"
    """What runs the models (``torch``, ``onnx``): int8 answers differ between them."""
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
            # Recorded only where it is not torch, so sweeps run before it existed still resume.
            **({"backend": self.backend} if self.backend != "torch" else {}),
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
