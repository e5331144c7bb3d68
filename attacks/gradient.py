"""FGSM and PGD (L∞ and L2), batched, as Gupta & Ajanthan (AAAI 2022, Sec. 3) use them.

* Random start: uniform in the L∞ ball; for L2, uniform in the L2 ball of the whole input.
* L∞ step ``x ← Π(x + η·sign(∇ℓ))``; L2 step along ``∇ℓ / ‖∇ℓ‖₂`` per sample.
* Π projects onto the ε-ball intersected with [0, 1]. For L∞ that intersection is the box
  ``[max(x − ε, 0), min(x + ε, 1)]``, computed once per batch, and Π is one clamp onto it. For
  L2, Π scales δ onto the ball (jointly over the whole input, not per colour channel as the
  paper's reference code does), then clamps to [0, 1].
* Restarts keep, per sample, the first restart that produces an adversarial example.
* Every iterate whose logits (computed anyway for the gradient) are misclassified is kept as
  the sample's candidate, so a later step cannot undo a success. This costs no extra passes.
  The last iterate of the last restart is returned without a forward pass of its own: whoever
  uses the candidates evaluates them anyway (the benchmark verifies every one).
* Early stopping (``early_stop``, on by default): a point whose iterate is misclassified is
  done, so it leaves the batch before the next forward pass, and the run ends when every point
  is done. Foolbox, torchattacks and AutoAttack's APGD attack every point for every step. The
  candidates are the same bits as without early stopping: per-sample rows do not interact
  (eval mode, losses summed over samples), and the batch never shrinks below
  :data:`MIN_ROWS` rows (finished points ride along to fill it), because CPU matrix kernels
  change a row's rounding with the batch size only for batches of about a dozen rows or fewer
  (measured: 1-3 rows on one thread, up to 11 rows on two threads).

The loss may be scaled by a temperature (``scaler``): that is how PGD++ plugs in.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from attacks.base import NORMS, Attack, AttackContext, AttackResult, Norm

LOSSES = ("ce", "dlr")
#: the fewest rows a shrinking batch keeps (see the module docstring on early stopping)
MIN_ROWS = 32


class Forward(NamedTuple):
    """A forward pass kept for one more backward pass: the input leaf (a detached copy of the
    point, requiring grad) and the logits, still attached to the autograd graph."""

    leaf: torch.Tensor
    logits: torch.Tensor


class LogitScaler:
    """A temperature on the logits inside the attack loss. The base class is β = 1."""

    name = "none"

    def setup(self, model: nn.Module, context: AttackContext) -> None:
        """One-off preparation on ``model`` (see :meth:`attacks.base.Attack.setup`)."""

    def prepare(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Any:
        """Per-batch state computed once at the starting point (e.g. per-sample β)."""
        return None

    def start(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor
              ) -> tuple[Any, Forward | None]:
        """:meth:`prepare` at the starting point, plus the forward pass it made there when
        the attack's first step may reuse it (a scaler that needs the logits' gradients at
        the start, such as HNS, has made one). The base class makes none."""
        return self.prepare(model, x, y), None

    def factor(self, logits: torch.Tensor, y: torch.Tensor, state: Any
               ) -> torch.Tensor | float | None:
        """This step's temperature β, shaped to multiply ``logits`` (a float, or a tensor such
        as ``(B, 1)``); None for β = 1. ``logits`` carry no gradient: β is not differentiated.
        Called once per step (a scaler may record it in ``state``)."""
        return None

    def scale(self, logits: torch.Tensor, y: torch.Tensor, state: Any) -> torch.Tensor:
        """The logits the loss sees, ``logits · β`` (:meth:`factor`), differentiable in
        ``logits``. Scalers define :meth:`factor`; overriding this instead is allowed (the
        attack then back-propagates through it)."""
        beta = self.factor(logits.detach(), y, state)
        return logits if beta is None else logits * beta

    def narrow(self, state: Any, rows: torch.Tensor) -> Any:
        """The state for the batch's ``rows`` only (ordered positions in the current batch):
        called when finished points leave the batch. Per-sample state must follow them."""
        return state

    def stats(self, states: list[Any]) -> dict[str, float]:
        """Summary of the temperatures used (recorded with the benchmark cell)."""
        return {}

    def config(self) -> dict[str, Any]:
        return {"scaler": self.name}


class FixedTemperature(LogitScaler):
    """The paper's heuristic straw man: one fixed β for every model and sample."""

    def __init__(self, beta: float) -> None:
        self.beta = float(beta)
        self.name = f"beta{beta:g}"

    def factor(self, logits: torch.Tensor, y: torch.Tensor, state: Any) -> float:
        return self.beta

    def stats(self, states: list[Any]) -> dict[str, float]:
        return {"beta_mean": self.beta, "beta_min": self.beta, "beta_max": self.beta}

    def config(self) -> dict[str, Any]:
        return {"scaler": "fixed", "beta": self.beta}


def ce_loss(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy."""
    return F.cross_entropy(z, y, reduction="none")


def dlr_loss(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample difference-of-logits-ratio loss (Croce & Hein 2020), to be maximised."""
    zs, _ = z.sort(dim=1, descending=True)
    z_y = z.gather(1, y[:, None]).squeeze(1)
    top_is_y = zs[:, 0] == z_y
    z_other = torch.where(top_is_y, zs[:, 1], zs[:, 0])
    return -(z_y - z_other) / (zs[:, 0] - zs[:, 2] + 1e-12)


def _flat_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).view(-1, *[1] * (t.ndim - 1))


def linf_box(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The L∞ ε-ball around ``x`` intersected with [0, 1]: ``(max(x − ε, 0), min(x + ε, 1))``."""
    return (x - eps).clamp_(min=0.0), (x + eps).clamp_(max=1.0)


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str,
            box: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Project onto the ε-ball around ``x`` (whole input) intersected with [0, 1].

    L∞: a clamp onto :func:`linf_box` (``box``, when given, is that box: it depends on ``x``
    and ε only). L2: δ scaled onto the ball, then a clamp to [0, 1].
    """
    if norm == "linf":
        lo, hi = box if box is not None else linf_box(x, eps)
        return torch.clamp(x_adv, lo, hi)
    delta = x_adv - x
    delta = delta * (eps / _flat_norm(delta).clamp_min(1e-12)).clamp(max=1.0)
    return (x + delta).clamp(0.0, 1.0)


def random_start(x: torch.Tensor, eps: float, norm: str, gen: torch.Generator) -> torch.Tensor:
    """A uniform point of the ε-ball around ``x``, clamped to [0, 1].

    L∞: ``clamp(x + ε·(2u − 1), 0, 1)`` with u uniform in [0, 1), computed in place in the
    noise's buffer (the same operations, so the same bits, without four more input-sized
    tensors)."""
    if norm == "linf":
        noise = torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        return noise.mul_(2).sub_(1).mul_(eps).add_(x).clamp_(0, 1)
    direction = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
    direction = direction / _flat_norm(direction).clamp_min(1e-12)
    dim = x[0].numel()
    u = torch.rand((len(x),), generator=gen, device=x.device, dtype=x.dtype)
    radius = eps * u.pow(1.0 / dim)
    return (x + direction * radius.view(-1, *[1] * (x.ndim - 1))).clamp(0, 1)


def ascent_direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """sign(g) for L∞; g / ‖g‖₂ per sample for L2, computed so that it never underflows.

    Saturated binarized networks have input gradients below ~4e-23 that are not zero:
    their squares underflow in float32, ‖g‖₂ comes out as exactly 0, and the usual
    ``g / max(‖g‖, 1e-12)`` (Foolbox's form too) gives a step of ~0 although g has a direction.
    Dividing by max|g| first makes the direction exact for every g ≠ 0 (and 0 for g = 0).
    """
    if norm == "linf":
        return grad.sign()
    peak = grad.flatten(1).abs().amax(dim=1).view(-1, *[1] * (grad.ndim - 1))
    unit = grad / peak.clamp_min(torch.finfo(grad.dtype).tiny)
    return unit / _flat_norm(unit).clamp_min(1e-12)


def _peak(grad: torch.Tensor) -> torch.Tensor:
    """max|g| per sample, shaped to broadcast (one min/max pass; no |g| tensor is made)."""
    lo, hi = torch.aminmax(grad.flatten(1), dim=1)
    return torch.maximum(hi, lo.neg()).view(-1, *[1] * (grad.ndim - 1))


def step_into(out: torch.Tensor, x_adv: torch.Tensor, grad: torch.Tensor, x: torch.Tensor,
              step: float, eps: float, norm: str,
              box: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """``project(x_adv + step · ascent_direction(grad), x, eps, norm, box)``, written into
    ``out``.

    The same floating-point operations in the same order as that expression (so the same bits:
    the tests compare them), done in place in one preallocated buffer: the attack loop then
    allocates no input-sized tensor per step. ``out`` must not alias ``x_adv``, ``grad`` or ``x``.
    An L∞ step is three passes over the input: sign, ``x_adv + step · sign`` (exact product:
    ±step or 0) and the clamp onto the box.
    """
    if norm == "linf":
        lo, hi = box if box is not None else linf_box(x, eps)
        torch.sign(grad, out=out)
        torch.add(x_adv, out, alpha=step, out=out)
        return torch.clamp(out, lo, hi, out=out)
    torch.div(grad, _peak(grad).clamp_min(torch.finfo(grad.dtype).tiny), out=out)
    out.div_(_flat_norm(out).clamp_min(1e-12))
    out.mul_(step)
    out.add_(x_adv).sub_(x)  # the step taken, then the perturbation δ (IEEE + commutes)
    out.mul_((eps / _flat_norm(out).clamp_min(1e-12)).clamp(max=1.0))
    return out.add_(x).clamp_(0.0, 1.0)


def _keep_new_successes(found: torch.Tensor, success: torch.Tensor, x_adv: torch.Tensor,
                        logits: torch.Tensor, y: torch.Tensor, rows: torch.Tensor | None = None,
                        done: torch.Tensor | None = None) -> bool:
    """Copy the iterates that are misclassified for the first time into ``found`` and mark
    them in ``success`` (both in place); whether there were any.

    ``x_adv``, ``logits`` and ``y`` hold the rows ``rows`` of the whole batch (all rows when
    None), and ``done`` their flags in ``success`` (updated too; ``success`` itself when
    None). Four small operations on a step without a new success (argmax, ≠, "wrong and not
    yet done" as one comparison of booleans, any)."""
    done = success if done is None else done
    newly = torch.gt(logits.argmax(1) != y, done)
    if not newly.any():
        return False
    idx = newly.nonzero().squeeze(1)
    at = idx if rows is None else rows.index_select(0, idx)
    found.index_copy_(0, at, x_adv.index_select(0, idx))
    if done is not success:
        success.index_fill_(0, at, True)
    done.logical_or_(newly)
    return True


def kept_rows(done: torch.Tensor, min_rows: int = MIN_ROWS) -> torch.Tensor | None:
    """The positions of a batch to go on with once the points ``done`` may leave: every point
    not done, topped up with the first done ones to ``min_rows`` rows (or the whole batch, if
    smaller), in batch order; None when the batch would not shrink."""
    todo = (~done).nonzero().squeeze(1)
    if max(len(todo), min(min_rows, len(done))) >= len(done):
        return None
    if len(todo) < min_rows:
        fill = done.nonzero().squeeze(1)[: min_rows - len(todo)]
        todo = torch.cat([todo, fill]).sort().values
    return todo


def ce_sum(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The batch's summed cross-entropy (one fused reduction: the same gradient, bit for bit,
    as ``ce_loss(z, y).sum()``)."""
    return F.cross_entropy(z, y, reduction="sum")


def ce_sum_grad(z: torch.Tensor, y: torch.Tensor,
                beta: torch.Tensor | float | None = None) -> torch.Tensor:
    """``∂/∂z ce_sum(z · β, y)`` (β = 1 when None), without an autograd graph.

    The kernels and operands are the ones autograd runs for that expression, so the bits are
    the same (``tests/test_attack_loop.py`` checks): the sum's cross-entropy sends −1 into each
    label's log-probability, ``log_softmax``'s backward kernel turns that into
    ``softmax(z·β) − onehot(y)``, and the product's backward multiplies by β. The attack loop
    then makes one backward pass from the logits, with none of the loss's graph nodes, which
    on a small network is a visible share of a step.
    """
    zs = z if beta is None else z * beta
    seed = torch.zeros_like(zs).scatter_(1, y[:, None], -1.0)
    grad = torch._log_softmax_backward_data(seed, torch.log_softmax(zs, 1), 1, zs.dtype)
    return grad if beta is None else grad * beta


def dlr_sum(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The batch's summed DLR loss."""
    return dlr_loss(z, y).sum()


#: The baselines' step settings, which every variant of them (PGD++, DLR, restarts) shares:
#: the paper's ratios (Gupta & Ajanthan, AAAI 2022, Table 6), L∞ PGD η = ε/4 (2/255 for 8/255),
#: L2 PGD η = ε/8 (15/255 for 120/255), FGSM η = ε; 20 steps, one random start.
BASE_SETTINGS: dict[str, dict[str, Any]] = {
    "fgsm": {"norm": "linf", "steps": 1, "rel_step": 1.0},
    "pgd-linf": {"norm": "linf", "steps": 20, "rel_step": 0.25},
    "pgd-l2": {"norm": "l2", "steps": 20, "rel_step": 0.125},
}


class GradientAttack(Attack):
    """PGD with ``steps`` steps of size ``rel_step · ε``; FGSM is ``steps=1, rel_step=1``."""

    #: 2: the L2 step no longer underflows on saturated networks (see ascent_direction);
    #: 3: the L∞ projection is one clamp onto the box [max(x − ε, 0), min(x + ε, 1)] (before:
    #: δ clamped to ±ε, x + δ clamped to [0, 1]; the same point up to the rounding of
    #: x + (x' − x)), and the last iterate gets no forward pass of the attack's own;
    #: 4: early stopping (the same candidates, fewer passes: the recorded costs change)
    version = 4

    def __init__(
        self, *, norm: Norm = "linf", steps: int = 20, rel_step: float = 0.25,
        loss: str = "ce", restarts: int = 1, random_start: bool = True,
        scaler: LogitScaler | None = None, early_stop: bool = True,
    ) -> None:
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        if steps < 1 or restarts < 1 or rel_step <= 0:
            raise ValueError("steps and restarts must be >= 1 and rel_step > 0")
        self.norm = norm
        self.steps = steps
        self.rel_step = rel_step
        self.loss = loss
        self.restarts = restarts
        self.random_start = random_start
        self.early_stop = bool(early_stop)
        self.scaler = scaler or LogitScaler()

    def direction(self, grad: torch.Tensor) -> torch.Tensor:
        """The ascent direction of one step (:func:`ascent_direction`)."""
        return ascent_direction(grad, self.norm)

    def step_into(self, out: torch.Tensor, x_adv: torch.Tensor, grad: torch.Tensor,
                  x: torch.Tensor, step: float, eps: float,
                  box: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """One step, ``project(x_adv + step · direction(grad))``, written into ``out``: in
        place (:func:`step_into`) for the standard direction, plainly for an overridden one.
        ``box`` is the L∞ :func:`linf_box` of ``x`` and ε, when the caller has it."""
        if type(self).direction is GradientAttack.direction:
            return step_into(out, x_adv, grad, x, step, eps, self.norm, box)
        return out.copy_(project(x_adv + step * self.direction(grad), x, eps, self.norm, box))

    def setup(self, model: nn.Module, context: AttackContext) -> None:
        self.scaler.setup(model, context)

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float,
            generator: torch.Generator) -> AttackResult:
        # only a restart that decides which points run again checks its last iterate
        best, broken, state = self._one_run(model, x, y, eps, generator,
                                            check_last=self.restarts > 1)  # every point
        states: list[Any] = [state]
        for r in range(1, self.restarts):
            todo = (~broken).nonzero().squeeze(1)
            if len(todo) == 0:
                break
            x_adv, success, state = self._one_run(model, x[todo], y[todo], eps, generator,
                                                  check_last=r < self.restarts - 1)
            states.append(state)
            best[todo] = x_adv
            broken[todo] |= success
        info: dict[str, Any] = {"claimed_success": int(broken.sum())}
        info.update(self.scaler.stats(states))
        return AttackResult(best, info)

    def _one_run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
                 gen: torch.Generator, *, check_last: bool
                 ) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """One restart: the candidates, which of them the attack saw misclassified (the last
        iterate only with ``check_last``: one more forward pass) and the scaler's state."""
        loss_fn = ce_sum if self.loss == "ce" else dlr_sum
        # CE through a scaler that only defines its temperature: the loss's gradient in closed
        # form (ce_sum_grad, the same bits), then one backward pass from the logits
        closed_form = self.loss == "ce" and type(self.scaler).scale is LogitScaler.scale
        step = self.rel_step * eps
        x_adv = random_start(x, eps, self.norm, gen) if self.random_start else x.clone()
        state, first = self.scaler.start(model, x_adv, y)
        # rows of `found` are only read where `success` is set, i.e. after they were written
        found = torch.empty_like(x_adv)
        success = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        # the points still iterated (`rows` of the whole batch, None: all), their inputs,
        # labels, box and flags in `success` (`done`: `success` itself until the batch shrinks)
        rows, xs, ys, done = None, x, y, success
        box = linf_box(x, eps) if self.norm == "linf" else None
        spare = torch.empty_like(x_adv)  # two buffers take turns holding the iterate
        for _ in range(self.steps):
            if first is not None:  # the scaler's forward pass at the start, reused once
                (leaf, logits), first = first, None
            else:
                leaf = x_adv.requires_grad_(True)
                logits = model(leaf)
            x_adv = leaf.detach()
            z = logits.detach()
            keep = None
            if _keep_new_successes(found, success, x_adv, z, ys, rows, done) \
                    and self.early_stop:
                if bool(done.all()):
                    break  # every point is done: no backward pass
                keep = kept_rows(done)
            if closed_form:
                beta = self.scaler.factor(z, ys, state)
                (grad,) = torch.autograd.grad(logits, leaf, ce_sum_grad(z, ys, beta))
            else:
                loss = loss_fn(self.scaler.scale(logits, ys, state), ys)
                (grad,) = torch.autograd.grad(loss, leaf)
            x_adv, spare = self.step_into(spare, x_adv, grad, xs, step, eps, box), x_adv
            if keep is not None:  # finished points leave before the next forward pass
                rows = keep if rows is None else rows.index_select(0, keep)
                x_adv, xs, ys, done = (t.index_select(0, keep) for t in (x_adv, xs, ys, done))
                if box is not None:
                    box = (box[0].index_select(0, keep), box[1].index_select(0, keep))
                spare = torch.empty_like(x_adv)
                state = self.scaler.narrow(state, keep)
        if check_last and not (self.early_stop and bool(done.all())):
            with torch.no_grad():
                logits = model(x_adv)
            _keep_new_successes(found, success, x_adv, logits, ys, rows, done)
        # the last iterates of the points still iterated, the kept candidates for the others
        if rows is not None:
            x_adv = found.index_copy(0, rows, x_adv)
        if success.any():
            idx = success.nonzero().squeeze(1)
            x_adv.index_copy_(0, idx, found.index_select(0, idx))
        return x_adv, success, state
