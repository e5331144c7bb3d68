"""Independent verification of adversarial candidates: trust no attack's own success flag.

A candidate counts as a successful adversarial example only if it is finite, differs from its
clean input, lies inside the ε-ball around it (with the tolerance below) and inside [0, 1], and
is misclassified by the model in eval mode. Predictions are made in batches of
:data:`BATCH_SIZE`, for clean inputs (:func:`predict`, used by the runner) and candidates
alike: float results may depend on the batch composition, so a point near the decision
boundary could otherwise be correct in one and wrong in the other.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

#: Stated float tolerance of the ε-ball check: ‖δ‖ ≤ ε·(1 + REL_TOL) + ABS_TOL.
REL_TOL = 1e-5
ABS_TOL = 1e-6
#: Tolerance of the box check: every pixel in [-BOX_TOL, 1 + BOX_TOL].
BOX_TOL = 1e-6
#: Batch size of every prediction made to judge correctness.
BATCH_SIZE = 1000


@dataclass
class Verdict:
    """Per-sample verification of a batch of candidates."""

    success: torch.Tensor  # bool: valid adversarial example
    misclassified: torch.Tensor  # bool: the model is fooled (valid or not)
    in_ball: torch.Tensor
    in_box: torch.Tensor
    distance: torch.Tensor  # ‖x_adv − x‖ in the threat model's norm

    @property
    def rejected(self) -> int:
        """Candidates that fool the model but break the threat model."""
        return int((self.misclassified & ~self.success).sum())


def distance(x_adv: torch.Tensor, x: torch.Tensor, norm: str) -> torch.Tensor:
    delta = (x_adv - x).flatten(1)
    return delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = BATCH_SIZE) -> torch.Tensor:
    """The model's predicted classes (eval mode), in batches of ``batch_size``."""
    model.eval()
    if len(x) == 0:
        return torch.zeros(0, dtype=torch.long, device=x.device)
    return torch.cat([model(x[i : i + batch_size]).argmax(1)
                      for i in range(0, len(x), batch_size)])


@torch.no_grad()
def verify(model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor,
           *, eps: float, norm: str, batch_size: int = BATCH_SIZE) -> Verdict:
    """Check every candidate against the threat model and the model in eval mode. A candidate
    equal to its clean input is never a success (the clean input was judged correct)."""
    x_adv = x_adv.detach().to(x.device, x.dtype)
    finite = torch.isfinite(x_adv.flatten(1)).all(1)
    dist = distance(x_adv, x, norm)
    in_ball = finite & (dist <= eps * (1 + REL_TOL) + ABS_TOL)
    flat = x_adv.flatten(1)
    in_box = finite & (flat >= -BOX_TOL).all(1) & (flat <= 1 + BOX_TOL).all(1)
    preds = predict(model, torch.nan_to_num(x_adv), batch_size) if len(x_adv) else y
    moved = (x_adv != x).flatten(1).any(1)
    mis = finite & moved & (preds != y)
    return Verdict(mis & in_ball & in_box, mis, in_ball, in_box, dist)
