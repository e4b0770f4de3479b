"""One registry for targets, by name (the way timm creates models by name).

Each target module registers a factory with :func:`register_target`; :func:`create_target` is the one
constructor everything else uses. A factory raises :class:`~ghostmesh_daemon.errors.ModelUnavailable`
when its weights cannot be found, naming how to get them.
"""

from __future__ import annotations

from typing import Callable, TypeVar

from .base import Target

Factory = Callable[..., Target]
F = TypeVar("F", bound=Factory)

_FACTORIES: dict[str, Factory] = {}


def register_target(name: str) -> Callable[[F], F]:
    """Decorator registering ``factory`` under ``name``; registering a name twice is an error."""

    def wrap(factory: F) -> F:
        if name in _FACTORIES:
            raise ValueError(f"target {name!r} is already registered by {_FACTORIES[name].__module__}")
        _FACTORIES[name] = factory
        return factory

    return wrap


def create_target(name: str, **kwargs) -> Target:
    """Build the target called ``name``; unknown names list the known ones."""
    try:
        factory = _FACTORIES[name]
    except KeyError:
        known = ", ".join(sorted(_FACTORIES)) or "none"
        raise ValueError(f"unknown target {name!r} (known: {known})") from None
    return factory(**kwargs)


def list_targets() -> list[str]:
    """Names of every registered target, sorted."""
    return sorted(_FACTORIES)
