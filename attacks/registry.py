"""Attack registry: ``create_attack("pgd-linf")`` builds a configured attack by name."""

from __future__ import annotations

import contextlib
import fnmatch
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from attacks.base import Attack
from results.errors import UnknownNameError
from results.vocabulary import Traits


@dataclass(frozen=True)
class AttackSpec:
    name: str
    factory: Callable[..., Attack]
    norm: str
    description: str
    defaults: dict[str, Any]
    traits: Traits


_ATTACKS: dict[str, AttackSpec] = {}


def register_attack(name: str, factory: Callable[..., Attack], *, description: str,
                    traits: Traits, **defaults: Any) -> None:
    """Register ``factory(**defaults)`` under ``name`` (the factory is usually the class),
    with the traits that every cell of it records (see :mod:`results.vocabulary`)."""
    if name in _ATTACKS:
        raise ValueError(f"attack {name!r} is registered twice")
    probe = factory(**defaults)
    if traits.uses_gradients != probe.uses_gradients:
        raise ValueError(f"attack {name!r}: traits say uses_gradients={traits.uses_gradients}, "
                         f"the class says {probe.uses_gradients}")
    _ATTACKS[name] = AttackSpec(name, factory, probe.norm, description, dict(defaults), traits)


@contextlib.contextmanager
def registered(name: str, factory: Callable[..., Attack], *, description: str, traits: Traits,
               replace: bool = False, **defaults: Any) -> Iterator[AttackSpec]:
    """Register an attack for the duration of a ``with`` block (a test, an experiment in a
    notebook). With ``replace`` it stands in for the attack registered under ``name``, which
    is back afterwards (e.g. the same attack with fewer steps)."""
    previous = _ATTACKS.get(name)
    if previous is not None and not replace:
        raise ValueError(f"attack {name!r} is registered; pass replace=True to stand in for it")
    _ATTACKS.pop(name, None)
    try:
        register_attack(name, factory, description=description, traits=traits, **defaults)
        yield _ATTACKS[name]
    finally:
        _ATTACKS.pop(name, None)
        if previous is not None:
            _ATTACKS[name] = previous


def list_attacks(pattern: str = "*") -> list[str]:
    return sorted(fnmatch.filter(_ATTACKS, pattern))


def attack_spec(name: str) -> AttackSpec:
    if name not in _ATTACKS:
        raise UnknownNameError("attack", name, sorted(_ATTACKS))
    return _ATTACKS[name]


def create_attack(name: str, **overrides: Any) -> Attack:
    """A new attack instance with the registered defaults, optionally overridden."""
    spec = attack_spec(name)
    attack = spec.factory(**{**spec.defaults, **overrides})
    attack.name = name
    attack.traits = spec.traits
    return attack
