"""The windows a sweep scores, cut once per (series, context, horizon) and shared by every configuration.

The windows depend on the data only (:func:`~chronoserve.eval.windows.store_windows`), and
every configuration forecasts from the same hours: the first forecast start leaves room for
the longest context in the span, the last for the longest horizon, whatever the
configuration's own context and horizon. So error against context and against horizon
compare forecasts of the same hours, and the relative scores pair the same windows. A
:class:`Cell` also counts the windows skipped: no observed value over the horizon (nothing to
score) or over the context (nothing to forecast from).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from chronoserve.data import SeriesStore
from chronoserve.eval.grid import SweepSettings, span_rows
from chronoserve.eval.windows import EvalWindow, store_windows


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
