"""The registered attacks. Importing :mod:`attacks` registers all of them.

Step sizes are fractions of ε, following the paper's ratios (Table 6): L∞ PGD η = ε/4
(2/255 for 8/255), L2 PGD η = ε/8 (15/255 for 120/255), FGSM η = ε; 20 steps, one random start.
"""

from __future__ import annotations

from attacks.gradient import GradientAttack
from attacks.registry import register_attack

register_attack(
    "fgsm", GradientAttack, norm="linf", steps=1, rel_step=1.0,
    description="FGSM L∞: uniform random start in the ε-ball, one step of size ε (CE loss)",
)
register_attack(
    "pgd-linf", GradientAttack, norm="linf", steps=20, rel_step=0.25,
    description="PGD L∞: random start, 20 steps of ε/4, CE loss",
)
register_attack(
    "pgd-l2", GradientAttack, norm="l2", steps=20, rel_step=0.125,
    description="PGD L2: random start, 20 normalised-gradient steps of ε/8, joint L2 "
    "projection of the whole input, CE loss",
)
