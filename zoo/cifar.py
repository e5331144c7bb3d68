"""The paper's CIFAR-10 architectures (ResNet-18 and VGG-16, as in Gupta & Ajanthan,
AAAI 2022) in the three quantizations.

* ``resnet18`` for ``ref`` and ``bnn-wq``: the standard CIFAR ResNet-18: a 3×3 stem of 64
  channels (no stride, no max-pool), four stages of two basic blocks (64, 128, 256, 512
  channels, strides 1, 2, 2, 2), global average pool, one dense layer. 11.2M parameters.
* ``resnet18`` for ``bnn-waq``: what the reference calls BNN-WAQ "ResNet-18" is a 3-stage
  CIFAR ResNet in the BinaryNet style: stem of 80 channels, three stages of two basic blocks
  (80, 160, 320 channels, strides 1, 2, 2), global average pool, BN, one dense layer. Every
  activation after a BN is a sign (the residual sum is taken before the sign).
* ``vgg16`` for ``ref`` and ``bnn-wq``: VGG-16 with BN for 32×32 inputs: 13 3×3 convolutions
  (64, 64, M, 128, 128, M, 256×3, M, 512×3, M, 512×3, M) and three dense layers
  (512, 512, 10). 15.3M parameters.
* ``vgg16`` for ``bnn-waq``: the reference's BinaryNet "VGG-16": six convolutions
  (128, 128, M, 256, 256, M, 512, 512, M) and three dense layers (1024, 1024, 10).

The quantization rules are those of :mod:`zoo.convnets`: BNN-WQ has sign weights and
sign biases everywhere (stem, 1×1 shortcut projections and output layer included), BN without
affine parameters and float ReLU; BNN-WAQ has sign weights, float biases, BN with affine
parameters and sign activations; the first layer sees the real-valued image. The float ``ref``
convolutions have no bias (BN follows each of them), as is standard for these networks.
"""

from __future__ import annotations

from torch import nn

from zoo.convnets import VGGNet
from zoo.models import activation, check_quant, conv, conv3x3, dense, norm_2d

RESNET18_STAGES = ((64, 1), (128, 2), (256, 2), (512, 2))
RESNET18_WAQ_STAGES = ((80, 1), (160, 2), (320, 2))
VGG16_CFG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                                    512, 512, 512, "M", 512, 512, 512, "M")
VGG16_WAQ_CFG: tuple[int | str, ...] = (128, 128, "M", 256, 256, "M", 512, 512, "M")


class BasicBlock(nn.Module):
    """conv3×3 → BN → act → conv3×3 → BN, plus the shortcut, then act.

    The shortcut is the identity, or a (quantized) 1×1 convolution with BN where the shape
    changes. ``act`` is ReLU for ref/bnn-wq and the sign (STE) for bnn-waq.
    """

    def __init__(self, in_channels: int, channels: int, stride: int, quant: str) -> None:
        super().__init__()
        bias = False  # only used by ref; binarized convolutions always carry their bias
        self.conv1 = conv3x3(in_channels, channels, quant, stride=stride, bias=bias)
        self.bn1 = norm_2d(channels, quant)
        self.act1 = activation(quant)
        self.conv2 = conv3x3(channels, channels, quant, bias=bias)
        self.bn2 = norm_2d(channels, quant)
        self.act2 = activation(quant)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(
                conv(in_channels, channels, 1, quant, stride=stride, bias=bias),
                norm_2d(channels, quant),
            )

    def forward(self, x):  # noqa: D401 - nn.Module API
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """Stem conv3×3 → BN → act, stages of basic blocks, global average pool, [BN], dense."""

    def __init__(self, stages: tuple[tuple[int, int], ...], blocks_per_stage: int, *,
                 quant: str, num_classes: int = 10, in_channels: int = 3,
                 bn_before_fc: bool = False) -> None:
        super().__init__()
        check_quant(quant)
        self.quant = quant
        width = stages[0][0]
        self.stem = nn.Sequential(conv3x3(in_channels, width, quant, bias=False),
                                  norm_2d(width, quant), activation(quant))
        blocks: list[nn.Module] = []
        for channels, stride in stages:
            for b in range(blocks_per_stage):
                blocks.append(BasicBlock(width, channels, stride if b == 0 else 1, quant))
                width = channels
        self.layers = nn.Sequential(*blocks)
        head: list[nn.Module] = [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        if bn_before_fc:
            head.append(nn.BatchNorm1d(width))
        head.append(dense(width, num_classes, quant))
        self.head = nn.Sequential(*head)
        self.last_fan_in = width

    def forward(self, x):  # noqa: D401 - nn.Module API
        return self.head(self.layers(self.stem(x)))


def resnet18(quant: str, num_classes: int = 10) -> CifarResNet:
    if quant == "bnn-waq":
        return CifarResNet(RESNET18_WAQ_STAGES, 2, quant=quant, num_classes=num_classes,
                           bn_before_fc=True)
    return CifarResNet(RESNET18_STAGES, 2, quant=quant, num_classes=num_classes)


def vgg16(quant: str, num_classes: int = 10) -> VGGNet:
    if quant == "bnn-waq":
        return VGGNet(VGG16_WAQ_CFG, (1024, 1024), in_channels=3, image_size=32,
                      num_classes=num_classes, quant=quant)
    return VGGNet(VGG16_CFG, (512, 512), in_channels=3, image_size=32,
                  num_classes=num_classes, quant=quant, conv_bias=False)


ARCH_TEXT = {
    ("resnet18", "ref"): "standard CIFAR ResNet-18 (stem 64, stages 64-128-256-512 of two "
    "basic blocks, global average pool, dense 10)",
    ("resnet18", "bnn-wq"): "standard CIFAR ResNet-18 (stem 64, stages 64-128-256-512 of two "
    "basic blocks, global average pool, dense 10)",
    ("resnet18", "bnn-waq"): "the reference's BNN-WAQ 'ResNet-18': 3-stage BinaryNet CIFAR "
    "ResNet (stem 80, stages 80-160-320 of two basic blocks, global average pool, BN, dense 10)",
    ("vgg16", "ref"): "VGG-16 with BN for 32x32 inputs (13 conv 64-64-M-128-128-M-256x3-M-"
    "512x3-M-512x3-M, dense 512-512-10)",
    ("vgg16", "bnn-wq"): "VGG-16 with BN for 32x32 inputs (13 conv 64-64-M-128-128-M-256x3-M-"
    "512x3-M-512x3-M, dense 512-512-10)",
    ("vgg16", "bnn-waq"): "the reference's BinaryNet 'VGG-16': 6 conv 128-128-M-256-256-M-"
    "512-512-M, dense 1024-1024-10",
}

CIFAR_ARCHS = {"resnet18": resnet18, "vgg16": vgg16}
