"""Per-model preparation: what attacks get from a dataset, and the model diagnostics.

* :func:`attack_context`: what :meth:`attacks.base.Attack.setup` gets once per model. NJS
  calibrates β1 on the first 101 test images of the dataset (the reference protocol),
  independently of which test points a cell attacks, in the coordinates of its variant: the
  dataset's normalised ones (the ``*-njs`` attacks, as the authors' code) or [0, 1] pixels
  (``*-njs-raw``); Brendel-Bethge takes its fallback starts from the training inputs.
* Gradient-masking diagnostics (Athalye et al. 2018; the paper's Table 13) are computed on a
  suite's test points and stored in its model record; values that are undefined (no
  correctly classified point) become None.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from attacks.base import AttackContext
from attacks.diagnostics import gradient_diagnostics
from attacks.pgdpp import NJS_N_REF
from zoo import Dataset
from zoo.data import dataset_info

#: bumped when the diagnostics mean something else; a model record of another version is
#: written again (2: NJS values in the dataset's normalised coordinates)
DIAGNOSTICS_VERSION = 2


def attack_context(data: Dataset, device: str) -> AttackContext:
    """The context the benchmark sets attacks up with on a model of ``data``."""
    return AttackContext(reference_x=data.test_x[:NJS_N_REF].to(device),
                         std=tuple(dataset_info(data.name).std), train_x=data.train_x)


def diagnostics(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                njs_beta1: float) -> dict[str, float | None]:
    """JSON-ready gradient diagnostics of the model at clean points (NaN → None), with the
    model's NJS β1 (:func:`attacks.pgdpp.reference_beta1`)."""
    raw = gradient_diagnostics(model, x, y, njs_beta1=njs_beta1)
    out = {k: (float(v) if math.isfinite(float(v)) else None) for k, v in raw.items()}
    return {**out, "version": DIAGNOSTICS_VERSION}
