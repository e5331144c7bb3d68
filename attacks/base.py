"""The attack base class, in the style of Foolbox 3: keyword-only hyperparameters, one final
``__call__`` that validates input around an abstract ``run``.

Attacks return candidate adversarial inputs; they do not decide what counts as a success.
The benchmark verifies every candidate itself (ε-ball, [0, 1] box, misclassified in eval mode).
"""

from __future__ import annotations

import importlib.metadata
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, ClassVar, final

import torch
from torch import nn

from results.errors import BadEpsilonError
from results.vocabulary import NORMS, Norm, Traits


def max_eps(norm: str, dim: int | None) -> float:
    """Largest meaningful ε: the diameter of the [0, 1] box in that norm."""
    if norm == "linf":
        return 1.0
    return math.sqrt(dim) if dim else math.inf


def check_eps(eps: float, norm: str, dim: int | None = None) -> float:
    """Validate ε for a norm; raises BadEpsilonError saying what is allowed."""
    if norm not in NORMS:
        raise BadEpsilonError(f"unknown norm {norm!r}; allowed: {', '.join(NORMS)}")
    try:
        value = float(eps)
    except (TypeError, ValueError):
        raise BadEpsilonError(f"ε must be a number, got {eps!r}") from None
    hi = max_eps(norm, dim)
    if not math.isfinite(value) or value < 0 or value > hi:
        bound = f"{hi:g}" if math.isfinite(hi) else "∞"
        raise BadEpsilonError(
            f"ε={eps!r} is out of range for the {norm} norm: it must be a finite number "
            f"in [0, {bound}] (inputs live in [0, 1]; write 8/255 for paper units)"
        )
    return value + 0.0  # -0.0 is 0.0: one ε, one cell key


def check_batch(x: torch.Tensor, y: torch.Tensor) -> None:
    """Raise ValueError unless ``x`` is a batch of inputs in [0, 1] matching the labels ``y``."""
    if x.ndim < 2 or len(x) != len(y):
        raise ValueError(f"x must be a batch matching y: got {tuple(x.shape)} and {len(y)}")
    if len(x) and (x.min() < 0 or x.max() > 1):
        raise ValueError("inputs must lie in [0, 1]")


@dataclass
class AttackResult:
    """Candidate adversarial inputs plus what the attack wants recorded (β values, …).

    ``per_point`` holds lists with one entry per input of the batch (e.g. a verifier's
    verdicts); the benchmark records them over the whole test set, ``""`` where a point was
    not attacked (misclassified clean).
    """

    x_adv: torch.Tensor
    info: dict[str, Any] = field(default_factory=dict)
    per_point: dict[str, list] = field(default_factory=dict)


@dataclass
class AttackContext:
    """What an attack may know of a model's dataset beyond the batch it attacks, handed to
    :meth:`Attack.setup` once per model before the first batch.

    ``reference_x``: the dataset's first 101 test images (NJS calibrates β1 on them, the
    reference protocol; Gupta & Ajanthan, AAAI 2022, Sec. 4.1); ``std``: the dataset's
    per-channel normalisation σ (the coordinates of NJS's Jacobian); ``train_x``: the training
    inputs (Brendel-Bethge's fallback starts). ``memo`` holds values of this model that several
    attacks share, each computed once (:meth:`remember`).
    """

    reference_x: torch.Tensor | None = None
    std: tuple[float, ...] | None = None
    train_x: torch.Tensor | None = None
    memo: dict[Hashable, Any] = field(default_factory=dict)

    def remember(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        """The value stored under ``key``, computed by ``compute()`` the first time."""
        if key not in self.memo:
            self.memo[key] = compute()
        return self.memo[key]


class Attack(ABC):
    """An attack for one norm. Subclasses take keyword-only hyperparameters in ``__init__``."""

    norm: Norm  # a class attribute, or set per instance by attacks that take a norm
    #: needs gradients of the model (fails on models that cut the autograd graph)
    uses_gradients: ClassVar[bool] = True
    #: bumped whenever the attack's behaviour changes (same hyperparameters, other candidates):
    #: it is part of :meth:`config`, hence of every benchmark cell's key, so cells of the old
    #: behaviour stop counting
    version: ClassVar[int] = 1
    #: the distributions whose code the attack runs (their installed versions join the config)
    libraries: ClassVar[tuple[str, ...]] = ()

    name: str = ""  # set by the registry
    traits: Traits | None = None  # set by the registry

    @final
    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float,
        generator: torch.Generator | None = None,
    ) -> AttackResult:
        """Attack ``model`` (put in eval mode) at inputs ``x`` in [0, 1] with labels ``y``."""
        eps = check_eps(eps, self.norm, x[0].numel() if len(x) else None)
        check_batch(x, y)
        model.eval()
        if len(x) == 0 or eps == 0:
            return AttackResult(x.clone())
        if generator is None:
            generator = torch.Generator(device=x.device).manual_seed(0)
        with torch.enable_grad():
            result = self.run(model, x, y, eps=eps, generator=generator)
        if result.x_adv.shape != x.shape:
            raise RuntimeError(f"{type(self).__name__} returned shape {tuple(result.x_adv.shape)}"
                               f" for inputs of shape {tuple(x.shape)}")
        return result

    def setup(self, model: nn.Module, context: AttackContext) -> None:
        """One-off preparation on ``model`` before the first batch (the benchmark neither times
        it nor counts its passes): compile a solver, calibrate on the context's reference
        inputs, keep its training inputs. The base class needs none."""
        return None

    @abstractmethod
    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float,
            generator: torch.Generator) -> AttackResult:
        """Return candidate adversarial examples for a validated, non-empty batch."""

    def config(self) -> dict[str, Any]:
        """What defines this attack (part of a benchmark cell's identity): class, norm,
        hyperparameters, ``version``, the versions of the libraries it wraps and its traits
        (family, base attack, scaler, whether it uses gradients; see :mod:`results.vocabulary`)."""
        out = {"class": type(self).__name__, "norm": self.norm, **self._hyperparameters(),
               "version": self.version}
        if self.libraries:
            out["library_versions"] = {lib: library_version(lib) for lib in self.libraries}
        if self.traits is not None:
            out["traits"] = self.traits.as_dict()
        return out

    def _hyperparameters(self) -> dict[str, Any]:
        return {k: _plain(v) for k, v in vars(self).items() if not k.startswith("_")
                and k not in ("name", "traits")}


def library_version(distribution: str) -> str:
    """The installed version of a distribution ("not installed" when it is missing)."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside transparent wrappers (modules that change no output and expose the
    wrapped module as ``transparent_inner``, such as the benchmark's pass counter)."""
    while isinstance(getattr(model, "transparent_inner", None), nn.Module):
        model = model.transparent_inner
    return model


def _plain(v: Any) -> Any:
    if isinstance(v, int | float | str | bool) or v is None:
        return v
    if isinstance(v, list | tuple):
        return [_plain(i) for i in v]
    if isinstance(v, dict):
        return {str(k): _plain(i) for k, i in v.items()}
    if hasattr(v, "config"):
        return v.config()
    return repr(v)


class MinimumNormAttack(Attack):
    """An attack that searches the smallest adversarial perturbation without looking at ε
    (DeepFool) and is then restricted to the ε-ball.

    Its search is the same at every ε, so the benchmark runs :meth:`search` once per model,
    norm and test points and evaluates each ε with :meth:`restrict`; ``__call__`` does both.
    """

    @final
    def search(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
               generator: torch.Generator | None = None) -> AttackResult:
        """The ε-free half of ``__call__``: validated, unbounded :meth:`minimize`."""
        check_batch(x, y)
        model.eval()
        if len(x) == 0:
            return AttackResult(x.clone())
        if generator is None:
            generator = torch.Generator(device=x.device).manual_seed(0)
        with torch.enable_grad():
            result = self.minimize(model, x, y, generator=generator)
        if result.x_adv.shape != x.shape:
            raise RuntimeError(f"{type(self).__name__} returned shape {tuple(result.x_adv.shape)}"
                               f" for inputs of shape {tuple(x.shape)}")
        return result

    @abstractmethod
    def minimize(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                 generator: torch.Generator) -> AttackResult:
        """Unbounded candidates (any perturbation size) for a validated, non-empty batch."""

    @abstractmethod
    def restrict(self, x: torch.Tensor, x_min: torch.Tensor, eps: float) -> torch.Tensor:
        """The candidates ``x_min`` with their perturbations clipped to the ε-ball."""

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float,
            generator: torch.Generator) -> AttackResult:
        found = self.minimize(model, x, y, generator=generator)
        return AttackResult(self.restrict(x, found.x_adv, eps), found.info)
