"""``chronoserve replay``: send a trace open loop, measure with HDR histograms, plot.

In-process by default (the same engine the server uses), or against a server with a URL.
Names are imported on first use, so the CLI's ``--help`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "HTTPTarget",
    "InProcessTarget",
    "Outcome",
    "Record",
    "ReplayResult",
    "Summary",
    "Target",
    "format_table",
    "preload_torch",
    "replay",
    "run_trace",
    "summarize",
    "write_outputs",
]

_WHERE = {
    "HTTPTarget": "targets",
    "InProcessTarget": "targets",
    "Outcome": "targets",
    "Target": "targets",
    "preload_torch": "targets",
    "Record": "runner",
    "run_trace": "runner",
    "Summary": "report",
    "format_table": "report",
    "summarize": "report",
    "write_outputs": "report",
    "ReplayResult": "_api",
    "replay": "_api",
}

if TYPE_CHECKING:
    from ._api import ReplayResult, replay
    from .report import Summary, format_table, summarize, write_outputs
    from .runner import Record, run_trace
    from .targets import HTTPTarget, InProcessTarget, Outcome, Target, preload_torch


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'chronoserve.replay' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"chronoserve.replay.{_WHERE[name]}"), name)
    globals()[name] = value
    return value
