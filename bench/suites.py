"""Benchmark suites: which models, attacks, ε values and how many test points.

ε sweeps are per norm. MNIST-family settings are not in the paper (its Table 6 has CIFAR
only); ours are
L∞ {0.05, 0.1, 0.2, 0.3} and L2 {0.5, 1.0, 1.5, 2.0} (inputs in [0, 1], 784 pixels).
CIFAR-10 uses the paper's Table 6 (L∞ 8/255, L2 120/255).

Costly attacks and models. A suite may run an attack at a subset of its ε values or on the
first n test points only, optionally for some models only (:class:`Limit`), so that
``nox -s benchmark`` stays affordable on a 2-core CPU. The default suite runs the MLPs on all
1,000 points at every ε except the attacks whose budgets are spent in full on robust points:

* Square at L∞ 0.1 and 0.3 only, on the first 500 test points,
* AutoAttack at L∞ 0.1 only, on the first 200 test points,
* Brendel-Bethge at L∞ 0.1 and L2 1.5 only, on the first 100 test points,
* flip search (BNN-WAQ MLPs only) on the first 200 test points,

the multi-bit MLPs (:mod:`zoo.quantized`) at L∞ 0.1, 0.3 and L2 1.5 on the first 500 points
(Square at L∞ 0.1 on 200, AutoAttack at L∞ 0.1 on 100, Brendel-Bethge at L∞ 0.1 / L2 1.5 on 50),
and the convnets, multi-bit ones included (a gradient step costs them about 11× a 3×512 MLP's),
on the first 200 points at L∞ 0.1, 0.3 and L2 1.5, with Square and AutoAttack at L∞ 0.1 and
Brendel-Bethge at L∞ 0.1 / L2 1.5 on the first 50. ``mnist5k-full`` runs every attack at every ε
on all 1,000 points (hours on a CPU). Where a run's time went is computed from its records, not
written here: ``python benchmarks/suite_time.py --suite mnist5k`` (per model and per attack
family; the README's "Performance" section quotes a from-scratch run). Best-known accuracy
combines cells of different n over the largest n: a smaller cell contributes its breaks on its
prefix (see :mod:`results.bestknown`).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from results.errors import UnknownNameError

#: The default suite's models: the paper's MLP, a wide MLP and the convnets, each quantized
#: three ways (the verification-friendly mnist5k-mlp3x50-bnn-waq belongs to mnist5k-oracle)
MNIST_MODELS = "mnist5k-mlp5x100-*,mnist5k-mlp3x512-*,mnist5k-convnet-*"
MNIST_EPS = {"linf": [0.05, 0.1, 0.2, 0.3], "l2": [0.5, 1.0, 1.5, 2.0]}

#: Attack patterns of the MNIST suites, one group per line: adding attacks to the default
#: suite is a one-line change here.
MNIST_ATTACKS = (
    "fgsm", "pgd-linf", "pgd-l2",  # baselines
    "fgsm-*", "pgd-linf-*", "pgd-l2-*",  # ++ NJS/HNS, fixed β = 0.1, DLR loss, 5 restarts
    "deepfool-*",  # Foolbox DeepFool, L∞ and L2
    "apgd-ce", "apgd-dlr",  # pyautoattack APGD, L∞
    "square",  # pyautoattack Square, L∞, gradient-free (limited below)
    "autoattack",  # standard AutoAttack, L∞ (limited below)
    "bba-*",  # Foolbox Brendel-Bethge, L∞ and L2, from its own initialisation (limited below)
    "iprop",  # IPROP, L∞, combinatorial: BNN-WAQ MLPs only (limited below)
    "flip-search-linf",  # flip search, L∞, combinatorial: BNN-WAQ MLPs only (limited below)
)


@dataclass(frozen=True)
class Limit:
    """Where a costly attack runs in a suite: a subset of the suite's ε values per norm (None:
    all of them; a norm not listed: all of its ε; an empty list: none) and/or the first ``n``
    test points, on the models matching ``models`` (comma-separated wildcards; None: all)."""

    eps: dict[str, list[float]] | None = None
    n: int | None = None
    models: str | None = None

    def covers(self, model: str) -> bool:
        """Whether this limit applies to ``model``."""
        if self.models is None:
            return True
        return any(fnmatch.fnmatchcase(model, p.strip()) for p in self.models.split(","))


#: Limits of a suite: attack pattern → Limit, or (attack pattern, Limit) pairs when one
#: pattern needs several model-scoped limits. The first rule matching both the attack and the
#: model applies.
LimitRules = Mapping[str, Limit] | Sequence[tuple[str, Limit]]


def limit_rules(limits: LimitRules) -> list[tuple[str, Limit]]:
    """The (attack pattern, Limit) rules of ``limits`` in order."""
    return list(limits.items()) if isinstance(limits, Mapping) else list(limits)


#: The convolutional networks of the default suite: a PGD step costs them about 20× an MLP's.
MNIST_CONVNETS = "mnist5k-convnet-*"
#: The multi-bit MLPs of the default suite (W8A8 … W2A32 and the adversarially trained W4A4)
MNIST_MULTIBIT_MLPS = "mnist5k-mlp*-w?a*"

#: The limits of the default MNIST suite (see the module docstring): the first rule matching
#: the model and the attack applies.
MNIST_LIMITS = (
    # multi-bit MLPs: every attack at L∞ 0.1, 0.3 and L2 1.5 on 500 points (the bit-width
    # comparison), the query-hungry ones at L∞ 0.1 / L2 1.5 on fewer; the multi-bit convnets
    # take the convnets' limits below
    ("square", Limit(eps={"linf": [0.1]}, n=200, models=MNIST_MULTIBIT_MLPS)),
    ("autoattack", Limit(eps={"linf": [0.1]}, n=100, models=MNIST_MULTIBIT_MLPS)),
    ("bba-*", Limit(eps={"linf": [0.1], "l2": [1.5]}, n=50, models=MNIST_MULTIBIT_MLPS)),
    ("*", Limit(eps={"linf": [0.1, 0.3], "l2": [1.5]}, n=500, models=MNIST_MULTIBIT_MLPS)),
    # IPROP and flip search apply to BNN-WAQ MLPs only (their traits say so: the planner
    # gives them no cells elsewhere); IPROP runs there everywhere, flip search (a few tenths
    # of a second per point) on 200 points
    ("flip-search-linf", Limit(n=200)),
    # convnets: every attack on the first 200 points at L∞ 0.1, 0.3 and L2 1.5; the
    # query-hungry ones (their budgets are spent in full on robust points) on 50 points
    ("square", Limit(eps={"linf": [0.1]}, n=50, models=MNIST_CONVNETS)),
    ("autoattack", Limit(eps={"linf": [0.1]}, n=50, models=MNIST_CONVNETS)),
    ("bba-*", Limit(eps={"linf": [0.1], "l2": [1.5]}, n=50, models=MNIST_CONVNETS)),
    ("*", Limit(eps={"linf": [0.1, 0.3], "l2": [1.5]}, n=200, models=MNIST_CONVNETS)),
    # MLPs: everything on all 1,000 points at every ε except
    ("square", Limit(eps={"linf": [0.1, 0.3]}, n=500)),
    ("autoattack", Limit(eps={"linf": [0.1]}, n=200)),
    ("bba-*", Limit(eps={"linf": [0.1], "l2": [1.5]}, n=100)),
)

#: The exact-verification suite: the MILP oracle (``milp-linf``) beside the attacks it grades,
#: on the verification-friendly BNN-WAQ MLP (all 1,000 test points) and the paper's 5 x 100
#: BNN-WAQ MLP (the first 200), at the small L∞ ε where the oracle decides (almost) every
#: point. At 0.05 it decides almost nothing beyond what the attacks break (15 s per point).
ORACLE_MODELS = "mnist5k-mlp3x50-bnn-waq,mnist5k-mlp5x100-bnn-waq"
ORACLE_EPS = {"linf": [0.01, 0.02]}
ORACLE_ATTACKS = (
    "milp-linf", "fgsm", "pgd-linf", "pgd-linf-njs", "pgd-linf-njs-raw", "pgd-linf-hns",
    "pgd-linf-r5", "apgd-ce", "apgd-dlr", "deepfool-linf", "square", "iprop", "flip-search-linf",
)
ORACLE_LIMITS = (
    ("*", Limit(n=200, models="mnist5k-mlp5x100-bnn-waq")),
    ("iprop", Limit(n=200)),  # IPROP spends its whole budget on every robust point
    ("square", Limit(n=200)),
)
#: Fashion-MNIST: the same threat models as MNIST, ε up to 0.2 (L∞) and 1.5 (L2): at 0.3 no
#: model keeps any accuracy. Attacks whose cost does not depend on a seed restart or a
#: query budget run everywhere; the gradient-free and ensemble attacks on a prefix.
FASHION_EPS = {"linf": [0.05, 0.1, 0.2], "l2": [0.5, 1.0, 1.5]}
FASHION_ATTACKS = (
    "fgsm", "pgd-linf", "pgd-l2", "fgsm-njs", "fgsm-hns", "pgd-linf-njs", "pgd-linf-hns",
    "pgd-l2-njs", "pgd-l2-hns", "fgsm-njs-raw", "pgd-linf-njs-raw", "pgd-l2-njs-raw",
    "pgd-linf-r5", "deepfool-*", "apgd-ce", "apgd-dlr", "square",
)
FASHION_CONVNETS = "fashion-mnist-convnet-*"
FASHION_LIMITS = (
    ("square", Limit(eps={"linf": [0.1]}, n=200)),
    ("pgd-linf-r5", Limit(eps={"linf": [0.1]}, n=500, models=FASHION_CONVNETS)),
    ("pgd-linf-r5", Limit(eps={"linf": [0.1]})),
    ("*", Limit(n=500, models=FASHION_CONVNETS)),  # a convnet PGD step costs 20 MLP steps
)

#: CIFAR-10 as in the paper (Gupta & Ajanthan, AAAI 2022, Table 6): L∞ 8/255 (PGD step
#: 2/255) and L2 120/255 (step 15/255), 20 steps, one random start; the paper's 20-restart
#: PGD is ``pgd-linf-r5`` here (5 restarts), and its other attacks are APGD, Square, DeepFool
#: and Brendel-Bethge.
CIFAR_EPS = {"linf": [8 / 255], "l2": [120 / 255]}
CIFAR_ATTACKS = (
    "fgsm", "pgd-linf", "pgd-l2", "fgsm-njs", "fgsm-hns", "pgd-linf-njs", "pgd-linf-hns",
    "pgd-l2-njs", "pgd-l2-hns", "pgd-linf-njs-raw", "fgsm-beta0.1", "pgd-linf-beta0.1",
    "pgd-linf-r5",
    "apgd-ce", "apgd-dlr", "square", "autoattack", "deepfool-*", "bba-*",
)
CIFAR_LIMITS = {
    "square": Limit(n=1000),
    "autoattack": Limit(n=1000),
    "deepfool-*": Limit(n=1000),
    "bba-*": Limit(n=1000),
}


@dataclass(frozen=True)
class Suite:
    name: str
    dataset: str
    models: str  # comma-separated wildcard patterns
    attacks: str  # comma-separated wildcard patterns
    eps: dict[str, list[float]] = field(default_factory=dict)
    n: int = 1000
    description: str = ""
    #: see :data:`LimitRules`; the first rule matching the attack and the model applies
    limits: LimitRules = field(default_factory=dict)

    def __post_init__(self) -> None:
        for pattern, limit in limit_rules(self.limits):
            for norm, values in (limit.eps or {}).items():
                extra = sorted(set(values) - set(self.eps.get(norm, [])))
                if extra:
                    raise ValueError(f"suite {self.name}: limit {pattern!r} names ε {extra} "
                                     f"({norm}) that the suite does not run")
            if limit.n is not None and not 1 <= limit.n <= self.n:
                raise ValueError(f"suite {self.name}: limit {pattern!r} has n={limit.n}, "
                                 f"outside 1..{self.n}")


SUITES: dict[str, Suite] = {
    s.name: s
    for s in [
        Suite(
            "mnist5k", "mnist5k", MNIST_MODELS, ",".join(MNIST_ATTACKS), MNIST_EPS, 1000,
            "the default suite: the embedded MNIST digits; MLPs on all 1,000 test points with "
            "Square at L∞ 0.1 and 0.3 on 500 points, AutoAttack at L∞ 0.1 on 200 points, "
            "Brendel-Bethge at L∞ 0.1 and L2 1.5 on 100 points; convnets on 200 points at "
            "L∞ 0.1, 0.3 and L2 1.5, Square/AutoAttack/Brendel-Bethge on 50 (CPU budget; "
            "mnist5k-full runs everything)",
            limits=MNIST_LIMITS,
        ),
        Suite(
            "mnist5k-full", "mnist5k", MNIST_MODELS, ",".join(MNIST_ATTACKS), MNIST_EPS, 1000,
            "the default suite without limits: every attack at every ε on all 1,000 points "
            "(hours on a CPU)",
        ),
        Suite(
            "mnist5k-oracle", "mnist5k", ORACLE_MODELS, ",".join(ORACLE_ATTACKS), ORACLE_EPS,
            1000,
            "exact ground truth: the MILP oracle decides, per test point, whether any input in "
            "the L∞ ball changes the prediction of a BNN-WAQ MLP; every attack's gap to the "
            "optimum is measured on the points it decided (nox -s oracle, under 30 CPU minutes)",
            limits=ORACLE_LIMITS,
        ),
        Suite(
            "fashion-mnist", "fashion-mnist", "fashion-mnist-*", ",".join(FASHION_ATTACKS),
            FASHION_EPS, 1000,
            "Fashion-MNIST (Debian's dataset-fashion-mnist or --data-root): FGSM/PGD/PGD++, "
            "DeepFool and APGD on the MLPs (1,000 test points) and the convnets (500), Square "
            "at L∞ 0.1 on 200 points (tens of CPU minutes)",
            limits=FASHION_LIMITS,
        ),
        Suite(
            "cifar10", "cifar10", "cifar10-*", ",".join(CIFAR_ATTACKS), CIFAR_EPS, 10000,
            "the paper's CIFAR-10 setting (Table 6): L∞ 8/255 and L2 120/255 on the whole test "
            "set; Square, AutoAttack, DeepFool and Brendel-Bethge on the first 1,000 points "
            "(needs a GPU and the CIFAR-10 files)",
            limits=CIFAR_LIMITS,
        ),
        Suite(
            "digits", "digits", "digits-mlp5x100-*", "fgsm,pgd-linf,pgd-l2",
            {"linf": [0.1, 0.3], "l2": [0.5, 1.0]}, 300,
            "a tiny smoke suite on scikit-learn's 8x8 digits (seconds on a CPU)",
        ),
    ]
}
DEFAULT_SUITE = "mnist5k"


def get_suite(name: str) -> Suite:
    if name not in SUITES:
        raise UnknownNameError("suite", name, sorted(SUITES))
    return SUITES[name]
