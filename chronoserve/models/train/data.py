"""The data a training run reads, and what it hands to ``fit``.

:func:`load_sites` reads each ``<site>.csv`` through the series store's reader
(:func:`chronoserve.data.read_series`) and keeps the rows of the span, refusing a span that
reaches the evaluation span; :func:`training_inputs` and :func:`validation_inputs` turn the
sites into upstream ``PreparedInput`` dicts (:func:`prepared_input`), every site in each of
the covariate variants; :func:`check_inputs_in_span` is the last guard before ``fit``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from chronoserve.data import TARGET, TIMESTAMP, read_series

from .settings import EVAL_START, TrainingError, check_span

FloatArray = npt.NDArray[np.float32]

#: The covariates every training CSV has, in the order of ``SiteData.values``' rows 1 to 3.
COVARIATES: tuple[str, ...] = ("relative_humidity", "temperature", "wind_speed")

_HOUR = timedelta(hours=1)


@dataclass(frozen=True)
class SiteData:
    """One site's hourly rows inside a span: ``values`` is ``(4, T)``, PM2.5 then the covariates."""

    name: str
    start: datetime
    """The hour of column 0."""
    values: FloatArray

    @property
    def hours(self) -> int:
        return int(self.values.shape[1])

    @property
    def end(self) -> datetime:
        """The hour of the last column."""
        return self.start + timedelta(hours=self.hours - 1)


def site_files(data_dir: str | os.PathLike[str], sites: Sequence[str] | None = None) -> list[Path]:
    """The ``<site>.csv`` files of ``data_dir`` (all, sorted, or the named ``sites``)."""
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise TrainingError("data", f"no such directory: {root}")
    if sites is None:
        files = sorted(root.glob("*.csv"))
        if not files:
            raise TrainingError("data", f"{root} holds no <site>.csv files")
        return files
    files = []
    for site in sites:
        path = root / f"{site}.csv"
        if not path.is_file():
            raise TrainingError("sites", f"no {path}")
        files.append(path)
    return files


def read_site(path: Path, start: datetime, end: datetime) -> SiteData:
    """The rows of ``path`` with ``start <= timestamp <= end``: PM2.5, then :data:`COVARIATES`.

    The file is read by :func:`chronoserve.data.read_series` (rows exactly one hour apart, empty
    cells NaN); only the span's rows are kept. Raises :class:`TrainingError` (field ``data``) for
    a file the reader refuses, a missing column, or no row in the span.
    """
    try:
        series = read_series(path)
    except ValueError as exc:
        raise TrainingError("data", str(exc)) from None
    missing = [c for c in COVARIATES if c not in series.covariates]
    if missing:
        columns = [TIMESTAMP, *series.covariates, TARGET]
        raise TrainingError("data", f"{path} has no column(s) {missing} (columns: {columns})")
    first = max(0, -((series.start - start) // _HOUR))  # the first row at or after ``start``
    stop = min(series.rows, (end - series.start) // _HOUR + 1)  # after the last row at or before ``end``
    if stop <= first:
        raise TrainingError("data", f"{path} has no rows between {start} and {end}")
    last = series.start + (stop - 1) * _HOUR
    if last >= EVAL_START:  # never reached: ``end`` is checked before the eval span; this is the guard
        raise TrainingError("end", f"{path}: a row at {last} is in the evaluation span")
    values = np.stack([series.target[first:stop], *(series.covariates[c][first:stop] for c in COVARIATES)])
    return SiteData(name=path.stem, start=series.start + first * _HOUR, values=values)


def load_sites(
    data_dir: str | os.PathLike[str], start: datetime, end: datetime, sites: Sequence[str] | None = None
) -> list[SiteData]:
    """Every site's rows in ``start``..``end`` (inclusive); ``end`` must be before :data:`EVAL_START`."""
    check_span(start, end)
    loaded = [read_site(path, start, end) for path in site_files(data_dir, sites)]
    for site in loaded:
        if site.end >= EVAL_START or site.start < start:
            raise TrainingError("end", f"site {site.name} has rows {site.start}..{site.end} outside the span")
    return loaded


def check_inputs_in_span(sites: Sequence[SiteData], last: datetime) -> None:
    """The guard on what reaches ``fit``: no site's rows end after ``last`` or in the eval span."""
    for site in sites:
        if site.end > last or site.end >= EVAL_START:
            raise TrainingError("end", f"site {site.name} reaches {site.end}, after {last}")


def prepared_input(values: FloatArray, variant: str, horizon: int = 0) -> dict[str, Any]:
    """A ``PreparedInput`` for ``fit`` or ``predict``: PM2.5 with covariates as ``variant`` says.

    ``values`` is ``(4, T)`` (PM2.5, then :data:`COVARIATES`). ``none``: the target alone;
    ``past``: the covariates as past-only rows; ``future``: as known-future rows (the last rows,
    which ``Chronos2Dataset`` reads for the horizon). ``horizon`` sizes ``future_covariates``
    (``predict`` reads it; ``fit`` rebuilds it from the context and only needs its row count).
    """
    import torch

    rows = values[:1] if variant == "none" else values
    n_cov = rows.shape[0] - 1
    n_future = n_cov if variant == "future" else 0
    return {
        "context": torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32)),
        "future_covariates": torch.full((rows.shape[0], horizon), math.nan, dtype=torch.float32),
        "n_targets": 1,
        "n_covariates": n_cov,
        "n_future_covariates": n_future,
    }


def training_inputs(
    sites: Sequence[SiteData],
    variants: Sequence[str],
    *,
    short_fraction: float = 0.0,
    min_length: int = 0,
    max_length: int = 0,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """What ``fit`` trains on: each site once per variant, plus short pieces for short contexts.

    ``Chronos2Dataset`` cuts a training window at a uniform point of a uniformly drawn input and
    keeps the ``context_length`` hours before it, so whole multi-year series almost always give
    full-length contexts. With ``short_fraction > 0`` each site is also cut into consecutive
    pieces of ``min_length``..``max_length`` hours (lengths drawn from ``seed``), each piece in
    every variant; the whole series are repeated (the same tensors, no copy) so that about
    ``short_fraction`` of the draws land on a piece, whose context is shorter than
    ``max_length``. The order is fixed: whole series (sites by name, then variants), then pieces.
    """
    ordered = sorted(sites, key=lambda s: s.name)
    whole = [prepared_input(s.values, v) for s in ordered for v in variants]
    if short_fraction <= 0.0:
        return whole
    if not 0.0 < short_fraction < 1.0:
        raise TrainingError("short-contexts", f"must be in [0, 1), got {short_fraction!r}")
    if not 0 < min_length <= max_length:
        raise ValueError(f"piece lengths must satisfy 0 < min_length <= max_length, got {min_length}, {max_length}")
    rng = np.random.default_rng(seed)
    pieces: list[dict[str, Any]] = []
    for site in ordered:
        start = 0
        while start + min_length <= site.hours:
            length = int(rng.integers(min_length, max_length + 1))
            piece = site.values[:, start : start + length]
            start += length
            if piece.shape[1] >= min_length and np.isfinite(piece[0]).any():
                pieces.extend(prepared_input(piece, v) for v in variants)
    repeats = max(1, round(len(pieces) * (1.0 - short_fraction) / (short_fraction * len(whole))))
    return whole * repeats + pieces


def validation_inputs(
    sites: Sequence[SiteData], first: datetime, context_length: int, horizon: int, stride: int
) -> list[dict[str, Any]]:
    """Windows for ``fit``'s validation loss: per site, each ends ``horizon`` hours after a cut.

    Cuts are every ``stride`` hours from ``first``; upstream's VALIDATION mode scores the last
    ``horizon`` hours of each input from the ``context_length`` hours before them (past-only
    covariates, the serving default).
    """
    out = []
    for site in sites:
        offset = int((first - site.start) / timedelta(hours=1))
        for cut in range(max(offset, context_length), site.hours - horizon + 1, stride):
            out.append(prepared_input(site.values[:, cut - context_length : cut + horizon], "past"))
    if not out:
        raise TrainingError("validation", "the held-out slice is too short for one window")
    return out
