"""The project's vocabulary: the words every room uses, written once.

This module imports neither torch nor any registry, so the zoo, the attacks, the runner, the
records and the site all read the same facts from it:

* :data:`NORMS`: the threat models' norms (``linf``, ``l2``), :data:`NORM_LABEL` how readers
  see them;
* :data:`FAMILIES`: what kind of attack a registered name is, in the order the boards group
  their columns:

  - ``gradient``: first-order attacks on a loss of the logits (FGSM, PGD, APGD, AutoAttack);
  - ``gradient-temperature``: the same with a temperature β on the logits (PGD++ NJS/HNS, and
    the fixed-β heuristic); Gupta & Ajanthan (AAAI 2022), Sec. 4;
  - ``minimum-norm``: attacks that search the smallest adversarial perturbation and are then
    clipped to the ε-ball (DeepFool, Brendel-Bethge);
  - ``gradient-free``: score-based attacks that never call a backward pass (Square);
  - ``combinatorial``: attacks on the exact integer network of a BNN (IPROP, flip search);
  - ``exact``: verifiers that decide each point (robust, broken, or unknown at a time limit)
    with a solver on the exact integer network (the MILP oracle);
* :data:`QUANT_BITS`: each quantization's weight and activation bits (float: 32), among them
  the multi-bit ones (:data:`MULTIBIT`);
* :data:`SCALERS`: the temperature an attack puts on the logits (``none``, ``njs``,
  ``njs-raw`` for NJS with β1 in pixel coordinates, ``hns``, ``fixed``);
* :class:`Traits`: an attack's family, base attack, scaler, whether it uses gradients and the
  models it applies to, written into every cell's configuration (boards, badges and the
  attacks page read these recorded facts; nothing is inferred from an attack's name);
* :func:`applies`: whether an attack applies to a model, from the model's card fields
  (``arch``, ``quant``, …): the planner drops the cells where it does not, the boards show
  "n/a" there;
* :func:`traits_from_config`: the traits of a recorded attack configuration (read off its
  class and hyperparameters for cells recorded before traits existed), :func:`family_of` its
  family, :func:`is_plain` and :func:`is_tempered` whether it is a base attack or its PGD++;
* :func:`match_names`: how a user's comma-separated wildcard patterns select registered names.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from results.errors import EmptyPatternError, UnknownNameError

Norm = Literal["linf", "l2"]
NORMS: tuple[Norm, ...] = ("linf", "l2")
#: how a norm is written for readers (tables, pages, plots)
NORM_LABEL = {"linf": "L∞", "l2": "L2"}

FAMILIES = ("gradient", "gradient-temperature", "minimum-norm", "gradient-free",
            "combinatorial", "exact")
SCALERS = ("none", "njs", "njs-raw", "hns", "fixed")

#: The models the combinatorial attacks and the verifier take: fully binarized MLPs (their
#: exact integer network is what they search or solve)
BNN_WAQ_MLP = {"arch": "mlp*", "quant": "bnn-waq"}

#: The multi-bit quantizations (``w{B}a{A}``, Brevitas in :mod:`zoo.quantized`): weight bits,
#: activation bits (None: float activations, a weight-only setting)
MULTIBIT: dict[str, tuple[int, int | None]] = {
    "w8a8": (8, 8), "w4a4": (4, 4), "w2a2": (2, 2), "w2a32": (2, None),
}
#: Every quantization's (weight bits, activation bits), 32 for float
QUANT_BITS: dict[str, tuple[int, int]] = {
    "ref": (32, 32), "bnn-wq": (1, 32), "bnn-waq": (1, 1),
    **{q: (w, a or 32) for q, (w, a) in MULTIBIT.items()},
}


def applies(applies_to: Mapping[str, str] | None, card: Mapping[str, Any] | None) -> bool:
    """Whether an attack that applies to ``applies_to`` (card field → shell-style pattern;
    empty: every model) applies to a model with this card (no card: yes)."""
    if not applies_to or not isinstance(card, Mapping):
        return True
    return all(fnmatch.fnmatchcase(str(card.get(k, "")), str(p)) for k, p in applies_to.items())


@dataclass(frozen=True)
class Traits:
    """What kind of attack a registered name is (see the module docstring)."""

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

    def applies(self, card: Mapping[str, Any] | None) -> bool:
        """Whether the attack applies to a model with this card (see :func:`applies`)."""
        return applies(self.applies_to, card)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def match_names(pattern: str, names: list[str], kind: str) -> list[str]:
    """Names matching a wildcard pattern (or a comma-separated list of patterns).

    Raises UnknownNameError with close matches if a part matches nothing, and
    EmptyPatternError if the pattern holds no name at all (``''``, ``','``).
    """
    parts = [p.strip() for p in pattern.split(",") if p.strip()]
    if not parts:
        raise EmptyPatternError(
            f"empty {kind} pattern {pattern!r}; give one or more {kind} names or wildcards, "
            f"comma-separated (list them with `python -m bench list {kind}s`)")
    out: list[str] = []
    for part in parts:
        hits = sorted(fnmatch.filter(names, part))
        if not hits:
            raise UnknownNameError(kind, part, names)
        out.extend(h for h in hits if h not in out)
    return out


def traits_from_config(config: dict[str, Any] | None) -> tuple[dict[str, Any], str]:
    """(traits, source) of a recorded attack configuration.

    ``source`` is ``"recorded"`` when the configuration carries its traits, ``"config"`` when
    they are read off its class and hyperparameters (cells recorded before traits existed),
    ``"unknown"`` when neither is possible.
    """
    config = config if isinstance(config, dict) else {}
    if isinstance(config.get("traits"), dict):
        return dict(config["traits"]), "recorded"
    cls, norm = config.get("class"), config.get("norm", "linf")
    base: str | None = None
    family, scaler, grads, applies = "gradient", "none", True, {}
    if cls in ("GradientAttack", "FlooredL2PGD"):
        sc = config.get("scaler")
        name = sc.get("scaler") if isinstance(sc, dict) else "none"
        if name == "njs" and sc.get("coords") == "pixel":
            name = "njs-raw"  # NJS with β1 in pixel coordinates
        scaler = name if name in SCALERS else "none"
        family = "gradient" if scaler == "none" else "gradient-temperature"
        base = "fgsm" if config.get("steps") == 1 else f"pgd-{norm}"
    elif cls == "DeepFool":
        family, base = "minimum-norm", f"deepfool-{norm}"
    elif cls == "BrendelBethge":
        family, base = "minimum-norm", f"bba-{norm}"
    elif cls == "APGD":
        base = f"apgd-{config.get('loss', 'ce')}"
    elif cls == "AutoAttackStandard":
        base = "autoattack"
    elif cls == "Square":
        family, base, grads = "gradient-free", "square", False
    elif cls in ("IPROP", "FlipSearchLinf"):
        family, grads = "combinatorial", False
        base = "iprop" if cls == "IPROP" else "flip-search-linf"
        applies = dict(BNN_WAQ_MLP)
    elif cls == "MILPLinf":
        family, base = "exact", "milp-linf"
        applies = dict(BNN_WAQ_MLP)
    if base is None:
        return {"family": "unknown", "base": str(cls), "scaler": "none",
                "uses_gradients": True, "applies_to": {}}, "unknown"
    return {"family": family, "base": base, "scaler": scaler, "uses_gradients": grads,
            "applies_to": applies}, "config"


def is_plain(attack: str, traits: dict[str, Any], base: str) -> bool:
    """Whether a recorded attack is the base attack ``base`` itself: no temperature, no
    variant (``pgd-linf``, not ``pgd-linf-dlr``)."""
    return (traits.get("base") == base and traits.get("family") == "gradient"
            and attack == base)


def is_tempered(traits: dict[str, Any], base: str,
                scalers: tuple[str, ...] = ("njs", "hns")) -> bool:
    """Whether recorded traits are a PGD++ version of ``base`` with one of ``scalers``."""
    return (traits.get("base") == base and traits.get("family") == "gradient-temperature"
            and traits.get("scaler") in scalers)


def family_of(config: dict[str, Any] | None) -> str:
    """The family of a recorded attack configuration (``unknown`` when it cannot be told)."""
    return str(traits_from_config(config)[0].get("family", "unknown"))
