"""The matplotlib set-up every PNG of chronoserve shares (replay, eval, edge-bench, training).

matplotlib is imported on first use, with the Agg backend (no display), so importing a
module that draws costs nothing until it draws.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Any

#: Resolution of every PNG chronoserve writes.
DPI = 110


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def fit_suptitle(fig: Any, margin: float = 0.96) -> None:
    """Wrap ``fig``'s suptitle onto more lines until it fits the figure's width (a title longer
    than the figure was cut on both sides)."""
    title = getattr(fig, "_suptitle", None)
    if title is None or not title.get_text():
        return
    renderer = fig.canvas.get_renderer()
    room = fig.get_window_extent(renderer).width * margin
    text = " ".join(title.get_text().split())
    chars = len(text)
    while chars > 20 and title.get_window_extent(renderer).width > room:
        chars = int(chars * 0.9)
        title.set_text(textwrap.fill(text, chars))


def save(fig: Any, path: str | os.PathLike[str], *, layout: bool = True) -> Path:
    """Write ``fig`` to ``path`` as a PNG (its suptitle wrapped to fit; after ``tight_layout``
    unless ``layout`` is false, for a figure laid out by its caller), close it and return the path."""
    fit_suptitle(fig)
    if layout:
        fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    pyplot().close(fig)
    return Path(path)


def legend_outside(ax: Any, **options: Any) -> None:
    """The axes' legend beside them, on the right, where it covers no data."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, fontsize=8, **options)


def plain_log_axis(axis: Any) -> None:
    """Tick labels of a log axis as plain numbers (``20,000``, ``0.5``) rather than ``2×10⁴``; the
    minor ticks at 2 and 5 labelled too where the axis spans under two decades (wider, they crowd)."""
    import math

    from matplotlib.ticker import FuncFormatter

    def label(value: float, _: object = None) -> str:
        return f"{value:,.0f}" if value >= 1000 else f"{value:g}"

    def minor(value: float, _: object) -> str:
        low, high = sorted(axis.get_view_interval())
        narrow = low > 0 and math.log10(high / low) < 2.0
        return label(value) if narrow and _leading_digit(value) in (2, 5) else ""

    axis.set_major_formatter(FuncFormatter(label))
    axis.set_minor_formatter(FuncFormatter(minor))


def _leading_digit(value: float) -> int:
    """The first significant digit of ``value`` (> 0): minor ticks labelled at 2 and 5 only."""
    import math

    if value <= 0:
        return 0
    return int(round(value / 10 ** math.floor(math.log10(value)), 6))
