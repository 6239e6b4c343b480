"""Engine events, for metrics and logs: subclass :class:`EngineObserver`, override what you need.

Observers are called on the event loop, synchronously, as things happen: keep them cheap
(increment a counter, observe a histogram). An observer that raises is logged and ignored.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .costs import BatchCost
    from .request import ForecastResult


class EngineObserver:
    """Base class: every method is optional and does nothing."""

    def request_accepted(self, model: str) -> None:
        """A request passed validation and joined its model's queue."""

    def request_rejected(self, model: str, reason: str) -> None:
        """A request was refused before queueing.

        ``reason``: ``invalid_request``, ``unknown_model``, ``queue_full`` or ``engine_closed``.
        """

    def request_finished(self, model: str, status: str, result: ForecastResult | None) -> None:
        """An accepted request ended: ``ok`` (with its result), ``cancelled``, or an error reason
        (``model_load_failed``, ``inference_failed``, ``rejected``, ``engine_closed``, ``policy_error``)."""

    def batch_finished(self, model: str, size: int, inference_seconds: float, ok: bool) -> None:
        """A batch ran (``ok=False``: it raised)."""

    def batch_cost(self, cost: BatchCost) -> None:
        """A batch ran: what the cost model predicted when it was dispatched, what it took, and
        the features it learned from (the co-located load as it was over the batch's run)."""

    def deadline_outcome(self, model: str, priority: int | None, outcome: str) -> None:
        """A request with a deadline ended: ``met`` (answered in time), ``late`` (answered after it),
        ``deadline_unmeetable`` (shed), ``deadline_expired`` (it passed in the queue) or ``failed``."""

    def model_loaded(self, model: str, seconds: float, nbytes: int) -> None:
        """A model became resident (or, for ``naive``, a private copy was loaded for one batch)."""

    def model_load_failed(self, model: str, reason: str) -> None:
        """A model load failed."""

    def model_evicted(self, model: str) -> None:
        """A resident model was dropped."""

    def model_moved(self, model: str, source: str, target: str, seconds: float) -> None:
        """A model's weights moved between tiers (``resident``, ``host``, ``disk``, ``hub``; see
        :mod:`chronoserve.tiers`): a load is a move to ``resident`` from where it loaded (``seconds``:
        how long the load ran), an eviction one from ``resident`` to ``host`` (demoted) or lower,
        and the host tier dropping a copy one from ``host`` down (``seconds`` 0 for both)."""
