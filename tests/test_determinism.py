"""Determinism: the same seed gives identical cells (per-sample robust vectors and attack info)
for one attack of every family, run twice in one process and in a second process; the opt-in
deterministic mode changes nothing on the CPU and is restored after ``bench.evaluate``.

Brendel-Bethge (minimum-norm family, like DeepFool) is left out: its numba compilation costs
about 20 s in every new process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import bench
from bench.cli import main

#: gradient, temperature-scaled gradient (PGD++), minimum-norm, gradient-free
ATTACKS = ["pgd-linf", "pgd-linf-hns", "deepfool-linf", "square"]
MODEL = "digits-mlp5x100-bnn-wq"
EPS = 0.15  # every attack leaves a few of the 50 points robust and breaks most

_SCRIPT = """
import json, sys
sys.path.insert(0, sys.argv[2])
import bench, zoo
from test_determinism import ATTACKS, EPS, MODEL, _cells
model, _ = zoo.get_model(MODEL, progress=False)
df = bench.evaluate(model, dataset="digits", attacks=ATTACKS, eps=EPS, n=50,
                    device="cpu", seed=7, deterministic=sys.argv[1] == "1")
print(json.dumps(_cells(df)))
"""


def _cells(df) -> dict:
    """What must not change between runs: per-sample vectors, accuracy and info per cell."""
    return {f"{r.attack}@{r.eps:g}": {"robust": list(r.robust), "robust_acc": r.robust_acc,
                                      "info": json.dumps(r.info, sort_keys=True),
                                      "status": r.status}
            for r in df.itertuples()}


def _start_subprocess(deterministic: bool) -> subprocess.Popen:
    here = str(Path(__file__).resolve().parent)
    return subprocess.Popen([sys.executable, "-c", _SCRIPT, "1" if deterministic else "0", here],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def _evaluate(model) -> dict:
    return _cells(bench.evaluate(model, dataset="digits", attacks=ATTACKS, eps=EPS, n=50,
                                 device="cpu", seed=7))


@pytest.mark.slow
def test_same_seed_same_cells_twice_in_one_process_and_in_another(digits_models):
    """The second process runs in deterministic mode, which must change nothing on the CPU;
    it runs while this process repeats the evaluation."""
    model = digits_models["bnn-wq"]
    other = _start_subprocess(deterministic=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the other process takes the second core
    try:
        first = _evaluate(model)
        torch.manual_seed(999)  # a different global RNG state must not matter
        torch.rand(17)
        second = _evaluate(model)
        out, err = other.communicate(timeout=900)
    finally:
        torch.set_num_threads(threads)
        other.kill()
    assert other.returncode == 0, err[-3000:]
    assert sorted(first) == sorted(f"{a}@{EPS:g}" for a in ATTACKS)
    for name, cell in first.items():
        assert cell["status"] == "ok", name
        # each attack breaks some points and leaves some: a vector that could differ
        assert 0 < sum(cell["robust"]) < 50, (name, cell["robust_acc"])
    assert second == first
    assert json.loads(out.strip().splitlines()[-1]) == first
    assert not torch.are_deterministic_algorithms_enabled()


def test_deterministic_mode_is_restored_after_evaluate(digits_models):
    before = torch.are_deterministic_algorithms_enabled(), os.environ.get(
        "CUBLAS_WORKSPACE_CONFIG")
    seen = []

    class Probe(torch.nn.Module):  # records the mode the attacks run under
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            seen.append((torch.are_deterministic_algorithms_enabled(),
                         os.environ.get("CUBLAS_WORKSPACE_CONFIG")))
            return self.inner(x)

    bench.evaluate(Probe(digits_models["ref"]), dataset="digits", attacks="fgsm", eps=0.1,
                   n=10, device="cpu", deterministic=True)
    assert seen and set(seen) == {(True, before[1] or ":4096:8")}
    assert (torch.are_deterministic_algorithms_enabled(),
            os.environ.get("CUBLAS_WORKSPACE_CONFIG")) == before


def test_cli_deterministic_flag_switches_the_process(tmp_path, digits_models, capsys):
    saved = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    try:
        assert main(["run", "--models", "digits-mlp5x100-ref", "--attacks", "fgsm", "--eps",
                     "0.1", "--n", "10", "--results", str(tmp_path), "--no-progress",
                     "--deterministic"]) == 0
        assert torch.are_deterministic_algorithms_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False
        if saved is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    assert "1 cells run" in capsys.readouterr().out
