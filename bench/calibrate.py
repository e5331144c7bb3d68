"""Per-model preparation shared by the runner and ``bench.evaluate``.

* NJS β1 is calibrated once per model on the first 101 test images of the dataset (the
  reference protocol), independently of which test points a cell attacks, in both
  coordinates: the dataset's normalised ones (the ``*-njs`` attacks, as the authors' code)
  and [0, 1] pixels (``*-njs-raw``).
* Gradient-masking diagnostics (Athalye et al. 2018; the paper's Table 13) are computed on a
  suite's test points and stored in its model record; values that are undefined (no
  correctly classified point) become None.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from attacks.diagnostics import gradient_diagnostics
from attacks.pgdpp import NJS_N_REF, njs_beta1
from zoo import Dataset
from zoo.data import dataset_info

#: bumped when the diagnostics mean something else; a model record of another version is
#: written again (2: NJS values in the dataset's normalised coordinates)
DIAGNOSTICS_VERSION = 2


def calibrate(model: nn.Module, data: Dataset, device: str) -> float:
    """Pin the model's NJS β1 on the dataset's first 101 test images, in normalised and in
    pixel coordinates; returns the normalised one (the reference's)."""
    x_ref = data.test_x[:NJS_N_REF].to(device)
    njs_beta1(model, x_ref, recompute=True)
    return njs_beta1(model, x_ref, std=dataset_info(data.name).std, recompute=True)


def diagnostics(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float | None]:
    """JSON-ready gradient diagnostics of the model at clean points (NaN → None)."""
    raw = gradient_diagnostics(model, x, y)
    out = {k: (float(v) if math.isfinite(float(v)) else None) for k, v in raw.items()}
    return {**out, "version": DIAGNOSTICS_VERSION}
