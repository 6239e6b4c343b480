"""The blocking part of a batch, as a worker thread runs it: a private load if asked, the model, checks.

The engine hands :func:`run_job` to its executor; everything here runs off the event loop.
"""

from __future__ import annotations

from dataclasses import dataclass

from .clock import Clock
from .errors import ChronoserveError, InferenceError, ModelLoadError
from .models.base import BackendForecast, ModelBackend, ModelLoader, ModelSpec, PreparedRequest
from .stopping import StopSignal, watching


@dataclass(slots=True)
class BatchOutcome:
    forecasts: list[BackendForecast]
    load_seconds: float
    inference_seconds: float
    started: float
    """When the model began on the batch (engine clock): its run is ``[started, started + inference_seconds]``."""


def run_job(
    clock: Clock,
    loader: ModelLoader,
    spec: ModelSpec,
    backend: ModelBackend | None,
    batch: list[PreparedRequest],
    signal: StopSignal,
) -> BatchOutcome:
    """The blocking part of a batch, run in a worker: load a private copy if asked (``naive``), predict.

    ``signal`` is the thread's current stop signal meanwhile (see :mod:`chronoserve.stopping`).
    """
    signal.check()  # stopped while it waited for a worker: do not start
    load_seconds = 0.0
    private = backend is None
    if backend is None:
        start = clock.now()
        try:
            backend = loader.load(spec)
        except ChronoserveError:
            raise
        except Exception as exc:
            raise ModelLoadError(spec.name, repr(exc)) from exc
        load_seconds = clock.now() - start
    try:
        start = signal.started = clock.now()  # read by the engine: the batch runs from here
        with watching(signal):
            forecasts = backend.predict(batch)
        inference_seconds = clock.now() - start
    finally:
        if private:
            backend.close()
    if len(forecasts) != len(batch):
        raise InferenceError(f"{spec.name} returned {len(forecasts)} forecasts for {len(batch)} requests")
    return BatchOutcome(forecasts, load_seconds, inference_seconds, start)
