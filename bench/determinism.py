"""Opt-in deterministic mode for CUDA (``--deterministic``, ``bench.evaluate(deterministic=True)``).

Every attack already runs under its own seeded RNG state, so on the CPU a seed gives identical
records. On a GPU some kernels (cuBLAS reductions, atomics in backward passes) may still give
last-bit differences from run to run; deterministic mode turns them off:
``torch.use_deterministic_algorithms(True)`` (an op without a deterministic kernel then raises
instead of varying), cuDNN autotuning off, and ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (which
cuBLAS needs for reproducible results; it must be set before the first cuBLAS call, so set it
when the process starts). It costs speed and changes nothing on the CPU.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

CUBLAS_WORKSPACE = ":4096:8"


def enable_deterministic() -> None:
    """Switch this process to deterministic algorithms for the rest of its life."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


@contextlib.contextmanager
def deterministic(enabled: bool = True) -> Iterator[None]:
    """Deterministic mode inside the block (when ``enabled``); the previous mode after it."""
    if not enabled:
        yield
        return
    saved = (torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
             os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    enable_deterministic()
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[2:4]
        if saved[4] is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)

