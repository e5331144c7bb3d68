"""The models of the zoo. Importing :mod:`zoo` registers all of them.

Names are ``{dataset}-{arch}-{quant}``, e.g. ``mnist5k-mlp5x100-bnn-waq``; adversarially
trained models add ``-at`` (e.g. ``mnist5k-convnet-ref-at``).
"""

from __future__ import annotations

import math
from dataclasses import replace
from functools import partial

from zoo.cifar import ARCH_TEXT, CIFAR_ARCHS
from zoo.convnets import CONVNET_HIDDEN, CONVNET_TEXT, convnet
from zoo.data import dataset_info
from zoo.models import MLP, QUANTS
from zoo.quantized import MULTIBIT
from zoo.registry import register_model
from zoo.train import Recipe

# Architectures: name -> (hidden widths, description)
MLP_ARCHS: dict[str, tuple[list[int], str]] = {
    "mlp5x100": ([100] * 5, "the paper's MNIST MLP: 5 hidden layers of 100 units (IPROP protocol)"),
    "mlp3x512": ([512] * 3, "a wide MLP: 3 hidden layers of 512 units"),
}

#: Small BNN-WAQ MLPs on the default dataset only, for exact verification (``attacks.milp``):
#: few first-layer units near their thresholds, so every point's question can be decided
#: (at L∞ 0.02 all of the first 30 test points in 14 s; a 2 x 100 MLP left 13 of 30 unknown).
VERIFY_ARCHS: dict[str, tuple[list[int], str]] = {
    "mlp3x50": ([50] * 3, "a verification-friendly MLP: 3 hidden layers of 50 units"),
}

QUANT_TEXT = {
    "ref": "float network (BN with affine parameters, ReLU)",
    "bnn-wq": "BNN-WQ: sign weights and biases, no scaling, BN without affine, float ReLU "
    "(trained BinaryConnect style)",
    "bnn-waq": "BNN-WAQ (BinaryNet): sign weights, float biases, BN with affine, sign "
    "activations with a straight-through estimator, real-valued input to the first layer",
    **{q: (f"W{w}A{a or 32} (Brevitas quantization-aware training): {w}-bit weights with one "
           "float scale per tensor, "
           + (f"{a}-bit ReLU activations with a learned scale per layer" if a else
              "float ReLU activations (weight-only)")
           + ", float biases, BN with affine, real-valued input to the first layer")
       for q, (w, a) in MULTIBIT.items()},
}

MLP_DATASETS = ("mnist5k", "digits", "mnist", "fashion-mnist")


def mlp_text(hidden: list[int]) -> str:
    return (f"MLP: flatten, {len(hidden)} x (dense {hidden[0]} -> BN -> activation), dense 10"
            if len(set(hidden)) == 1 else f"MLP: flatten, dense {hidden} with BN, dense 10")


def mlp_recipe(dataset: str, hidden: list[int], quant: str) -> Recipe:
    """Seeded recipe; binarized nets train with a 1/sqrt(fan-in) logit scale in the loss,
    multi-bit ones as the float reference."""
    epochs = {"digits": 30, "mnist5k": 15}.get(dataset, 5)
    if quant == "ref" or quant in MULTIBIT:
        return Recipe(epochs=epochs, lr=1e-3)
    return Recipe(epochs=epochs, lr=1e-2 if quant == "bnn-waq" else 3e-3,
                  logit_scale=round(1 / math.sqrt(hidden[-1]), 6), clip_latent=True)


def _register_mlp(dataset: str, arch: str, quant: str, *,
                  archs: dict[str, tuple[list[int], str]] = MLP_ARCHS,
                  adversarial: bool = False) -> None:
    """Register ``{dataset}-{arch}-{quant}`` (``-at``: PGD-trained, see :func:`at_recipe`)."""
    hidden, arch_text = archs[arch]
    c, h, w = dataset_info(dataset).input_shape
    recipe = mlp_recipe(dataset, hidden, quant)
    description = f"{arch_text}; {QUANT_TEXT[quant]}"
    if adversarial:
        recipe = at_recipe(recipe, MNIST_AT_EPS)
        description += _at_description(f"{MNIST_AT_EPS:g}")
    register_model(
        f"{dataset}-{arch}-{quant}" + ("-at" if adversarial else ""),
        dataset=dataset, arch=arch, quant=quant, recipe=recipe, description=description,
        architecture=mlp_text(hidden),
    )(partial(MLP, c * h * w, hidden, 10, quant))


def _register_mlps() -> None:
    for dataset in MLP_DATASETS:
        for arch in MLP_ARCHS:
            for quant in QUANTS:
                _register_mlp(dataset, arch, quant)
    for arch in VERIFY_ARCHS:
        _register_mlp("mnist5k", arch, "bnn-waq", archs=VERIFY_ARCHS)


_register_mlps()


# ---------------------------------------------------------------------------------------
# Convolutional networks for the MNIST family (zoo.convnets).

CONVNET_DATASETS = ("mnist5k", "fashion-mnist")


def convnet_recipe(dataset: str, quant: str) -> Recipe:
    """Adam with a cosine schedule; binarized nets use a 1/sqrt(fan-in) logit scale in the loss.

    mnist5k (4,000 training images) gets 8-10 epochs (320-400 steps); Fashion-MNIST (60,000)
    1-2 epochs (600-1,200 steps). Measured on the shared 2-core machine: a step costs about
    30 ms with both cores free and 0.1-0.25 s when other jobs load them, so the mnist5k
    convnets train in about 0.5-1.5 minutes (33 s, 57 s, 97 s for ref, bnn-wq, bnn-waq under
    a load of about 4).
    """
    big = dataset == "fashion-mnist"
    if quant == "ref" or quant in MULTIBIT:
        return Recipe(epochs=1 if big else 8, lr=1e-3)
    scale = round(1 / math.sqrt(CONVNET_HIDDEN), 6)
    return Recipe(epochs=2 if big else 10, lr=3e-3 if quant == "bnn-wq" else 5e-3,
                  logit_scale=scale, clip_latent=True)


#: ε of the PGD L∞ adversarial training of the MNIST-family models (T = 7 steps of ε/4).
#: The paper's 8/255 is a CIFAR value; 0.1 is a common moderate MNIST budget and keeps the
#: 7-step training affordable on CPU (mnist5k convnets: 3 epochs, 102 s and 136 s under a load
#: of about 4; Fashion-MNIST convnets: 1 epoch, 600 steps, about 1.5 minutes on idle cores).
MNIST_AT_EPS = 0.1


def at_recipe(base: Recipe, eps: float, *, epochs: int | None = None,
              max_steps: int = 0) -> Recipe:
    """The base recipe with PGD L∞ training (T = 7, step ε/4), optionally shorter."""
    return replace(base, adv_eps=eps, adv_steps=7, epochs=epochs or base.epochs,
                   max_steps=max_steps)


def _at_description(eps_text: str) -> str:
    return f"; adversarially trained: PGD L-inf, eps={eps_text}, T=7, step eps/4"


def _register_convnet(dataset: str, quant: str, *, at_epochs: int | None = None) -> None:
    """Register ``{dataset}-convnet-{quant}`` and, with ``at_epochs``, its PGD-trained
    ``-at`` twin (7-step PGD costs 8 forward/backward passes a batch: 3 epochs on mnist5k,
    one on Fashion-MNIST)."""
    c, h, w = dataset_info(dataset).input_shape
    factory = partial(convnet, quant, in_channels=c, image_size=h)
    base = convnet_recipe(dataset, quant)
    description = f"small VGG-style convnet for 28x28 grey images; {QUANT_TEXT[quant]}"
    register_model(
        f"{dataset}-convnet-{quant}", dataset=dataset, arch="convnet", quant=quant,
        recipe=base, description=description, architecture=CONVNET_TEXT,
    )(factory)
    if at_epochs is not None:
        register_model(
            f"{dataset}-convnet-{quant}-at", dataset=dataset, arch="convnet", quant=quant,
            recipe=at_recipe(base, MNIST_AT_EPS, epochs=at_epochs),
            description=description + _at_description(f"{MNIST_AT_EPS:g}"),
            architecture=CONVNET_TEXT,
        )(factory)


def _register_convnets() -> None:
    for dataset in CONVNET_DATASETS:
        for quant in QUANTS:
            _register_convnet(dataset, quant, at_epochs=None if quant == "bnn-waq" else
                              1 if dataset == "fashion-mnist" else 3)


def _register_mlp_at() -> None:
    for quant in ("ref", "bnn-wq"):
        _register_mlp("mnist5k", "mlp5x100", quant, adversarial=True)


# ---------------------------------------------------------------------------------------
# The paper's CIFAR-10 models (zoo.cifar). GPU recipes: nobody should train these on CPU.

CIFAR_AT_EPS = 8 / 255


def cifar_recipe(arch: str, quant: str) -> Recipe:
    """Realistic GPU recipes: batch 128, random crop + flip, cosine schedule, 200 epochs.

    ref: SGD (Nesterov momentum 0.9), lr 0.1, weight decay 5e-4, bf16 autocast.
    bnn-wq: Adam lr 1e-3, latent weights clipped to [-1, 1], loss on logits / sqrt(fan-in),
    bf16 autocast (weights are binarized in float32; ±1 is exact in bf16).
    bnn-waq: Adam lr 5e-3 (BinaryNet), clipped latent weights, loss on logits / sqrt(fan-in),
    float32 throughout (sign activations are never fed rounded pre-activations).
    """
    common = {"epochs": 200, "batch_size": 128, "augment": "crop-flip"}
    if quant == "ref":
        return Recipe(**common, optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4,
                      amp="bf16")
    fan_in = {("resnet18", "bnn-wq"): 512, ("resnet18", "bnn-waq"): 320,
              ("vgg16", "bnn-wq"): 512, ("vgg16", "bnn-waq"): 1024}[(arch, quant)]
    scale = round(1 / math.sqrt(fan_in), 6)
    if quant == "bnn-wq":
        return Recipe(**common, lr=1e-3, logit_scale=scale, clip_latent=True, amp="bf16")
    return Recipe(**common, lr=5e-3, logit_scale=scale, clip_latent=True)


def _register_cifar() -> None:
    for arch, factory in CIFAR_ARCHS.items():
        for quant in QUANTS:
            base = cifar_recipe(arch, quant)
            description = f"{QUANT_TEXT[quant]}; CIFAR-10"
            register_model(
                f"cifar10-{arch}-{quant}", dataset="cifar10", arch=arch, quant=quant,
                recipe=base, description=description, architecture=ARCH_TEXT[(arch, quant)],
            )(partial(factory, quant))
            if arch == "resnet18" and quant != "bnn-waq":
                # Madry-style PGD training (T = 7, step 2/255) for 100 epochs: robust accuracy
                # peaks early and decays afterwards ("robust overfitting", Rice et al. 2020).
                register_model(
                    f"cifar10-{arch}-{quant}-at", dataset="cifar10", arch=arch, quant=quant,
                    recipe=at_recipe(base, CIFAR_AT_EPS, epochs=100),
                    description=description + _at_description("8/255"),
                    architecture=ARCH_TEXT[(arch, quant)],
                )(partial(factory, quant))


# ---------------------------------------------------------------------------------------
# Multi-bit networks (zoo.quantized): the default dataset's MLPs and convnet at every bit width,
# and one adversarially trained W4A4 MLP.


def _register_multibit() -> None:
    for quant in MULTIBIT:
        for arch in MLP_ARCHS:
            _register_mlp("mnist5k", arch, quant)
        _register_convnet("mnist5k", quant)
    _register_mlp("mnist5k", "mlp5x100", "w4a4", adversarial=True)


_register_convnets()
_register_mlp_at()
_register_cifar()
_register_multibit()
