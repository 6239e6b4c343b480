"""The built-in scheduling policies. Each is an ordinary plugin of the ``chronoserve.policies``
entry-point group, loaded exactly as a third-party policy is."""

from .adaptive import AdaptiveDispatcherPolicy
from .batched import BatchedPolicy
from .deadline import DeadlinePolicy
from .lru import LRUPolicy
from .naive import NaivePolicy

__all__ = ["AdaptiveDispatcherPolicy", "BatchedPolicy", "DeadlinePolicy", "LRUPolicy", "NaivePolicy"]
