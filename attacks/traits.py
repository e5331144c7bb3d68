"""Attack traits: what kind of attack a registered name is, written into every cell's config.

Boards, badges and the attacks page read these recorded facts; nothing is inferred from an
attack's name. Families, in the order the boards group their columns:

* ``gradient``: first-order attacks on a loss of the logits (FGSM, PGD, APGD, AutoAttack);
* ``gradient-temperature``: the same with a temperature β on the logits (PGD++ NJS/HNS, and the
  fixed-β heuristic); Gupta & Ajanthan (AAAI 2022), Sec. 4;
* ``minimum-norm``: attacks that search the smallest adversarial perturbation and are then
  clipped to the ε-ball (DeepFool, Brendel-Bethge);
* ``gradient-free``: score-based attacks that never call a backward pass (Square);
* ``combinatorial``: attacks on the exact integer network of a BNN (IPROP);
* ``exact``: verifiers that decide each point (robust, broken, or unknown at a time limit)
  with a solver on the exact integer network (the MILP oracle).

``base`` names the attack a variant belongs to (``pgd-linf`` for ``pgd-linf-njs``), ``scaler``
the temperature (``none``, ``njs``, ``njs-raw`` for NJS with β1 in pixel coordinates,
``hns``, ``fixed``), ``applies_to`` the model cards the
attack can run on (card field → shell-style pattern; empty: every model). The readers of
recorded traits live in :mod:`results.board` (which must not import torch).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

FAMILIES = ("gradient", "gradient-temperature", "minimum-norm", "gradient-free",
            "combinatorial", "exact")
SCALERS = ("none", "njs", "njs-raw", "hns", "fixed")


@dataclass(frozen=True)
class Traits:
    family: str
    base: str
    scaler: str = "none"
    uses_gradients: bool = True
    applies_to: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {self.family!r}")
        if self.scaler not in SCALERS:
            raise ValueError(f"scaler must be one of {SCALERS}, got {self.scaler!r}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
