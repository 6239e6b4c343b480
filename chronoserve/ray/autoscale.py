"""Autoscaling the engine deployment on chronoserve's own signals: predicted wait and queue depth.

Ray Serve's default policy scales on requests in flight per replica, which says little about an
engine that batches: 200 short Bolt requests are one batch of work, 20 long Chronos-2 requests
with covariates are many. Each replica reports instead (``record_autoscaling_stats``,
:mod:`.replica`) its engine's *predicted wait* (seconds until a worker is free for new work:
what is queued and running, from its cost model) and its *queue depth*. :class:`PredictedWait`
asks for as many replicas as keep the predicted wait at ``target_wait_s`` and the queue at
``target_queue`` per replica, the larger of the two; Ray then applies the deployment's
``min_replicas``/``max_replicas``, up/down-scaling delays and factors to that number.

:func:`desired_replicas` is the rule itself (pure, no Ray).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

#: The policy's import path, as Ray's ``AutoscalingPolicy(policy_function=...)`` takes it.
POLICY = "chronoserve.ray.autoscale:PredictedWait"


def desired_replicas(
    current: int,
    waits: Sequence[float],
    queued: Sequence[float],
    waiting_for_a_replica: float = 0.0,
    *,
    target_wait_s: float = 0.5,
    target_queue: float = 64.0,
) -> float:
    """Replicas that would hold the predicted wait at ``target_wait_s`` and the queue at
    ``target_queue`` each (the larger), from each replica's ``waits`` (seconds) and ``queued``
    (requests), and the requests ``waiting_for_a_replica`` at the handles. With no report yet:
    ``current`` (nothing known, nothing changed)."""
    if not waits and not queued and not waiting_for_a_replica:
        return float(current)
    by_wait = sum(waits) / target_wait_s
    by_queue = (sum(queued) + waiting_for_a_replica) / target_queue
    return max(by_wait, by_queue)


class PredictedWait:
    """A Ray Serve autoscaling policy (``AutoscalingPolicy(policy_function=POLICY,
    policy_kwargs={...})``): :func:`desired_replicas` on the replicas' reports."""

    def __init__(self, target_wait_s: float = 0.5, target_queue: float = 64.0) -> None:
        if not target_wait_s > 0 or not target_queue > 0:
            raise ValueError("target_wait_s and target_queue must be positive")
        self.target_wait_s = float(target_wait_s)
        self.target_queue = float(target_queue)

    def __call__(self, ctx: Any) -> tuple[float, dict[str, Any]]:
        metrics: Mapping[str, Mapping[Any, float]] = ctx.aggregated_metrics or {}
        desired = desired_replicas(
            ctx.current_num_replicas,
            list(metrics.get("wait_seconds", {}).values()),
            list(metrics.get("queued", {}).values()),
            float(ctx.total_queued_requests or 0.0),
            target_wait_s=self.target_wait_s,
            target_queue=self.target_queue,
        )
        return desired, {}
