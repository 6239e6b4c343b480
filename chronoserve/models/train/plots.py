"""The loss-curve plot of training runs, from their ``training.json`` records (matplotlib)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np


def plot_loss(records: Mapping[str, Mapping[str, Any]], path: str | os.PathLike[str]) -> Path:
    """A PNG of the training (and validation) loss curves of ``training.json`` records, by label.

    The losses are upstream's: the quantile loss summed over the 21 levels, averaged over the
    horizon and over a batch's rows (covariate rows count as zero), on standardised values; so
    validation windows, three quarters covariate rows, score lower than mixed training batches.
    """
    from chronoserve._plotting import pyplot, save

    fig, ax = pyplot().subplots(figsize=(9, 4.8))
    for label, record in records.items():
        loss = record["loss"]
        train_curve = np.asarray(loss["train_curve"], dtype=np.float64).reshape(-1, 2)
        if len(train_curve):
            (line,) = ax.plot(train_curve[:, 0], train_curve[:, 1], lw=1.2, alpha=0.85, label=f"{label}: training")
            val = np.asarray(loss["validation_curve"], dtype=np.float64).reshape(-1, 2)
            if len(val):
                ax.plot(val[:, 0], val[:, 1], "o--", color=line.get_color(), label=f"{label}: held-out validation")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("quantile loss (upstream fit's, standardised units)")
    ax.set_title("chronos-2-pm25: loss while training from random initialisation (2 CPU cores)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.text(
        0.01,
        0.01,
        "Losses average over every row of a batch, and covariate rows count 0: the validation windows\n"
        "(3 covariate rows each) sit lower than the mixed training batches. Compare trends, not levels.",
        fontsize=8,
        color="0.3",
    )
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    return save(fig, out, layout=False)
