"""One registry for targets, by name (the way timm creates models by name).

Each target module registers a factory with :func:`register_target`; :func:`create_target` is the one
constructor everything else uses. A factory raises :class:`~ghostmesh_daemon.errors.ModelUnavailable`
when its weights cannot be found, naming how to get them.

A target registered with ``auto=False`` is built only when named: ``--targets auto`` leaves it out. That
is for held-out judges (``mobilefacenet``), which measure whether protection transfers to a model it was
not optimised against, and would stop being held out if ``auto`` optimised against them.
"""

from __future__ import annotations

from typing import Callable, TypeVar

from .base import Target

Factory = Callable[..., Target]
F = TypeVar("F", bound=Factory)

_FACTORIES: dict[str, Factory] = {}
_NOT_AUTO: set[str] = set()


def register_target(name: str, *, auto: bool = True) -> Callable[[F], F]:
    """Decorator registering ``factory`` under ``name``; registering a name twice is an error.

    ``auto=False`` keeps the target out of ``--targets auto`` (see :func:`list_targets`).
    """

    def wrap(factory: F) -> F:
        if name in _FACTORIES:
            raise ValueError(f"target {name!r} is already registered by {_FACTORIES[name].__module__}")
        _FACTORIES[name] = factory
        if not auto:
            _NOT_AUTO.add(name)
        return factory

    return wrap


def create_target(name: str, **kwargs) -> Target:
    """Build the target called ``name``, frozen; unknown names list the known ones.

    Frozen (no parameter requires a gradient) because only the pixels are optimized: a weight that
    requires one makes every backward pass also compute and store the weight gradients, which for a
    convolution costs about as much as the input gradient itself.
    """
    try:
        factory = _FACTORIES[name]
    except KeyError:
        known = ", ".join(sorted(_FACTORIES)) or "none"
        raise ValueError(f"unknown target {name!r} (known: {known})") from None
    return factory(**kwargs).requires_grad_(False).eval()


def list_targets(*, auto: bool = False) -> list[str]:
    """Names of every registered target, sorted; with ``auto=True`` only those ``--targets auto`` uses."""
    return sorted(n for n in _FACTORIES if not (auto and n in _NOT_AUTO))
