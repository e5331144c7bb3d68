"""Attacks, each reachable by name through the registry."""

from attacks import catalog as _catalog  # noqa: F401 - registers the attacks
from attacks import flipsearch as _flipsearch  # noqa: F401
from attacks import iprop as _iprop  # noqa: F401
from attacks import library as _library  # noqa: F401
from attacks import milp as _milp  # noqa: F401
from attacks import pgdpp as _pgdpp  # noqa: F401
from attacks.base import NORMS, Attack, AttackResult, check_eps
from attacks.registry import AttackSpec, attack_spec, create_attack, list_attacks, register_attack

__all__ = [
    "NORMS", "Attack", "AttackResult", "AttackSpec", "attack_spec", "check_eps",
    "create_attack", "list_attacks", "register_attack",
]
