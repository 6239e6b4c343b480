"""Every error chronoserve raises on purpose, so callers can tell them apart.

Each carries a short machine-readable ``reason`` (the HTTP server and the metrics use it)
and, for bad input, the ``field`` that is wrong.
"""

from __future__ import annotations


class ChronoserveError(Exception):
    """Base class of chronoserve's errors.

    They pickle with their message and attributes (not their constructor's arguments), so an
    engine in another process raises in the front end exactly what it raised itself.
    """

    reason = "error"

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), str(self), dict(self.__dict__)))


def _rebuild(cls: type[ChronoserveError], message: str, attributes: dict[str, object]) -> ChronoserveError:
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.__dict__.update(attributes)
    return error


class InvalidRequest(ChronoserveError, ValueError):
    """A request that cannot be served as it is. ``field`` names the culprit."""

    reason = "invalid_request"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class TooCostly(InvalidRequest):
    """The request's estimated cost is over the engine's per-request budget."""

    reason = "too_costly"


class UnknownModel(InvalidRequest):
    """The model name is neither in the catalog, nor a local checkpoint, nor allowed."""

    reason = "unknown_model"

    def __init__(self, name: str, message: str | None = None) -> None:
        super().__init__("model", message or f"unknown model {name!r}")
        self.name = name


class HubNotAllowed(UnknownModel):
    """The model needs a download from the Hugging Face hub, and the operator has not allowed it."""

    reason = "hub_not_allowed"


class ModelLoadError(ChronoserveError):
    """The model could not be loaded; the requests that wanted it fail with this."""

    reason = "model_load_failed"

    def __init__(self, model: str, message: str, retry_after: float | None = None, *, permanent: bool = False) -> None:
        super().__init__(f"could not load model {model!r}: {message}")
        self.model = model
        self.message = message
        self.retry_after = retry_after
        """Seconds until the engine tries this model's load again (None: at the next request)."""
        self.permanent = permanent
        """No retry can help until the operator changes something (the weights are not there, the
        hub is not reachable or not allowed): answered without ``Retry-After``, not retried by clients."""


class ModelBusy(ChronoserveError):
    """The model cannot be unloaded now: it is loading, running a batch, or has requests queued."""

    reason = "model_busy"

    def __init__(self, model: str, why: str) -> None:
        super().__init__(f"model {model!r} cannot be unloaded now: {why}; try again when it is idle")
        self.model = model


class InferenceError(ChronoserveError):
    """The batch this request ran in raised; ``__cause__`` holds the original exception."""

    reason = "inference_failed"


class InferenceTimeout(ChronoserveError):
    """The batch this request ran in was stopped: it ran past the engine's ``max_inference_seconds``."""

    reason = "inference_timeout"


class QueueFull(ChronoserveError):
    """Refused at submission because the engine's queue is at ``max_queue``."""

    reason = "queue_full"

    def __init__(self, limit: int) -> None:
        super().__init__(f"queue full ({limit} requests waiting); retry later")
        self.limit = limit


class EngineClosed(ChronoserveError):
    """The engine is closed or closing and accepts no new requests; or it closed before serving this one."""

    reason = "engine_closed"


class EngineUnavailable(ChronoserveError):
    """The engine process is not there: starting, restarting after it died, or gone.

    A front-end process (``chronoserve serve --http-workers N``) answers with it (HTTP 503 with
    ``Retry-After``); requests that were in the engine when it died fail with it too.
    """

    reason = "engine_unavailable"

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Rejected(ChronoserveError):
    """The policy refused the request (for example: its model can never fit the memory budget)."""

    reason = "rejected"


def _ms(seconds: float) -> str:
    """``0.15`` -> ``150 ms``; under a millisecond, three significant digits (``1e-06`` -> ``0.001 ms``)."""
    ms = seconds * 1000
    return f"{ms:.0f} ms" if abs(ms) >= 1 else f"{ms:.3g} ms"


class DeadlineUnmeetable(ChronoserveError):
    """Refused because its deadline cannot be met: the cost model predicts a later answer.

    ``budget`` is the request's time budget and ``predicted`` the predicted time to its answer,
    both in seconds from its arrival (``predicted`` None when unknown); ``retry_after`` when a
    retry might fare better.
    """

    reason = "deadline_unmeetable"

    def __init__(self, budget: float, predicted: float | None, retry_after: float | None = None) -> None:
        when = "" if predicted is None else f": its answer is predicted {_ms(predicted)} after arrival"
        super().__init__(f"deadline of {_ms(budget)} cannot be met{when}")
        self.budget = budget
        self.predicted = predicted
        self.retry_after = retry_after


class DeadlineExpired(ChronoserveError):
    """Its deadline passed while it waited: it was never run (nothing runs after its deadline)."""

    reason = "deadline_expired"

    def __init__(self, budget: float) -> None:
        super().__init__(f"deadline of {_ms(budget)} passed while the request was queued; it was not run")
        self.budget = budget


class PolicyError(ChronoserveError):
    """A policy plugin is invalid, or returned a decision the engine cannot carry out."""

    reason = "policy_error"
