"""Which CPU kernels compute a model: the pin that makes results the same on every x86 CPU.

torch picks its own vector kernels by CPU (``ATEN_CPU_CAPABILITY`` lowers the choice), and its
convolutions run through oneDNN, which picks its kernels apart from torch
(``ONEDNN_MAX_CPU_ISA``). Measured with the shipped weights: every attack gives the same
per-sample results under torch's ``default``, ``avx2`` and ``avx512`` kernels, and so do the
convnets under oneDNN's SSE4.1 and AVX2 kernels; oneDNN's AVX-512 kernels round the binarized
convnets' activations differently and change some results (FGSM at ε=0.1 on the mnist5k BNN-WAQ
convnet breaks another point). So oneDNN is held at AVX2, which every x86 CPU of the last ten
years has: the published records were made that way, and a run records the pin in its
provenance. Export ``ONEDNN_MAX_CPU_ISA`` yourself to choose otherwise (the records then say so).
"""

from __future__ import annotations

import os

import torch

#: The environment variables pinned before the first convolution (a value already exported
#: wins), and what they hold the library to
PINS = {"ONEDNN_MAX_CPU_ISA": "AVX2"}


def pin() -> None:
    """Hold oneDNN to the pinned kernels unless the user exported another choice. It reads
    the variable at its first convolution, so this must run before any model does."""
    for name, value in PINS.items():
        os.environ.setdefault(name, value)


def in_force() -> str:
    """The kernels a record's numbers came from, e.g. ``AVX512 kernels, oneDNN at most AVX2``."""
    onednn = os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL")
    return f"{torch.backends.cpu.get_cpu_capability()} kernels, oneDNN at most {onednn}"
