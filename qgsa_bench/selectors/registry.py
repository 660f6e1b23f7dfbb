"""The one registry of selectors, filled where each selector is defined (`@register`, as timm's
`register_model`): the name users type -> the class. Raises QGSAError for an unknown name."""

from __future__ import annotations

from qgsa_bench import QGSAError
from qgsa_bench.selectors.base import Selector

REGISTRY: dict[str, type[Selector]] = {}


def register(cls: type[Selector]) -> type[Selector]:
    """Class decorator: make `cls` available under `cls.name` (a name may be registered once)."""
    if cls.name in REGISTRY and REGISTRY[cls.name] is not cls:
        raise ValueError(f"selector name '{cls.name}' registered twice ({REGISTRY[cls.name].__qualname__}, "
                         f"{cls.__qualname__})")
    REGISTRY[cls.name] = cls
    return cls


def selector_class(name: str) -> type[Selector]:
    """The registered class of `name`; QGSAError naming every registered selector otherwise."""
    if name not in REGISTRY:
        raise QGSAError(f"unknown selector '{name}': use one of {', '.join(REGISTRY)}")
    return REGISTRY[name]


def names() -> tuple[str, ...]:
    """Every registered name, in registration order."""
    return tuple(REGISTRY)
