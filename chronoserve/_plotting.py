"""The matplotlib set-up every PNG of chronoserve shares (replay, eval, edge-bench, training).

matplotlib is imported on first use, with the Agg backend (no display), so importing a
module that draws costs nothing until it draws.
"""

from __future__ import annotations

import os
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


def save(fig: Any, path: str | os.PathLike[str], *, layout: bool = True) -> Path:
    """Write ``fig`` to ``path`` as a PNG (after ``tight_layout`` unless ``layout`` is false,
    for a figure laid out by its caller), close it and return the path."""
    if layout:
        fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    pyplot().close(fig)
    return Path(path)
