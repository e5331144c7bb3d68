"""Gradient-masking diagnostics of a model (Athalye et al. 2018;
signal propagation as in Gupta & Ajanthan, AAAI 2022, Table 13).

On the correctly classified points of a batch, before temperature scaling and after NJS and
HNS scaling (β chosen at the clean points, as the attacks would at their start points):

* ``zero_grad_share``: share of points whose input gradient of the CE loss is exactly zero
  (every entry == 0 in the model's dtype: the float32 underflow of gradient masking);
* ``jac_sv_mean`` / ``jac_sv_std``: mean and (population) standard deviation of all d singular
  values of the Jacobian of the (scaled) logits, β·J;
* ``psi_norm``: mean ‖softmax(βa) − onehot(y)‖₂, the error signal ψ;
* ``grad_norm``: mean ‖∂ℓ/∂x‖₂ of the CE loss on the (scaled) logits.

Suffixes ``_njs`` and ``_hns`` mark the scaled versions. Every value is a plain float; values
are NaN when no point of the batch is classified correctly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from attacks.pgdpp import NJS_RHO, hns_beta, logits_and_jacobian, njs_beta

_VARIANTS = ("", "_njs", "_hns")
_METRICS = ("zero_grad_share", "jac_sv_mean", "jac_sv_std", "psi_norm", "grad_norm")


def _keys() -> list[str]:
    return [m + v for m in _METRICS for v in _VARIANTS]


@torch.no_grad()
def _psi_norm(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    psi = torch.softmax(logits, dim=1) - F.one_hot(y, logits.shape[1]).to(logits.dtype)
    return psi.norm(dim=1)


def gradient_diagnostics(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                         njs_beta1: float, chunk: int = 256,
                         rho: float = NJS_RHO) -> dict[str, float]:
    """Signal-propagation statistics of ``model`` (put in eval mode) at clean points ``x``.

    ``njs_beta1``: the model's NJS β1, as the ``*-njs`` attacks use it (in the dataset's
    normalised coordinates: :func:`attacks.pgdpp.reference_beta1`).
    Also reports ``n_points``, ``n_correct``, ``njs_beta1``, ``njs_beta_mean`` (effective
    β1·β2), ``njs_beta2_share``, ``hns_beta_mean``/``_min``/``_max`` and
    ``hns_fallback_share`` (share of correct points where HNS used β = 1).
    """
    model.eval()
    beta1 = float(njs_beta1)
    parts: dict[str, list[torch.Tensor]] = {}

    def add(key: str, value: torch.Tensor) -> None:
        parts.setdefault(key, []).append(value.detach().double())

    for start in range(0, len(x), chunk):
        xc, yc = x[start:start + chunk], y[start:start + chunk]
        logits, jac = logits_and_jacobian(model, xc)
        ok = logits.argmax(1) == yc
        if not ok.any():
            continue
        xc, yc, logits, jac = xc[ok], yc[ok], logits[ok], jac[ok]
        beta_hns, fell_back = hns_beta(logits, jac @ jac.transpose(1, 2), yc)
        betas = {
            "": torch.ones(len(xc), dtype=logits.dtype, device=logits.device),
            "_njs": njs_beta(logits, yc, beta1, rho),
            "_hns": beta_hns,
        }
        add("njs_beta", betas["_njs"])
        add("njs_rescaled", betas["_njs"] != betas["_njs"].new_tensor(beta1))
        add("hns_beta", betas["_hns"])
        add("hns_fallback", fell_back)
        sv = torch.linalg.svdvals(jac)  # (n, d)
        with torch.enable_grad():
            xg = xc.detach().requires_grad_(True)
            out = model(xg)
            for i, (suffix, beta) in enumerate(betas.items()):
                z = out * beta[:, None]
                loss = F.cross_entropy(z, yc, reduction="sum")
                (grad,) = torch.autograd.grad(loss, xg, retain_graph=i < len(betas) - 1)
                grad = grad.flatten(1)
                add("zero_grad_share" + suffix, (grad == 0).all(1))
                add("grad_norm" + suffix, grad.norm(dim=1))
                add("psi_norm" + suffix, _psi_norm(z.detach(), yc))
                add("jac_sv" + suffix, (sv * beta[:, None]).flatten())

    n_correct = len(torch.cat(parts["njs_beta"])) if parts else 0
    result: dict[str, float] = {"n_points": float(len(x)), "n_correct": float(n_correct),
                                "njs_beta1": beta1}
    if not parts:
        nan = math.nan
        result.update({k: nan for k in _keys()})
        result.update({k: nan for k in ("njs_beta_mean", "njs_beta2_share", "hns_beta_mean",
                                         "hns_beta_min", "hns_beta_max", "hns_fallback_share")})
        return result
    cat = {k: torch.cat(v) for k, v in parts.items()}
    for suffix in _VARIANTS:
        sv = cat["jac_sv" + suffix]
        result["zero_grad_share" + suffix] = float(cat["zero_grad_share" + suffix].mean())
        result["jac_sv_mean" + suffix] = float(sv.mean())
        result["jac_sv_std" + suffix] = float(sv.std(correction=0))
        result["psi_norm" + suffix] = float(cat["psi_norm" + suffix].mean())
        result["grad_norm" + suffix] = float(cat["grad_norm" + suffix].mean())
    result["njs_beta_mean"] = float(cat["njs_beta"].mean())
    result["njs_beta2_share"] = float(cat["njs_rescaled"].mean())
    result["hns_beta_mean"] = float(cat["hns_beta"].mean())
    result["hns_beta_min"] = float(cat["hns_beta"].min())
    result["hns_beta_max"] = float(cat["hns_beta"].max())
    result["hns_fallback_share"] = float(cat["hns_fallback"].mean())
    return result
