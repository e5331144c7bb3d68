"""Shared fixtures. Tests never write into results/records: they use tmp folders.

Trained weights are cached under ``.cache/qbench-tests`` (verified by sha256 like any cache),
so a second test run does not retrain; set QBENCH_CACHE to override.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("QBENCH_CACHE", str(ROOT / ".cache" / "qbench-tests"))
#: pytest-xdist workers share the cores: each gets its share of torch threads (two threads
#: per process on a busy machine mostly wait for each other)
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1) // WORKERS))


@pytest.fixture
def one_torch_thread():
    """Torch at one thread for the test (the float reductions of a single-thread run)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def digits():
    from zoo import load_dataset

    return load_dataset("digits")


@pytest.fixture(scope="session")
def digits_models():
    """The three digits MLPs (trained once, a few seconds each)."""
    from zoo import get_model

    return {q: get_model(f"digits-mlp5x100-{q}", progress=False)[0]
            for q in ("ref", "bnn-wq", "bnn-waq")}


@pytest.fixture(scope="session")
def waq_batch(digits, digits_models):
    """The digits BNN-WAQ MLP, its first 40 test points and which it classifies correctly."""
    model = digits_models["bnn-waq"]
    x, y = digits.test_subset(40)
    with torch.no_grad():
        clean = model(x).argmax(1) == y
    return model, x, y, clean


@pytest.fixture
def plugin_attack():
    """``plugin_attack(name, factory, description=…, traits=…, **defaults)`` registers a
    test-only attack (``replace=True``: stands in for a registered one) until the test ends."""
    import contextlib

    from attacks import registered

    with contextlib.ExitStack() as stack:
        yield lambda *args, **kw: stack.enter_context(registered(*args, **kw))
