"""Benchmark suites: which models, attacks, ε values and how many test points.

ε sweeps are per norm. MNIST-family settings are not in the paper (spec §2); ours are
L∞ {0.05, 0.1, 0.2, 0.3} and L2 {0.5, 1.0, 1.5, 2.0} (inputs in [0, 1], 784 pixels).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from zoo.errors import UnknownNameError

MNIST_EPS = {"linf": [0.05, 0.1, 0.2, 0.3], "l2": [0.5, 1.0, 1.5, 2.0]}


@dataclass(frozen=True)
class Suite:
    name: str
    dataset: str
    models: str  # comma-separated wildcard patterns
    attacks: str  # comma-separated wildcard patterns
    eps: dict[str, list[float]] = field(default_factory=dict)
    n: int = 1000
    description: str = ""


SUITES: dict[str, Suite] = {
    s.name: s
    for s in [
        Suite(
            "mnist5k", "mnist5k", "mnist5k-mlp*", "fgsm,pgd-linf,pgd-l2", MNIST_EPS, 1000,
            "the default suite: the embedded MNIST digits, all 1,000 test points",
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
