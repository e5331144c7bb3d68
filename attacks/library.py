"""Thin adapters around the attacks of Foolbox 3 and pyautoattack (AutoAttack's original code).

Every adapter is an :class:`~attacks.base.Attack`: it returns candidates only. The libraries'
own success flags are ignored; the benchmark verifies every candidate itself.

* ``deepfool-linf`` / ``deepfool-l2``: Foolbox ``LinfDeepFoolAttack`` / ``L2DeepFoolAttack``
  with Foolbox's defaults (50 steps, the 10 most likely classes, overshoot 0.02, logit loss),
  called with ``epsilons=ε`` (Foolbox clips the minimal perturbation to the ε-ball).
  DeepFool attacks the predicted top classes; the benchmark only attacks correctly classified
  points, whose top class is the label.
* ``bba-linf`` / ``bba-l2``: Foolbox ``LinfinityBrendelBethgeAttack`` / ``L2BrendelBethgeAttack``
  with Foolbox's defaults (1,000 steps, lr 1e-3, 10 binary-search steps), clipped to the ε-ball.
  Brendel-Bethge needs an adversarial starting point per sample: it starts from Foolbox's own
  default initialisation, seeded from the cell, else from the nearest training point of another
  predicted class (see :class:`BrendelBethge`). Its result depends on the cell only, never on
  which other attacks ran before it.
* ``apgd-ce`` / ``apgd-dlr``: pyautoattack ``APGDAttack``, 100 iterations, 1 restart, ρ = 0.75.
* ``square``: pyautoattack ``SquareAttack`` with AutoAttack's standard settings (5,000 queries,
  p_init 0.8, 1 restart, no schedule rescaling); gradient-free.
* ``autoattack``: the standard AutoAttack ensemble (APGD-CE, APGD-T with 9 target classes, FAB-T
  with 9 target classes, Square with 5,000 queries), each run on the points the previous ones
  did not break, as pyautoattack's ``AutoAttack`` wrapper does in its ``standard`` version.
  The component attacks and their settings are taken from a wrapper instance built with
  ``version="standard"``; the wrapper's own loop is not used because its model checks call
  ``sys.settrace(None)`` (which switches off coverage and debuggers) and add forward passes.

pyautoattack seeds its attacks with ``torch.manual_seed`` (from the clock when no seed is given):
the adapters pass a seed drawn from the ``generator`` argument and run inside
``torch.random.fork_rng``, so the global RNG state is left as it was found.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any, ClassVar

import torch
from torch import nn

from attacks.base import NORMS, Attack, AttackContext, AttackResult, MinimumNormAttack, Norm
from attacks.registry import register_attack
from results.vocabulary import Traits

_AA_NORM = {"linf": "Linf", "l2": "L2"}


def _check_norm(norm: str) -> Norm:
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    return norm  # type: ignore[return-value]


def draw_seed(generator: torch.Generator) -> int:
    """A library seed drawn from the attack's generator (advances the generator)."""
    return int(torch.randint(0, 2**31 - 1, (1,), generator=generator,
                             device=generator.device).item())


@contextlib.contextmanager
def isolated_rng(device: torch.device) -> Iterator[None]:
    """Run a library that reseeds the global torch RNG without changing the caller's state."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield


def _fb_model(model: nn.Module, device: torch.device) -> Any:
    import foolbox as fb

    return fb.PyTorchModel(model, bounds=(0.0, 1.0), device=device)


# --------------------------------------------------------------------------- Foolbox


class DeepFool(MinimumNormAttack):
    """Foolbox's DeepFool (L∞ or L2) with Foolbox's defaults, clipped to the ε-ball.

    DeepFool ignores ε while it searches (Foolbox passes it only as an early-stop hint, which
    DeepFool does not use), so one search serves every ε; the clipping is Foolbox's own.
    """

    libraries = ("foolbox",)

    def __init__(self, *, norm: Norm = "linf", steps: int = 50, candidates: int = 10,
                 overshoot: float = 0.02, loss: str = "logits") -> None:
        self.norm = _check_norm(norm)
        self.steps = steps
        self.candidates = candidates
        self.overshoot = overshoot
        self.loss = loss

    def minimize(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                 generator: torch.Generator) -> AttackResult:
        import foolbox as fb

        cls = fb.attacks.LinfDeepFoolAttack if self.norm == "linf" else fb.attacks.L2DeepFoolAttack
        attack = cls(steps=self.steps, candidates=self.candidates, overshoot=self.overshoot,
                     loss=self.loss)
        with isolated_rng(x.device):
            raw, _, _ = attack(_fb_model(model, x.device), x, y, epsilons=None)
        return AttackResult(raw.detach())

    def restrict(self, x: torch.Tensor, x_min: torch.Tensor, eps: float) -> torch.Tensor:
        import foolbox as fb

        distance = fb.distances.linf if self.norm == "linf" else fb.distances.l2
        return distance.clip_perturbation(x, x_min, eps)


def adversarial_in_batch(model: nn.Module, starts: torch.Tensor, y: torch.Tensor,
                         sel: torch.Tensor) -> torch.Tensor:
    """The indices ``sel`` whose starts the model misclassifies when it sees exactly the batch
    ``starts[sel]`` (a point on the decision boundary may flip with the batch composition, and
    Foolbox then rejects the whole batch): checked until stable, at most 5 times."""
    with torch.no_grad():
        for _ in range(5):
            if len(sel) == 0:
                return sel
            adv = model(starts[sel]).argmax(1) != y[sel]
            if adv.all():
                return sel
            sel = sel[adv]
    return sel[:0]


def predict_all(model: nn.Module, x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The model's predicted classes of ``x``, in chunks of 1,000 on ``device``."""
    with torch.no_grad():
        return torch.cat([model(x[i : i + 1000].to(device)).argmax(1)
                          for i in range(0, len(x), 1000)])


class BrendelBethge(Attack):
    """Foolbox's Brendel-Bethge attack (L∞ or L2), defaults, clipped to the ε-ball.

    Brendel-Bethge walks along the decision boundary from an adversarial starting point. The
    start belongs to the attack and depends only on the cell: Foolbox's own default
    initialisation (``LinearSearchBlendedUniformNoiseAttack``: uniform noise blended towards
    the input by a linear search), seeded from the attack's generator; where that finds no
    adversarial point, the nearest training point (in the attack's norm) that the model
    assigns to another class than the label (:meth:`setup` gives the training inputs; without
    them there is no fallback). Samples without a start are not attacked
    (their candidate is the clean input). Every candidate is what Brendel-Bethge returns,
    clipped to the ε-ball; ``info`` records how many starts came from where.
    """

    #: 2: starts from its own seeded initialisation (1 took other attacks' successes)
    version = 2
    libraries = ("foolbox",)

    def __init__(self, *, norm: Norm = "linf", steps: int = 1000, lr: float = 1e-3,
                 lr_decay: float = 0.5, lr_num_decay: int = 20, momentum: float = 0.8,
                 overshoot: float = 1.1, binary_search_steps: int = 10,
                 init_directions: int = 1000, init_steps: int = 1000) -> None:
        self.norm = _check_norm(norm)
        self.steps = steps
        self.lr = lr
        self.lr_decay = lr_decay
        self.lr_num_decay = lr_num_decay
        self.momentum = momentum
        self.overshoot = overshoot
        self.binary_search_steps = binary_search_steps
        #: Foolbox's defaults of the blended-uniform-noise initialisation
        self.init_directions = init_directions
        self.init_steps = init_steps
        self._context: AttackContext | None = None
        self._train_pred: torch.Tensor | None = None

    def setup(self, model: nn.Module, context: AttackContext) -> None:
        """Keep the context's training inputs for the fallback start (see the class
        docstring), and compile Foolbox's numba solver."""
        self._context, self._train_pred = context, None
        self.warm_up()

    def warm_up(self) -> None:
        """Compile Foolbox's numba solver (20-60 s, once per process) outside any timing:
        two steps on a tiny linear 3-class problem compile the constructor and the solver
        (numba compiles per dtype, not per shape). Cheap once compiled."""
        import foolbox as fb

        x = torch.tensor([[0.6, 0.1, 0.1, 0.5]])
        start = torch.tensor([[0.1, 0.6, 0.1, 0.5]])  # class 1 instead of 0: adversarial
        attack = self._foolbox_attack(steps=2)
        with isolated_rng(x.device), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lin = nn.Linear(4, 3, bias=False)  # its random init happens inside fork_rng
            with torch.no_grad():
                lin.weight.copy_(torch.eye(3, 4))
            attack(fb.PyTorchModel(lin.eval(), bounds=(0.0, 1.0), device="cpu"), x,
                   torch.tensor([0]), epsilons=None, starting_points=start)

    def _foolbox_attack(self, steps: int | None = None) -> Any:
        import foolbox as fb

        cls = (fb.attacks.LinfinityBrendelBethgeAttack if self.norm == "linf"
               else fb.attacks.L2BrendelBethgeAttack)
        with warnings.catch_warnings():  # the "needs to be compiled" notice
            warnings.simplefilter("ignore", UserWarning)
            return cls(steps=steps or self.steps, lr=self.lr, lr_decay=self.lr_decay,
                       lr_num_decay=self.lr_num_decay, momentum=self.momentum,
                       overshoot=self.overshoot, binary_search_steps=self.binary_search_steps)

    def starts(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
               generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, dict[str, int]]:
        """(starts, indices of the samples with a usable start, counts per source)."""
        import foolbox as fb

        init = fb.attacks.LinearSearchBlendedUniformNoiseAttack(
            directions=self.init_directions, steps=self.init_steps)
        seed = draw_seed(generator)
        with isolated_rng(x.device), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "failed to draw sufficient random inputs"
            torch.manual_seed(seed)
            starts = init.run(_fb_model(model, x.device), x,
                              fb.criteria.Misclassification(y)).detach()
        with torch.no_grad():
            from_init = model(starts).argmax(1) != y
        starts = torch.where(from_init.view(-1, *[1] * (x.ndim - 1)), starts, x)
        from_train = torch.zeros_like(from_init)
        rest = (~from_init).nonzero().squeeze(1)
        train_x = self._context.train_x if self._context is not None else None
        if len(rest) and train_x is not None:
            if self._train_pred is None:  # once per setup: the model's classes of train_x
                self._train_pred = predict_all(model, train_x, x.device)
            near, ok = nearest_training_starts(model, x[rest], y[rest], train_x, self.norm,
                                               train_pred=self._train_pred)
            starts[rest[ok]] = near[ok]
            from_train[rest[ok]] = True
        sel = adversarial_in_batch(model, starts, y, (from_init | from_train).nonzero().squeeze(1))
        counts = {"starts_from_init": int(from_init[sel].sum()),
                  "starts_from_train": int(from_train[sel].sum()),
                  "starts_none": len(x) - len(sel)}
        return starts, sel, counts

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float,
            generator: torch.Generator) -> AttackResult:
        starts, sel, info = self.starts(model, x, y, generator)
        x_adv = x.clone()
        info["attacked"] = len(sel)
        if len(sel) == 0:
            return AttackResult(x_adv, info)
        attack = self._foolbox_attack()
        with isolated_rng(x.device):
            _, clipped, _ = attack(_fb_model(model, x.device), x[sel].contiguous(), y[sel],
                                   epsilons=eps, starting_points=starts[sel].contiguous())
        x_adv[sel] = clipped.detach().to(x.dtype)
        return AttackResult(x_adv, info)


@torch.no_grad()
def nearest_training_starts(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                            train_x: torch.Tensor, norm: str, *, train_pred: torch.Tensor |
                            None = None, batch_size: int = 256) -> tuple[torch.Tensor,
                                                                         torch.Tensor]:
    """For each sample, the nearest training point (in ``norm``) that the model assigns to a
    class other than the sample's label: adversarial for the sample by construction.

    Returns (starts, found); ``found`` is False where no training point qualifies. The caller
    should still verify the starts (:meth:`BrendelBethge.starts` does).
    """
    train_x = train_x.to(x.device, x.dtype)
    if train_pred is None:
        train_pred = predict_all(model, train_x, x.device)
    train_pred = train_pred.to(x.device)
    flat_train = train_x.flatten(1)
    p = float("inf") if norm == "linf" else 2.0
    starts = x.clone()
    found = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    for i in range(0, len(x), batch_size):
        xb, yb = x[i : i + batch_size].flatten(1), y[i : i + batch_size]
        dist = torch.cdist(xb, flat_train, p=p)
        dist = dist.masked_fill(train_pred[None, :] == yb[:, None], float("inf"))
        best, j = dist.min(1)
        ok = torch.isfinite(best)
        starts[i : i + batch_size][ok] = train_x[j[ok]]
        found[i : i + batch_size] = ok
    return starts, found


# --------------------------------------------------------------------------- pyautoattack


class APGD(Attack):
    """pyautoattack's APGD (Croce & Hein 2020) with the CE or the DLR loss."""

    libraries = ("pyautoattack",)

    def __init__(self, *, norm: Norm = "linf", loss: str = "ce", n_iter: int = 100,
                 n_restarts: int = 1, rho: float = 0.75) -> None:
        if loss not in ("ce", "dlr"):
            raise ValueError(f"loss must be 'ce' or 'dlr', got {loss!r}")
        self.norm = _check_norm(norm)
        self.loss = loss
        self.n_iter = n_iter
        self.n_restarts = n_restarts
        self.rho = rho

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float,
            generator: torch.Generator) -> AttackResult:
        from pyautoattack.autopgd_base import APGDAttack

        seed = draw_seed(generator)
        attack = APGDAttack(model, n_iter=self.n_iter, norm=_AA_NORM[self.norm],
                            n_restarts=self.n_restarts, eps=eps, seed=seed, loss=self.loss,
                            eot_iter=1, rho=self.rho, verbose=False, device=x.device)
        with isolated_rng(x.device):
            x_adv = attack.perturb(x, y)
        return AttackResult(x_adv.detach())


class Square(Attack):
    """pyautoattack's Square Attack (Andriushchenko et al. 2020): score-based, no gradients."""

    uses_gradients: ClassVar[bool] = False
    libraries = ("pyautoattack",)

    def __init__(self, *, norm: Norm = "linf", n_queries: int = 5000, p_init: float = 0.8,
                 n_restarts: int = 1, loss: str = "margin") -> None:
        self.norm = _check_norm(norm)
        self.n_queries = n_queries
        self.p_init = p_init
        self.n_restarts = n_restarts
        self.loss = loss

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float,
            generator: torch.Generator) -> AttackResult:
        from pyautoattack.square import SquareAttack

        if x.ndim != 4:
            raise ValueError("Square Attack needs image batches of shape (N, C, H, W)")
        seed = draw_seed(generator)
        attack = SquareAttack(model, norm=_AA_NORM[self.norm], n_queries=self.n_queries,
                              eps=eps, p_init=self.p_init, n_restarts=self.n_restarts,
                              seed=seed, verbose=False, loss=self.loss, resc_schedule=False,
                              device=x.device)
        with isolated_rng(x.device), torch.no_grad():
            x_adv = attack.perturb(x, y)
        return AttackResult(x_adv.detach())


class AutoAttackStandard(Attack):
    """The standard AutoAttack ensemble, from pyautoattack's original attack classes."""

    libraries = ("pyautoattack",)

    def __init__(self, *, norm: Norm = "linf", aa_version: str = "standard") -> None:
        if aa_version != "standard":
            raise ValueError("only AutoAttack's 'standard' version is wired up")
        self.norm = _check_norm(norm)
        #: AutoAttack's own name of the ensemble ("standard"); ``version`` is the adapter's
        self.aa_version = aa_version

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float,
            generator: torch.Generator) -> AttackResult:
        from pyautoattack import AutoAttack

        seed = draw_seed(generator)
        # The wrapper only configures its component attacks here; it does not call the model.
        aa = AutoAttack(model, norm=_AA_NORM[self.norm], eps=eps, seed=seed,
                        version=self.aa_version, device=x.device)
        aa.verbose = False
        x_adv = x.clone()
        robust = torch.ones(len(x), dtype=torch.bool, device=x.device)
        info: dict[str, Any] = {}
        with isolated_rng(x.device):
            for name in aa.attacks_to_run:
                idx = robust.nonzero().squeeze(1)
                if len(idx) == 0:
                    break
                adv = self._component(aa, name, x[idx].clone(), y[idx].clone())
                with torch.no_grad():
                    broken = model(adv).argmax(1) != y[idx]
                x_adv[idx[broken]] = adv[broken].detach()
                robust[idx[broken]] = False
                info[f"broken_by_{name}"] = int(broken.sum())
        return AttackResult(x_adv, info)

    @staticmethod
    def _component(aa: Any, name: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One component, configured exactly as the wrapper's ``run_standard_evaluation``."""
        if name == "apgd-ce":
            aa.apgd.loss = "ce"
            return aa.apgd.perturb(x, y)
        if name == "apgd-dlr":
            aa.apgd.loss = "dlr"
            return aa.apgd.perturb(x, y)
        if name == "apgd-t":
            return aa.apgd_targeted.perturb(x, y)
        if name == "fab-t":
            aa.fab.targeted = True
            aa.fab.n_restarts = 1
            return aa.fab.perturb(x, y)
        if name == "fab":
            aa.fab.targeted = False
            return aa.fab.perturb(x, y)
        if name == "square":
            with torch.no_grad():
                return aa.square.perturb(x, y)
        raise ValueError(f"unknown AutoAttack component {name!r}")


# --------------------------------------------------------------------------- registry

for _norm, _text in (("linf", "L∞"), ("l2", "L2")):
    register_attack(
        f"deepfool-{_norm}", DeepFool, norm=_norm,
        traits=Traits("minimum-norm", f"deepfool-{_norm}"),
        description=f"DeepFool {_text} (Foolbox 3, defaults: 50 steps, top-10 classes, "
        "overshoot 0.02), clipped to the ε-ball",
    )
    register_attack(
        f"bba-{_norm}", BrendelBethge, norm=_norm,
        traits=Traits("minimum-norm", f"bba-{_norm}"),
        description=f"Brendel-Bethge {_text} (Foolbox 3, defaults: 1000 steps), clipped to the "
        "ε-ball; starts from Foolbox's default initialisation (blended uniform noise, seeded "
        "per cell), else from the nearest training point of another predicted class; points "
        "without a start are not attacked",
    )
register_attack(
    "apgd-ce", APGD, norm="linf", loss="ce", traits=Traits("gradient", "apgd-ce"),
    description="APGD-CE L∞ (pyautoattack): 100 iterations, 1 restart, CE loss",
)
register_attack(
    "apgd-dlr", APGD, norm="linf", loss="dlr", traits=Traits("gradient", "apgd-dlr"),
    description="APGD-DLR L∞ (pyautoattack): 100 iterations, 1 restart, DLR loss",
)
register_attack(
    "square", Square, norm="linf",
    traits=Traits("gradient-free", "square", uses_gradients=False),
    description="Square Attack L∞ (pyautoattack): 5000 queries, p_init 0.8, margin loss, "
    "no gradients",
)
register_attack(
    "autoattack", AutoAttackStandard, norm="linf", traits=Traits("gradient", "autoattack"),
    description="AutoAttack standard L∞ (pyautoattack's classes): APGD-CE, APGD-T, FAB-T, "
    "Square 5000 queries, each on the points the previous ones left",
)
