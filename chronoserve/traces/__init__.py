"""Request traces for ``chronoserve replay``: the JSONL format, a synthetic generator, retiming.

A trace is a JSONL file, one request a line (``t``, the send offset in seconds, and the
fields of ``POST /forecast``), sorted by ``t``, with an optional ``{"meta": {...}}`` first
line; docs/traces.md describes it. :func:`read_trace` and :func:`write_trace` read and write
one; :func:`generate` makes a synthetic one from a seed; :func:`retime` and
:func:`scale_time` change when its requests are sent; :func:`check_trace` says which
requests the data or the models cannot serve.

Importing this package is cheap: numpy, the standard library and :mod:`chronoserve.data`.
"""

from __future__ import annotations

from ._format import (
    KNOWN_KEYS,
    OPTIONAL_KEYS,
    REQUIRED_KEYS,
    Trace,
    TraceError,
    TraceRequest,
    dumps_trace,
    loads_trace,
    read_trace,
    write_trace,
)
from ._generate import (
    ARRIVALS,
    CREATED_BY,
    DEFAULT_CONTEXT_DAYS,
    DEFAULT_HORIZONS,
    DEFAULT_MODELS,
    RETIME_ARRIVALS,
    arrival_times,
    check_trace,
    generate,
    retime,
    scale_time,
)

__all__ = [
    "ARRIVALS",
    "CREATED_BY",
    "DEFAULT_CONTEXT_DAYS",
    "DEFAULT_HORIZONS",
    "DEFAULT_MODELS",
    "KNOWN_KEYS",
    "OPTIONAL_KEYS",
    "REQUIRED_KEYS",
    "RETIME_ARRIVALS",
    "Trace",
    "TraceError",
    "TraceRequest",
    "arrival_times",
    "check_trace",
    "dumps_trace",
    "generate",
    "loads_trace",
    "read_trace",
    "retime",
    "scale_time",
    "write_trace",
]
