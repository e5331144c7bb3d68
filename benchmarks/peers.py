"""Our attacks and their peers on one model and batch, as zero-argument callables to time.

Used by the pytest-benchmark checks (``nox -s perf``).
Every callable attacks the same model in eval mode, inside ``zoo.layers.frozen`` (no parameter
gradients, each binarized layer's weight signs computed once per call), exactly as the runner
attacks a batch, at the same batch, L∞ ε, 20 steps of ε/4 from a random start:

* ``pgd``, ``pgd-njs``, ``pgd-hns``: ours (``pgd-linf``, ``pgd-linf-njs``, ``pgd-linf-hns``; NJS
  β1 is calibrated once per model, outside the timing, as the runner does), with early
  stopping as registered: a point leaves the batch at its first misclassified iterate, which
  none of the peers does; ``pgd-all``, ``pgd-njs-all``, ``pgd-hns-all``: the same attacks
  without early stopping (every point for every step: the same work as the peers);
* ``torchattacks``: torchattacks' ``PGD`` (needs ``pip install --no-deps torchattacks``);
* ``foolbox``: Foolbox's ``LinfPGD``;
* ``apgd-ce``: AutoAttack's APGD-CE at 20 iterations, one restart (``pyautoattack``);
* ``floor``: 20 × (one forward + one backward of the CE loss to the input), nothing else: no
  attack can be cheaper with 20 gradient steps.

Ratios are only meaningful within one process and one run: use :func:`interleaved`.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from zoo.layers import frozen

#: the three BNN-WAQ architectures of the zoo, and an adversarially trained model on which
#: most points survive (early stopping saves little there)
BNN_ARCHS = ("mnist5k-mlp5x100-bnn-waq", "mnist5k-mlp3x512-bnn-waq", "mnist5k-convnet-bnn-waq")
ROBUST_ARCH = "mnist5k-mlp5x100-ref-at"
ARCHS = (*BNN_ARCHS, ROBUST_ARCH)
BATCH = 256
EPS = 0.1
STEPS = 20
OURS = ("pgd", "pgd-njs", "pgd-hns")
#: ours without early stopping: the same work as the peers, every point for every step
ALL_STEPS = tuple(f"{name}-all" for name in OURS)
PEERS = ("torchattacks", "foolbox", "apgd-ce")


def _attacking(model: nn.Module, fn: Callable[[], Any]) -> Callable[[], Any]:
    """``fn`` run as the runner runs an attack on a batch: inside ``zoo.layers.frozen``."""

    def call() -> Any:
        with frozen(model):
            return fn()
    return call


def load(arch: str, batch: int = BATCH) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A zoo model (trained or loaded through the zoo) and its dataset's first test points."""
    import zoo

    model, _ = zoo.get_model(arch, progress=False)
    x, y = zoo.load_dataset(zoo.model_spec(arch).dataset).test_subset(batch)
    return model.eval(), x, y


def floor(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = STEPS) -> None:
    """``steps`` forward and backward passes to the input, the least a gradient attack does."""
    for _ in range(steps):
        xg = x.detach().requires_grad_(True)
        loss = F.cross_entropy(model(xg), y, reduction="sum")
        torch.autograd.grad(loss, xg)


def torchattacks_available() -> bool:
    try:
        import torchattacks  # noqa: F401
    except ImportError:
        return False
    return True


def runs(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float = EPS,
         names: tuple[str, ...] = ("floor", *OURS, *ALL_STEPS, *PEERS)
         ) -> dict[str, Callable[[], object]]:
    """One zero-argument callable per name (names whose library is missing are left out)."""
    from attacks import AttackContext, create_attack
    from zoo.data import dataset_info

    # what the engine sets attacks up with, once per model and outside the timing: NJS β1 on
    # the first 101 points (the suites' MNIST inputs)
    context = AttackContext(reference_x=x[:101], std=tuple(dataset_info("mnist5k").std))
    out: dict[str, Callable[[], object]] = {}
    for name in names:
        if name == "floor":
            out[name] = partial(floor, model, x, y)
        elif name in OURS or name in ALL_STEPS:
            ours = name.removesuffix("-all")
            attack = create_attack(ours.replace("pgd", "pgd-linf", 1),
                                   early_stop=name == ours)
            attack.setup(model, context)
            gen = torch.Generator().manual_seed(0)
            out[name] = partial(attack, model, x, y, eps=eps, generator=gen)
        elif name == "foolbox":
            import foolbox as fb

            fmodel = fb.PyTorchModel(model, bounds=(0, 1))
            fpgd = fb.attacks.LinfPGD(steps=STEPS, abs_stepsize=eps / 4, random_start=True)
            out[name] = partial(fpgd, fmodel, x, y, epsilons=eps)
        elif name == "torchattacks" and torchattacks_available():
            import torchattacks

            tpgd = torchattacks.PGD(model, eps=eps, alpha=eps / 4, steps=STEPS,
                                    random_start=True)
            out[name] = partial(tpgd, x, y)
        elif name == "apgd-ce":
            from pyautoattack.autopgd_base import APGDAttack

            apgd = APGDAttack(model, norm="Linf", eps=eps, n_iter=STEPS, n_restarts=1,
                              loss="ce", seed=0, device=x.device)
            out[name] = partial(apgd.perturb, x, y)
    return {name: _attacking(model, fn) for name, fn in out.items()}


def interleaved(fns: dict[str, Callable[[], object]], rounds: int, warmup: int = 1
                ) -> dict[str, list[float]]:
    """Seconds per call of each callable over ``rounds`` rounds; each round calls every
    callable once, in a rotated order, so that a busy spell of the machine hits all alike."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    return times


def medians(times: dict[str, list[float]]) -> dict[str, float]:
    return {name: statistics.median(t) for name, t in times.items()}


def ratio_rows(med: dict[str, float]) -> dict[str, float]:
    """The ratios of medians. The same work as the peers (no early stopping): our PGD over
    the floor and each peer, NJS and HNS over PGD. Less work: each of ours over itself
    without early stopping, PGD++ NJS and HNS over torchattacks' PGD."""
    rows = {}

    def ratio(a: str, b: str) -> None:
        if a in med and b in med:
            rows[f"{a}/{b}"] = med[a] / med[b]

    for other in ("floor", *PEERS):
        ratio("pgd-all", other)
    faster = [med[p] for p in ("torchattacks", "foolbox") if p in med]
    if "pgd-all" in med and faster:
        rows["pgd-all/fastest-library-pgd"] = med["pgd-all"] / min(faster)
    ratio("pgd-njs-all", "pgd-all")
    ratio("pgd-hns-all", "pgd-all")
    for ours, all_steps in zip(OURS, ALL_STEPS, strict=True):
        ratio(ours, all_steps)
    ratio("pgd-njs", "torchattacks")
    ratio("pgd-hns", "torchattacks")
    return rows
