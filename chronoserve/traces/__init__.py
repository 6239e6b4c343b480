"""Request traces for ``chronoserve replay``: the JSONL format, a synthetic generator, retiming.

A trace is a JSONL file, one request a line (``t``, the send offset in seconds, and the
fields of ``POST /forecast``), sorted by ``t``, with an optional ``{"meta": {...}}`` first
line; docs/traces.md describes it. A request may carry ``deadline_ms`` and ``priority``
(sent to the server) and ``deadline_class`` (the generator's class name, for per-class
reports). :func:`read_trace` and :func:`write_trace` read and write one; :func:`generate`
makes a synthetic one from a seed (with :class:`DeadlineClass` objects and the ``onoff``
bursty arrivals if asked); :func:`retime` and :func:`scale_time` change when its requests
are sent; :func:`check_trace` says which requests the data or the models cannot serve.

Importing this package is cheap: numpy, the standard library and :mod:`chronoserve.data`.
"""

from __future__ import annotations

from ._format import (
    KNOWN_KEYS,
    MAX_CLASS_NAME,
    MAX_DEADLINE_MS,
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
    DEFAULT_BURST_FACTOR,
    DEFAULT_BURST_SECONDS,
    DEFAULT_BURST_SHARE,
    DEFAULT_CONTEXT_DAYS,
    DEFAULT_HORIZONS,
    DEFAULT_MODELS,
    DEFAULT_PHASE_CV,
    RETIME_ARRIVALS,
    DeadlineClass,
    arrival_times,
    check_trace,
    generate,
    retime,
    scale_time,
)

__all__ = [
    "ARRIVALS",
    "CREATED_BY",
    "DEFAULT_BURST_FACTOR",
    "DEFAULT_BURST_SECONDS",
    "DEFAULT_BURST_SHARE",
    "DEFAULT_CONTEXT_DAYS",
    "DEFAULT_HORIZONS",
    "DEFAULT_MODELS",
    "DEFAULT_PHASE_CV",
    "KNOWN_KEYS",
    "MAX_CLASS_NAME",
    "MAX_DEADLINE_MS",
    "OPTIONAL_KEYS",
    "REQUIRED_KEYS",
    "RETIME_ARRIVALS",
    "DeadlineClass",
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
