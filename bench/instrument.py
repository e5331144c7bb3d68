"""An instrumented model wrapper: counts forward and backward passes per sample.

Every attack (ours and the libraries') is run through it, so query costs are measured the
same way for all of them. A backward pass is counted when a gradient flows back through the
model's output. Autograd calls that hook once for a vmapped backward over d cotangents (a
batched Jacobian), so such code reports the other d - 1 passes with :meth:`count_backwards`.

The wrapper is transparent (``transparent_inner``): attacks that work on the network itself
rather than through its forward pass (IPROP's exact integer network) unwrap it and report the
forward passes of their own network with :meth:`count_forwards`.
"""

from __future__ import annotations

import torch
from torch import nn


class CountingModel(nn.Module):
    """Wraps a model; ``forwards`` and ``backwards`` count samples passed each way."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.forwards = 0
        self.backwards = 0

    def reset(self) -> None:
        self.forwards = 0
        self.backwards = 0

    @property
    def transparent_inner(self) -> nn.Module:
        """The wrapped model: this wrapper changes no output (see :func:`attacks.base.unwrap`)."""
        return self.model

    def count_forwards(self, samples: int) -> None:
        """Count forward passes made outside :meth:`forward` (an exact copy of the network)."""
        self.forwards += int(samples)

    def count_backwards(self, samples: int) -> None:
        """Count backward passes the output hook cannot see (see the module docstring)."""
        self.backwards += int(samples)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        n = int(x.shape[0])
        self.forwards += n
        if out.requires_grad:
            out.register_hook(self._backward_hook(n))
        return out

    def _backward_hook(self, n: int):
        def hook(grad: torch.Tensor) -> None:
            self.backwards += n

        return hook
