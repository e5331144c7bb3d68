"""VGG-style convolutional networks in the three quantizations that Gupta &
Ajanthan (AAAI 2022) evaluate.

:class:`VGGNet` is one plain stack of 3×3 convolutions and 2×2 max-pools followed by fully
connected layers. It builds the small MNIST-family ``convnet`` (:func:`convnet`) and the CIFAR
VGGs of :mod:`zoo.cifar`.

Per quantization (as in the paper's experiments):

* ``ref``: float conv (with bias) → BN (affine) → ReLU, max-pool after the block.
* ``bnn-wq``: sign-weight conv with a sign bias → BN *without* affine parameters → float ReLU,
  max-pool after the block. Every weight and bias, output layer included, is ±1 at evaluation.
* ``bnn-waq`` (BinaryNet): sign-weight conv with a float bias → [max-pool] → BN (affine) →
  sign activation with the straight-through estimator. The pool comes *before* BN and sign, as
  in BinaryNet (a max over ±1 values would be +1 almost everywhere). The first layer sees the
  real-valued input; every hidden activation is exactly ±1.

No layer has a scaling factor, and the output layer has no BN: the logits are the raw output
of a (binarized) dense layer, which is what makes the softmax saturate (the paper's
gradient-masking argument).
"""

from __future__ import annotations

from torch import nn

from zoo.layers import ChannelsLastMaxPool2d
from zoo.models import activation, check_quant, conv3x3, dense_stack, norm_2d

#: The MNIST-family convnet: two blocks of two 3×3 convolutions, then one hidden dense layer.
CONVNET_CFG: tuple[int | str, ...] = (16, 16, "M", 32, 32, "M")
CONVNET_HIDDEN = 128


class VGGNet(nn.Module):
    """Convolutions given by ``cfg`` (ints: 3×3 conv widths, ``"M"``: 2×2 max-pool), then
    ``len(fc_hidden)`` dense → BN → activation blocks, then a dense output layer.

    ``final_pool`` averages the last feature map to 1×1 first (``"avg"``); ``None`` flattens it.
    """

    def __init__(
        self, cfg: tuple[int | str, ...], fc_hidden: tuple[int, ...], *, in_channels: int,
        image_size: int, num_classes: int, quant: str, conv_bias: bool = True,
    ) -> None:
        super().__init__()
        check_quant(quant)
        self.quant = quant
        self.cfg = tuple(cfg)
        layers: list[nn.Module] = []
        channels, size = in_channels, image_size
        items = list(cfg)
        for i, item in enumerate(items):
            if item == "M":
                if quant != "bnn-waq":  # bnn-waq pools inside the conv block, before BN
                    layers.append(ChannelsLastMaxPool2d(2))
                size //= 2
                continue
            width = int(item)
            layers.append(conv3x3(channels, width, quant, bias=conv_bias))
            if quant == "bnn-waq" and i + 1 < len(items) and items[i + 1] == "M":
                layers.append(ChannelsLastMaxPool2d(2))
            layers.append(norm_2d(width, quant))
            layers.append(activation(quant))
            channels = width
        self.features = nn.Sequential(*layers)
        flat = channels * size * size
        self.classifier = nn.Sequential(*dense_stack(flat, fc_hidden, num_classes, quant))
        self.last_fan_in = fc_hidden[-1] if fc_hidden else flat

    def forward(self, x):  # noqa: D401 - nn.Module API
        return self.classifier(self.features(x))


def convnet(quant: str, *, in_channels: int = 1, image_size: int = 28,
            num_classes: int = 10) -> VGGNet:
    """The small MNIST-family convnet: 16-16-pool-32-32-pool, dense 128, dense 10.

    About 0.22M parameters (0.2M of them in the first dense layer). Deliberately narrow so that
    training and attacking stay cheap on CPU (a training step on a batch of 100 costs about
    30 ms on two free cores); the 32-32-64-64 variant costs about 3× more per step.
    """
    return VGGNet(CONVNET_CFG, (CONVNET_HIDDEN,), in_channels=in_channels,
                  image_size=image_size, num_classes=num_classes, quant=quant)


CONVNET_TEXT = ("VGG-style convnet: conv3x3 16, conv3x3 16, maxpool, conv3x3 32, conv3x3 32, "
                "maxpool, dense 128, dense 10 (BN after every hidden layer)")
