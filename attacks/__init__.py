"""Attacks, each reachable by name through the registry.

Importing :mod:`attacks` imports every module of the package, and each registers its attacks
(``register_attack``): a new attack is one new module here (plus its test).
"""

import importlib as _importlib
import pkgutil as _pkgutil

from attacks.base import NORMS, Attack, AttackContext, AttackResult, check_eps
from attacks.registry import (
    AttackSpec,
    attack_spec,
    create_attack,
    list_attacks,
    register_attack,
    registered,
)

for _module in sorted(m.name for m in _pkgutil.iter_modules(__path__)):
    _importlib.import_module(f"{__name__}.{_module}")

__all__ = [
    "NORMS", "Attack", "AttackContext", "AttackResult", "AttackSpec", "attack_spec",
    "check_eps", "create_attack", "list_attacks", "register_attack", "registered",
]
