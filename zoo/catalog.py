"""The models of the zoo. Importing :mod:`zoo` registers all of them.

Names are ``{dataset}-{arch}-{quant}``, e.g. ``mnist5k-mlp5x100-bnn-waq``.
"""

from __future__ import annotations

import math
from functools import partial

from zoo.data import dataset_info
from zoo.models import MLP, QUANTS
from zoo.registry import register_model
from zoo.train import Recipe

# Architectures: name -> (hidden widths, description)
MLP_ARCHS: dict[str, tuple[list[int], str]] = {
    "mlp5x100": ([100] * 5, "the paper's MNIST MLP: 5 hidden layers of 100 units (IPROP protocol)"),
    "mlp3x512": ([512] * 3, "a wide MLP: 3 hidden layers of 512 units"),
}

QUANT_TEXT = {
    "ref": "float network (BN with affine parameters, ReLU)",
    "bnn-wq": "BNN-WQ: sign weights and biases, no scaling, BN without affine, float ReLU "
    "(trained BinaryConnect style)",
    "bnn-waq": "BNN-WAQ (BinaryNet): sign weights, float biases, BN with affine, sign "
    "activations with a straight-through estimator, real-valued input to the first layer",
}

MLP_DATASETS = ("mnist5k", "digits", "mnist", "fashion-mnist")


def mlp_recipe(dataset: str, hidden: list[int], quant: str) -> Recipe:
    """Seeded recipe; binarized nets train with a 1/sqrt(fan-in) logit scale in the loss."""
    epochs = {"digits": 30, "mnist5k": 15}.get(dataset, 5)
    if quant == "ref":
        return Recipe(epochs=epochs, lr=1e-3)
    return Recipe(epochs=epochs, lr=1e-2 if quant == "bnn-waq" else 3e-3,
                  logit_scale=round(1 / math.sqrt(hidden[-1]), 6), clip_latent=True)


def _register_mlps() -> None:
    for dataset in MLP_DATASETS:
        c, h, w = dataset_info(dataset).input_shape
        for arch, (hidden, arch_text) in MLP_ARCHS.items():
            for quant in QUANTS:
                register_model(
                    f"{dataset}-{arch}-{quant}",
                    dataset=dataset, arch=arch, quant=quant,
                    recipe=mlp_recipe(dataset, hidden, quant),
                    description=f"{arch_text}; {QUANT_TEXT[quant]}",
                )(partial(MLP, c * h * w, hidden, 10, quant))


_register_mlps()
