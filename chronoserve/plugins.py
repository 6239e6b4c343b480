"""Finding and validating scheduling policies.

Policies come from the ``chronoserve.policies`` entry-point group (the built-in ``naive``,
``lru`` and ``batched`` are registered there like any third-party plugin) or from a
``"module:Class"`` reference. Both paths go through :func:`validate_policy`, whose errors
name the plugin and what is wrong with it.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from .errors import PolicyError
from .policy import Policy, SchedulingPolicy

GROUP = "chronoserve.policies"


def policy_entry_points() -> dict[str, EntryPoint]:
    """Installed policies by name. The first distribution to claim a name wins."""
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=GROUP):
        found.setdefault(ep.name, ep)
    return found


def available_policies() -> dict[str, str]:
    """``{name: "module:attr"}`` for every installed policy."""
    return {name: ep.value for name, ep in sorted(policy_entry_points().items())}


def _import_reference(reference: str) -> Any:
    module_name, _, attr = reference.partition(":")
    if not module_name or not attr:
        raise PolicyError(f"policy reference {reference!r} must look like 'package.module:ClassName'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise PolicyError(f"policy {reference!r}: cannot import module {module_name!r} ({exc})") from exc
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise PolicyError(f"policy {reference!r}: module {module_name!r} has no attribute {attr!r}") from None
    return obj


def _describe(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', repr(obj))}"


def validate_policy(obj: Any, plugin: str) -> type[Any]:
    """Check that ``obj`` is a usable policy class and return it.

    A policy class (:class:`~chronoserve.policy.SchedulingPolicy`) has a string ``name``, a
    ``decide(state, now)`` method and a ``describe()`` method. It need not subclass
    :class:`~chronoserve.policy.Policy` (which provides ``describe``).
    """
    where = f"policy plugin {plugin!r} ({_describe(obj)})"
    if not inspect.isclass(obj):
        raise PolicyError(f"{where}: must be a class, got {type(obj).__name__}")
    name = getattr(obj, "name", None)
    if not isinstance(name, str) or not name:
        raise PolicyError(f"{where}: needs a class attribute `name` (a non-empty string)")
    decide = getattr(obj, "decide", None)
    if decide is None or not callable(decide):
        raise PolicyError(f"{where}: has no method `decide(self, state, now)`")
    if inspect.iscoroutinefunction(decide):
        raise PolicyError(f"{where}: `decide` must be a plain method, not async: policies do no I/O")
    if decide is Policy.decide:
        raise PolicyError(f"{where}: does not implement `decide(self, state, now)`")
    try:
        signature = inspect.signature(decide)
        signature.bind(None, "state", 0.0)
    except (TypeError, ValueError):
        raise PolicyError(
            f"{where}: `decide` must accept (self, state, now); found decide{inspect.signature(decide)}"
        ) from None
    describe = getattr(obj, "describe", None)
    if describe is None or not callable(describe):
        raise PolicyError(f"{where}: has no method `describe(self)` (returning its settings; or subclass Policy)")
    if inspect.iscoroutinefunction(describe):
        raise PolicyError(f"{where}: `describe` must be a plain method, not async")
    try:
        inspect.signature(describe).bind(None)
    except (TypeError, ValueError):
        raise PolicyError(f"{where}: `describe` must take no argument but self") from None
    return obj


def _instantiate(cls: type[Any], plugin: str, options: Mapping[str, Any]) -> SchedulingPolicy:
    where = f"policy plugin {plugin!r} ({_describe(cls)})"
    try:
        inspect.signature(cls).bind(**options)
    except TypeError as exc:
        accepted = [p for p in inspect.signature(cls).parameters if p not in ("self", "args", "kwargs")]
        raise PolicyError(f"{where}: bad options {dict(options)!r} ({exc}); it accepts {accepted}") from None
    try:
        policy: SchedulingPolicy = cls(**options)
    except (TypeError, ValueError) as exc:
        raise PolicyError(f"{where}: {exc}") from exc
    return policy


def load_policy(spec: str | SchedulingPolicy | type[Any], options: Mapping[str, Any] | None = None) -> SchedulingPolicy:
    """Return a policy instance for ``spec``: an installed name, ``"module:Class"``, a class or an instance."""
    options = dict(options or {})
    if isinstance(spec, str):
        if ":" in spec:
            cls = validate_policy(_import_reference(spec), spec)
            return _instantiate(cls, spec, options)
        eps = policy_entry_points()
        if spec not in eps:
            known = ", ".join(sorted(eps)) or "none installed"
            raise PolicyError(f"unknown policy {spec!r}; installed policies: {known}; or give 'module:Class'")
        try:
            obj = eps[spec].load()
        except Exception as exc:
            raise PolicyError(f"policy plugin {spec!r} ({eps[spec].value}): failed to load: {exc!r}") from exc
        cls = validate_policy(obj, spec)
        return _instantiate(cls, spec, options)
    if isinstance(spec, type):
        cls = validate_policy(spec, getattr(spec, "name", spec.__name__))
        return _instantiate(cls, cls.name, options)
    validate_policy(type(spec), getattr(spec, "name", type(spec).__name__))
    if options:
        raise PolicyError(f"policy options {options!r} given with a policy instance; set them on the instance")
    return spec
