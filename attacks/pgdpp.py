"""PGD++ / FGSM++: gradient attacks on temperature-scaled logits (Gupta & Ajanthan, AAAI 2022,
Sec. 4).

A positive β on the logits changes no prediction but undoes the softmax saturation that masks
the gradient of binarized networks. Two ways of choosing β, both :class:`LogitScaler` s that plug
into :class:`attacks.gradient.GradientAttack`:

* :class:`NJSScaler` (Network Jacobian Scaling): β1 = 1 / mean singular value of the
  input-output Jacobian, once per model (:func:`njs_beta1` on the dataset's first 101 test
  images, which :meth:`NJSScaler.setup` takes from its context), times a
  per-sample, per-step β2 = c(ρ)/γ when the true class is already too confident. The Jacobian
  is taken, as in the authors' code, with respect to the *normalised* input u = (x − μ)/σ that
  their networks read (μ, σ the dataset's per-channel normalisation, e.g. 0.1307 and 0.3081
  on MNIST): ∂f/∂u = σ·∂f/∂x, so β1 is 1/σ times the pixel-coordinate value (3.25× on MNIST).
  The pixel-coordinate β1 stays registered as the ``*-njs-raw`` attacks, to show how much the
  convention matters. HNS is invariant to a uniform rescaling (one σ for every channel, as on
  MNIST): it scales every Gram matrix J Jᵀ by σ², hence every grid point's squared Hessian norm
  by σ⁴, so the arg-max β does not move; per-channel σ (CIFAR-10) would change it slightly.
* :class:`HNSScaler` (Hessian Norm Scaling): per sample, once at the start point, the β of a
  100-point grid maximising ‖∂²ℓ/∂x²‖_F, computed exactly through the Gram identity
  ‖Jᵀ S J‖²_F = tr(S G S G), G = J Jᵀ (d × d); no N × N Hessian is ever formed.

Importing this module registers the ++ attacks, the fixed-β heuristic, DLR-loss variants and
a 5-restart PGD.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from attacks.base import AttackContext
from attacks.gradient import (
    BASE_SETTINGS,
    FixedTemperature,
    Forward,
    GradientAttack,
    LogitScaler,
)
from attacks.registry import register_attack
from results.vocabulary import Traits

#: the NJS confidence threshold ρ of the paper
NJS_RHO = 0.01
#: number of test images the reference uses for β1
NJS_N_REF = 101
#: HNS grid: ``HNS_GRID`` values of β from c(1 − 1/d − 0.01)/γ to c(HNS_RHO_MIN)/γ
HNS_GRID = 100
HNS_RHO_MIN = 1e-72


def c_rho(rho: float, d: int) -> float:
    """Proposition 1's constant: 1 − softmax(βa)_top > ρ whenever β < c(ρ)/(a_max − a_min)."""
    return -math.log(rho / ((d - 1) * (1.0 - rho)))


# --------------------------------------------------------------------------------------------
# Jacobians


def _eval_mode(model: nn.Module) -> bool:
    was_training = model.training
    model.eval()
    return was_training


#: Layers whose backward pass has no vmap batching rule in torch 2.14: a vmapped backward
#: (``is_grads_batched``) through them runs slice by slice and then copies the slices together.
#: On the mnist5k convnet (batch 256, one thread) that took 1.5-1.7x the time of d plain backward
#: passes, which give bit-identical Jacobians; on the MLPs the vmapped backward is the faster one.
_UNBATCHED_BACKWARD = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                       nn.ConvTranspose3d, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)


def _vmapped_backward_pays(model: nn.Module) -> bool:
    return not any(isinstance(m, _UNBATCHED_BACKWARD) for m in model.modules())


def forward_and_jacobian(model: nn.Module, x: torch.Tensor) -> tuple[Forward, torch.Tensor]:
    """The forward pass at ``x`` (kept: its graph may serve one more backward pass) and the
    input-output Jacobians ``(B, d, N)`` (N = inputs per sample).

    One forward pass and d backward passes, one per one-hot cotangent: vmapped into one call
    (``is_grads_batched``) unless the model has layers that vmap cannot batch (convolutions,
    max-pooling: then d ordinary backward passes are faster), or when batching fails. Both ways
    give the same bits. Samples must not interact (eval mode): rows are per sample.
    """
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        out = model(xg)
        b, d = out.shape
        if _vmapped_backward_pays(model):
            eye = torch.eye(d, dtype=out.dtype, device=out.device)
            try:
                (g,) = torch.autograd.grad(out, xg, grad_outputs=eye[:, None].expand(d, b, d),
                                           is_grads_batched=True, retain_graph=True)
                # a vmapped backward is d backward passes, but a pass counter's output hook
                # fires once: tell an instrumented model (bench.instrument.CountingModel)
                count = getattr(model, "count_backwards", None)
                if callable(count):
                    count((d - 1) * b)
                return Forward(xg, out), g.reshape(d, b, -1).transpose(0, 1)
            except (RuntimeError, NotImplementedError):  # no batching rule: d backward passes
                xg = x.detach().requires_grad_(True)
                out = model(xg)
        rows = [torch.autograd.grad(out[:, k].sum(), xg, retain_graph=True)[0]
                for k in range(d)]
        jac = torch.stack([r.reshape(b, -1) for r in rows], dim=1)
    return Forward(xg, out), jac


def logits_and_jacobian(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``(B, d)`` and input-output Jacobians ``(B, d, N)`` at ``x``
    (:func:`forward_and_jacobian`, the graph dropped)."""
    forward, jac = forward_and_jacobian(model, x)
    return forward.logits.detach(), jac


def input_jacobian(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Batched input-output Jacobian ``(B, d, N)`` of ``model`` at ``x``."""
    return logits_and_jacobian(model, x)[1]


def jacobian_singular_values(model: nn.Module, x: torch.Tensor,
                             std: Sequence[float] | None = None) -> torch.Tensor:
    """All d singular values of each sample's Jacobian, ``(B, d)``, model in eval mode.

    With ``std`` (one σ per input channel) the Jacobian is taken with respect to the
    normalised input u = (x − μ)/σ: each channel's columns of ∂f/∂x are multiplied by its σ.
    """
    was_training = _eval_mode(model)
    try:
        jac = input_jacobian(model, x)
        if std is not None:
            jac = jac * channel_scale(std, x).to(jac.dtype)
        return torch.linalg.svdvals(jac)
    finally:
        model.train(was_training)


def channel_scale(std: Sequence[float], x: torch.Tensor) -> torch.Tensor:
    """Each flattened input coordinate's σ ``(N,)``, for inputs ``x`` ``(B, C, …)`` and one σ
    per channel (the Jacobian's columns run channel by channel)."""
    sigma = [float(s) for s in std]
    if len(sigma) != x.shape[1] or not all(math.isfinite(s) and s > 0 for s in sigma):
        raise ValueError(f"std must hold one positive σ per input channel ({x.shape[1]}), "
                         f"got {list(std)}")
    per_channel = x[0].numel() // x.shape[1]
    return torch.tensor(sigma, device=x.device).repeat_interleave(per_channel)


# --------------------------------------------------------------------------------------------
# NJS

#: the coordinates NJS takes its Jacobian in: ``normalised`` (with respect to (x − μ)/σ, the
#: dataset's normalisation, as the reference code does) or ``pixel`` (with respect to x ∈ [0, 1])
NJS_COORDS = ("normalised", "pixel")

def njs_beta1(model: nn.Module, x_ref: torch.Tensor, *, std: Sequence[float] | None = None,
              n_ref: int = NJS_N_REF) -> float:
    """NJS β1 of ``model``: 1 / mean of all Jacobian singular values over ``x_ref[:n_ref]``.

    ``std`` (one σ per input channel, the dataset's normalisation) gives β1 in ``normalised``
    coordinates, the reference's; without it, in ``pixel`` coordinates. The paper's
    calibration uses the first 101 test images (:func:`reference_beta1`). A model whose
    Jacobian vanishes everywhere gets β1 = 1 (no gradient to restore).
    """
    if len(x_ref) == 0:
        raise ValueError(f"NJS β1 needs reference inputs (the first {n_ref} test images)")
    mean_sv = float(jacobian_singular_values(model, x_ref[:n_ref], std).double().mean())
    return 1.0 / mean_sv if math.isfinite(mean_sv) and mean_sv > 0 else 1.0


def reference_beta1(model: nn.Module, context: AttackContext, coords: str = "normalised"
                    ) -> float | None:
    """NJS β1 of ``model`` on the context's reference images (the dataset's first 101 test
    images) in ``coords``, computed once per context; None when the context has no reference
    images, or no σ for normalised coordinates."""
    if context.reference_x is None or (coords == "normalised" and context.std is None):
        return None
    std = context.std if coords == "normalised" else None
    return context.remember(("njs-beta1", coords), lambda: njs_beta1(
        model, context.reference_x, std=std))


def njs_beta(logits: torch.Tensor, y: torch.Tensor, beta1: float,
             rho: float = NJS_RHO) -> torch.Tensor:
    """Per-sample effective NJS temperature ``(B,)`` (no gradient).

    z = β1·a; where 1 − softmax(z)_y ≤ ρ, z is multiplied by β2 = c(ρ)/(max z − min z), so the
    effective β is β1·β2 = c(ρ)/(max a − min a) there and β1 elsewhere.
    """
    a = logits.detach()
    # 1 − p_y ≤ ρ  ⇔  Σ_i exp(β1 (a_i − a_y)) ≤ 1 / (1 − ρ)  (an overflow to inf reads "no");
    # in place in one temporary: a small share of a step on small networks
    spread = (a - a.gather(1, y[:, None])).mul_(beta1).exp_().sum(1)
    confident = spread <= 1.0 / (1.0 - rho)
    if not confident.any():  # the usual case on unsaturated networks: β1 everywhere
        return torch.full_like(spread, beta1)
    lo, hi = torch.aminmax(a, dim=1)
    gap = (hi - lo).clamp_min(torch.finfo(a.dtype).tiny)
    return torch.where(confident, c_rho(rho, a.shape[1]) / gap, beta1)


class NJSScaler(LogitScaler):
    """Network Jacobian Scaling: β1 per model, times β2 per sample and step when saturated.

    β1 is ``beta1`` when given, else the model's β1 on the reference images of the context
    :meth:`setup` received (:func:`reference_beta1`: the benchmark sets every attack up so).
    Without either, in pixel coordinates each batch is calibrated on its own first ≤ 101
    points, at their random starts; normalised coordinates need the dataset's σ, so such an
    attack must be set up first.
    """

    name = "njs"
    #: 2: β1 in normalised coordinates by default (1: pixel coordinates, now ``coords="pixel"``)
    version = 2

    def __init__(self, *, rho: float = NJS_RHO, beta1: float | None = None,
                 n_ref: int = NJS_N_REF, coords: str = "normalised") -> None:
        if not 0 < rho < 1:
            raise ValueError(f"rho must lie in (0, 1), got {rho}")
        if beta1 is not None and not (math.isfinite(beta1) and beta1 > 0):
            raise ValueError(f"beta1 must be a positive number, got {beta1}")
        if coords not in NJS_COORDS:
            raise ValueError(f"coords must be one of {NJS_COORDS}, got {coords!r}")
        self.rho = float(rho)
        self.beta1 = None if beta1 is None else float(beta1)
        self.n_ref = int(n_ref)
        self.coords = coords
        self._reference_beta1: float | None = None

    def setup(self, model: nn.Module, context: AttackContext) -> None:
        self._reference_beta1 = reference_beta1(model, context, self.coords)

    def prepare(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
        beta1 = self.beta1 if self.beta1 is not None else self._reference_beta1
        if beta1 is None and self.coords == "pixel":
            beta1 = njs_beta1(model, x, n_ref=self.n_ref)
        elif beta1 is None:
            raise ValueError(
                "NJS β1 in normalised coordinates needs the dataset's reference images and σ: "
                "set the attack up first, attack.setup(model, AttackContext(reference_x=the "
                "first 101 test images, std=the per-channel σ)) (the benchmark does it; "
                "bench.calibrate.attack_context builds it for zoo datasets), or use "
                "coords='pixel' (the *-njs-raw attacks)")
        return {"beta1": beta1, "betas": []}

    def factor(self, logits: torch.Tensor, y: torch.Tensor, state: dict[str, Any]
               ) -> torch.Tensor:
        beta = njs_beta(logits, y, state["beta1"], self.rho)
        state["betas"].append(beta)
        return beta[:, None]

    def stats(self, states: list[dict[str, Any]]) -> dict[str, float]:
        betas = [b for s in states for b in s["betas"]]
        if not betas:
            return {}
        beta1 = states[0]["beta1"]
        rescaled = torch.cat([b != b.new_tensor(s["beta1"]) for s in states for b in s["betas"]])
        allb = torch.cat(betas).double()
        return {"beta1": float(beta1), "beta_mean": float(allb.mean()),
                "beta_min": float(allb.min()), "beta_max": float(allb.max()),
                "beta2_share": float(rescaled.double().mean())}

    def config(self) -> dict[str, Any]:
        return {"scaler": self.name, "rho": self.rho, "beta1": self.beta1, "n_ref": self.n_ref,
                "coords": self.coords, "version": self.version}


# --------------------------------------------------------------------------------------------
# HNS


def hessian_norm_sq(logits: torch.Tensor, gram: torch.Tensor, betas: torch.Tensor) -> torch.Tensor:
    """‖∂²CE(βa)/∂x²‖²_F for piecewise-linear nets, for each sample and β: ``(B, K)``.

    ``logits`` ``(B, d)``, ``gram`` = J Jᵀ ``(B, d, d)``, ``betas`` ``(B, K)``. The Hessian is
    β² Jᵀ S J with S = diag(p) − p pᵀ, p = softmax(βa) (the label drops out), and
    ‖Jᵀ S J‖²_F = tr(S G S G) = pᵀ(Ĝ∘Ĝ)p − 2 Σ_i p_i (Ĝp)_i² + (pᵀĜp)², where
    Ĝ_ij = (e_i − e_t)ᵀ G (e_j − e_t) is the Gram matrix re-centred on the top class t. With
    that centring the three terms are O(q²), O(q³), O(q⁴) in q = 1 − p_t, so saturated samples
    do not cancel catastrophically; O(K d²) per sample, float64, no N × N matrix.
    """
    a = logits.detach().double()
    g = gram.detach().double()
    bet = betas.double()
    t = a.argmax(1)
    idx = torch.arange(len(a), device=a.device)
    g_t = g[idx, t]  # (B, d): row t of G
    g_c = g - g_t[:, :, None] - g_t[:, None, :] + g[idx, t, t][:, None, None]
    # class axis in the middle, grid axis last: reductions over the d classes stay vectorised
    e = torch.exp((a - a[idx, t][:, None])[:, :, None] * bet[:, None, :])  # (B, d, K)
    p = e / e.sum(1, keepdim=True)
    d = a.shape[1]
    uv = torch.cat([g_c, g_c * g_c], dim=1) @ p  # (B, 2d, K): Ĝp and (Ĝ∘Ĝ)p
    u = uv[:, :d]
    pu = p * u
    tr = (p * uv[:, d:]).sum(1) - 2 * (pu * u).sum(1) + pu.sum(1).square()
    return bet.pow(4) * tr.clamp_min(0.0)


def hns_grid(logits: torch.Tensor, grid_size: int = HNS_GRID,
             rho_min: float = HNS_RHO_MIN) -> torch.Tensor:
    """The per-sample β grid ``(B, K)``: c(1 − 1/d − 0.01)/γ … c(rho_min)/γ, γ = top1 − top2."""
    a = logits.detach().double()
    d = a.shape[1]
    top2 = a.topk(2, dim=1).values
    gap = top2[:, 0] - top2[:, 1]
    lo, hi = c_rho(1.0 - 1.0 / d - 0.01, d), c_rho(rho_min, d)
    unit = torch.linspace(lo, hi, grid_size, dtype=torch.float64, device=a.device)
    return unit[None, :] / gap[:, None]


def hns_beta(logits: torch.Tensor, gram: torch.Tensor, y: torch.Tensor, *,
             grid_size: int = HNS_GRID, rho_min: float = HNS_RHO_MIN
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample HNS β ``(B,)`` (logits' dtype) and a mask of the samples that fell back to 1.

    β = 1 for misclassified samples, for a zero top-2 gap, and when the Hessian norm peaks at
    the first or last grid point.
    """
    a = logits.detach()
    grid = hns_grid(a, grid_size, rho_min)
    ok = (a.argmax(1) == y) & torch.isfinite(grid).all(1) & (grid[:, 0] > 0)
    safe_grid = torch.where(ok[:, None], grid, torch.ones_like(grid))
    norms = hessian_norm_sq(a, gram, safe_grid).nan_to_num(nan=-1.0)
    best = norms.argmax(1)
    ok &= (best > 0) & (best < grid_size - 1)
    beta = torch.where(ok, safe_grid.gather(1, best[:, None]).squeeze(1), 1.0)
    return beta.to(a.dtype), ~ok


def hns_beta_at(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                grid_size: int = HNS_GRID) -> tuple[torch.Tensor, torch.Tensor, Forward]:
    """HNS β of ``model`` at ``x``: ``(beta, fell_back, forward)``, ``forward`` the pass at
    ``x`` that gave the Jacobian (graph kept, see :func:`forward_and_jacobian`)."""
    forward, jac = forward_and_jacobian(model, x)
    gram = jac @ jac.transpose(1, 2)
    beta, fell_back = hns_beta(forward.logits.detach(), gram, y, grid_size=grid_size)
    return beta, fell_back, forward


class HNSScaler(LogitScaler):
    """Hessian Norm Scaling: a per-sample β chosen once at the start point, fixed afterwards."""

    name = "hns"

    def __init__(self, *, grid_size: int = HNS_GRID) -> None:
        if grid_size < 3:
            raise ValueError(f"grid_size must be >= 3, got {grid_size}")
        self.grid_size = int(grid_size)

    def prepare(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
        return self.start(model, x, y)[0]

    def start(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor
              ) -> tuple[dict[str, Any], Forward]:
        """β at the start point, and the forward pass made there for the Jacobian: the
        attack's first step back-propagates its loss through it (no second forward pass)."""
        beta, fell_back, forward = hns_beta_at(model, x, y, grid_size=self.grid_size)
        # every sample's β and fallback (for stats) and the β of the rows still iterated
        return {"beta": beta, "fell_back": fell_back, "active": beta[:, None]}, forward

    def factor(self, logits: torch.Tensor, y: torch.Tensor, state: dict[str, Any]
               ) -> torch.Tensor:
        return state["active"]

    def narrow(self, state: dict[str, Any], rows: torch.Tensor) -> dict[str, Any]:
        return {**state, "active": state["active"].index_select(0, rows)}

    def stats(self, states: list[dict[str, Any]]) -> dict[str, float]:
        if not states:
            return {}
        beta = torch.cat([s["beta"] for s in states]).double()
        fell_back = torch.cat([s["fell_back"] for s in states])
        return {"beta_mean": float(beta.mean()), "beta_min": float(beta.min()),
                "beta_max": float(beta.max()),
                "beta_fallback_share": float(fell_back.double().mean())}

    def config(self) -> dict[str, Any]:
        return {"scaler": self.name, "grid_size": self.grid_size}


# --------------------------------------------------------------------------------------------
# Registered attacks


def make_scaler(scaler: str | LogitScaler | None) -> LogitScaler:
    """A scaler from a name (``none``, ``njs``, ``hns``, ``beta<value>``) or an instance."""
    if isinstance(scaler, LogitScaler):
        return scaler
    if scaler is None or scaler == "none":
        return LogitScaler()
    if scaler == "njs":
        return NJSScaler()
    if scaler == "njs-raw":
        return NJSScaler(coords="pixel")
    if scaler == "hns":
        return HNSScaler()
    if scaler.startswith("beta"):
        return FixedTemperature(float(scaler[4:]))
    raise ValueError(f"unknown scaler {scaler!r}; allowed: none, njs, njs-raw, hns, beta<value>")


def scaled_gradient_attack(*, scaler: str | LogitScaler | None = "none",
                           **kwargs: Any) -> GradientAttack:
    """A :class:`GradientAttack` with a temperature; names keep registry defaults JSON-plain."""
    return GradientAttack(scaler=make_scaler(scaler), **kwargs)


#: how each baseline's description starts (its settings: :data:`BASE_SETTINGS`)
_BASE_TEXT = {
    "fgsm": "FGSM L∞: random start, one step of size ε",
    "pgd-linf": "PGD L∞: random start, 20 steps of ε/4",
    "pgd-l2": "PGD L2: random start, 20 normalised-gradient steps of ε/8",
}
_SCALER_TEXT = {
    "njs": "CE on NJS-scaled logits (β1 = 1/mean singular value of the Jacobian with respect "
           "to the dataset-normalised input, as the authors' code; β2 per sample and step "
           "when 1 − p_y ≤ 0.01)",
    "njs-raw": "CE on NJS-scaled logits with β1 from the Jacobian with respect to [0, 1] pixels "
               "(1/σ times smaller than the reference's: σ = 0.3081 on MNIST); otherwise as "
               "-njs",
    "hns": "CE on HNS-scaled logits (per-sample β maximising the Hessian norm at the start)",
    "beta0.1": "CE on logits times a fixed β = 0.1 (the paper's heuristic)",
}


def _register() -> None:
    for base, text in _BASE_TEXT.items():
        settings = BASE_SETTINGS[base]
        for scaler, scaler_text in _SCALER_TEXT.items():
            kind = "fixed" if scaler.startswith("beta") else scaler
            register_attack(f"{base}-{scaler}", scaled_gradient_attack, scaler=scaler,
                            traits=Traits("gradient-temperature", base, kind),
                            description=f"{text}; {scaler_text}", **settings)
        register_attack(f"{base}-dlr", GradientAttack, loss="dlr",
                        traits=Traits("gradient", base),
                        description=f"{text}; DLR loss", **settings)
    register_attack("pgd-linf-r5", GradientAttack, restarts=5, **BASE_SETTINGS["pgd-linf"],
                    traits=Traits("gradient", "pgd-linf"),
                    description="PGD L∞: 20 steps of ε/4, CE loss, 5 random restarts "
                    "(a sample counts as broken if any restart breaks it)")


_register()
