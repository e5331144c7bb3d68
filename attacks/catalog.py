"""The registered attacks. Importing :mod:`attacks` registers all of them.

Step sizes are fractions of ε, following the paper's ratios (Gupta & Ajanthan, AAAI 2022,
Table 6): see :data:`attacks.gradient.BASE_SETTINGS`.
"""

from __future__ import annotations

from typing import Any

import torch

from attacks.gradient import BASE_SETTINGS, GradientAttack, _flat_norm
from attacks.registry import register_attack
from results.vocabulary import Traits


class FlooredL2PGD(GradientAttack):
    """PGD-L2 with the usual normalisation ``g / max(‖g‖₂, floor)`` (the paper's reference code
    and Foolbox's L2 PGD): on saturated binarized networks ‖g‖₂ underflows to 0 in float32
    although g ≠ 0, the step is then about 0 and the attack stands still. Registered next to
    the underflow-free ``pgd-l2`` so that a model page shows how much of its L2 "robustness" is
    this float underflow."""

    def __init__(self, *, floor: float = 1e-12, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self.norm != "l2" or not floor > 0:
            raise ValueError("FlooredL2PGD is an L2 attack with a floor > 0")
        self.floor = float(floor)

    def direction(self, grad: torch.Tensor) -> torch.Tensor:
        return grad / _flat_norm(grad).clamp_min(self.floor)


register_attack(
    "fgsm", GradientAttack, **BASE_SETTINGS["fgsm"],
    traits=Traits("gradient", "fgsm"),
    description="FGSM L∞: uniform random start in the ε-ball, one step of size ε (CE loss)",
)
register_attack(
    "pgd-linf", GradientAttack, **BASE_SETTINGS["pgd-linf"],
    traits=Traits("gradient", "pgd-linf"),
    description="PGD L∞: random start, 20 steps of ε/4, CE loss",
)
register_attack(
    "pgd-l2", GradientAttack, **BASE_SETTINGS["pgd-l2"],
    traits=Traits("gradient", "pgd-l2"),
    description="PGD L2: random start, 20 normalised-gradient steps of ε/8, joint L2 "
    "projection of the whole input, CE loss; the step g/‖g‖ is computed as "
    "(g/max|g|)/‖g/max|g|‖, which does not underflow",
)
register_attack(
    "pgd-l2-floor", FlooredL2PGD, **BASE_SETTINGS["pgd-l2"], floor=1e-12,
    traits=Traits("gradient", "pgd-l2"),
    description="PGD L2 as pgd-l2, but with the reference normalisation g / max(‖g‖, 1e-12): "
    "it stands still where ‖g‖ underflows to 0 (saturated BNNs); the gap to pgd-l2 is "
    "robustness that is only float underflow",
)
