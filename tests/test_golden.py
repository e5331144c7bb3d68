"""Known answers: a fixed set of small cells, one or more per attack family, recomputed on every
test run and compared sample by sample with the committed ``tests/golden/cells.json``.

An attack whose behaviour changes must bump its ``version`` (or the library it wraps changes
its version): its configuration then differs from the golden one, and the test asks for the
golden file to be regenerated. A change of behaviour *without* such a bump keeps the
configuration and changes the per-sample results: that fails with "behaviour changed without a
version bump". Regenerate after a deliberate change with::

    python tests/test_golden.py --update
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

GOLDEN = Path(__file__).resolve().parent / "golden" / "cells.json"
MODEL = "digits-mlp5x100-bnn-waq"
N = 30
SEED = 0
#: (attack, ε): every family on one BNN. Left out for time: AutoAttack (it chains
#: pyautoattack's APGD and Square, both here) and Brendel-Bethge (its numba solver takes
#: 20-60 s to compile; DeepFool stands for the minimum-norm family).
CELLS = [
    ("fgsm", 0.1), ("pgd-linf", 0.1), ("pgd-l2", 1.0), ("pgd-l2-floor", 1.0),
    ("pgd-linf-njs", 0.1), ("pgd-linf-njs-raw", 0.1), ("pgd-linf-hns", 0.1),
    ("pgd-linf-beta0.1", 0.1), ("pgd-linf-dlr", 0.1), ("apgd-ce", 0.1), ("deepfool-linf", 0.1),
    ("deepfool-l2", 1.0),
    ("square", 0.1), ("iprop", 0.1), ("flip-search-linf", 0.1),
]


#: A binarized convnet, for the cross-instruction-set check only: its convolutions run
#: through oneDNN, whose kernels are chosen apart from torch's own (``ONEDNN_MAX_CPU_ISA``).
CONV_MODEL, CONV_DATASET, CONV_N = "mnist5k-convnet-bnn-waq", "mnist5k", 20
CONV_CELLS = [("fgsm", 0.1), ("pgd-linf-njs", 0.1), ("square", 0.1)]
#: A multi-bit (W4A4) MLP, for the same check: its activation codes are rounded from float32
#: pre-activations, which other kernels could move across a rounding threshold
MULTIBIT_MODEL, MULTIBIT_N = "mnist5k-mlp5x100-w4a4", 40
MULTIBIT_CELLS = [("pgd-linf", 0.1), ("pgd-linf-hns", 0.1), ("square", 0.1)]


def compute(model_name: str = MODEL, dataset: str = "digits", cells: list | None = None,
            n: int = N) -> dict:
    """Known-answer cells of the shipped ``model_name``, computed through the runner (attack,
    verification, counting) at one torch thread."""
    import zoo
    from attacks import create_attack
    from bench import engine
    from bench.calibrate import attack_context
    from bench.grid import cell_seed
    from bench.verify import predict

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same float reductions on every machine size
    try:
        model, card = zoo.get_model(model_name, progress=False)
        data = zoo.load_dataset(dataset)
        x, y = data.test_subset(n)
        clean = predict(model, x) == y
        out_cells = []
        for attack, eps in CELLS if cells is None else cells:
            out = engine.attack_cell(model, x, y, clean, attack_name=attack, eps=eps,
                                     seed=cell_seed(SEED, model_name, attack, eps),
                                     device="cpu", context=attack_context(data, "cpu"))
            out_cells.append({"attack": attack, "eps": eps,
                              "config": create_attack(attack).config(),
                              "status": out["status"], "error": out.get("error"),
                              "robust": out["robust"]})
    finally:
        torch.set_num_threads(threads)
    return {"model": model_name, "weights_sha256": card["weights_sha256"], "n": n,
            "seed": SEED, "clean_correct": [int(v) for v in clean.tolist()],
            "cells": out_cells}


def test_known_answers_match_the_golden_file():
    golden = json.loads(GOLDEN.read_text(encoding="utf-8"))
    now = compute()
    assert now["weights_sha256"] == golden["weights_sha256"], (
        f"the shipped {MODEL} is not the one the golden file was made from: regenerate it")
    assert now["clean_correct"] == golden["clean_correct"]
    old = {(c["attack"], c["eps"]): c for c in golden["cells"]}
    problems = []
    for cell in now["cells"]:
        ref = old.get((cell["attack"], cell["eps"]))
        name = f"{cell['attack']} at ε={cell['eps']}"
        assert cell["status"] == "ok", f"{name}: {cell['error']}"
        if ref is None:
            problems.append(f"{name}: not in the golden file (regenerate it)")
        elif cell["config"] != ref["config"]:
            problems.append(f"{name}: configuration changed (version bump or library "
                            "upgrade); check the change, then regenerate the golden file")
        elif cell["robust"] != ref["robust"]:
            diff = sum(a != b for a, b in zip(cell["robust"], ref["robust"], strict=True))
            problems.append(f"{name}: behaviour changed without a version bump ({diff} of "
                            f"{N} per-sample results differ); bump the attack's version")
    assert not problems, "\n".join(problems)


#: torch's kernel levels (``ATEN_CPU_CAPABILITY``), each with the oneDNN level a CPU of that
#: kind would use under the zoo's pin (:mod:`zoo.kernels`): a CPU without AVX2 runs SSE4.1
KERNELS = {"default": "SSE41", "avx2": "AVX2", "avx512": "AVX2"}
_LEVELS = {"DEFAULT": 0, "AVX2": 1, "AVX512": 2, "ZVECTOR": 0, "VSX": 0}


def supported_kernels() -> list[str]:
    """The ``ATEN_CPU_CAPABILITY`` values this CPU can run, lowest first: asked of a fresh
    process without that variable, since an exported ``ATEN_CPU_CAPABILITY=default`` (how
    another CPU is imitated) makes this process report only the level it was held to."""
    env = {k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"}
    probe = "import torch; print(torch.backends.cpu.get_cpu_capability())"
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                          text=True, timeout=300, check=True)
    top = _LEVELS.get(done.stdout.strip().splitlines()[-1], 0)
    return [k for k, level in zip(KERNELS, range(3), strict=True) if level <= top]


_CHILD = """
import json, sys
sys.path.insert(0, {tests!r})
import conftest  # noqa: F401 - the tests' weight cache
from test_golden import (CONV_CELLS, CONV_DATASET, CONV_MODEL, CONV_N, MULTIBIT_CELLS,
                         MULTIBIT_MODEL, MULTIBIT_N, compute)
from zoo import kernels
print(json.dumps({{"kernels": kernels.in_force(),
                  "mlp": compute(),
                  "conv": compute(CONV_MODEL, CONV_DATASET, CONV_CELLS, CONV_N),
                  "multibit": compute(MULTIBIT_MODEL, CONV_DATASET, MULTIBIT_CELLS,
                                      MULTIBIT_N)}}))
"""


@pytest.mark.slow
def test_known_answers_are_the_same_under_every_cpu_kernel_level():
    """Another CPU type runs other vector kernels: the shipped weights must give the same
    per-sample results under each level this CPU supports (torch's and oneDNN's)."""
    tests = str(Path(__file__).resolve().parent)
    runs = {}
    for level in supported_kernels():
        env = {**os.environ, "ATEN_CPU_CAPABILITY": level}
        if level == "default":  # the pin itself is what the other levels run under
            env["ONEDNN_MAX_CPU_ISA"] = KERNELS[level]
        else:
            env.pop("ONEDNN_MAX_CPU_ISA", None)
        done = subprocess.run([sys.executable, "-c", _CHILD.format(tests=tests)], env=env,
                              capture_output=True, text=True, timeout=900, check=False)
        assert done.returncode == 0, done.stderr[-2000:]
        runs[level] = json.loads(done.stdout.strip().splitlines()[-1])
        # the levels really were in force
        assert runs[level]["kernels"] == f"{level.upper()} kernels, oneDNN at most {KERNELS[level]}"
    assert "default" in runs and len(runs) >= 2, runs.keys()
    first, *others = runs
    for level in others:
        for part in ("mlp", "conv", "multibit"):
            a, b = runs[first][part], runs[level][part]
            assert a["clean_correct"] == b["clean_correct"], (part, level)
            diff = [c["attack"] for c, d in zip(a["cells"], b["cells"], strict=True)
                    if c["robust"] != d["robust"] or c["status"] != d["status"]]
            assert not diff, f"{part} cells differ between {first} and {level}: {diff}"
    golden = json.loads(GOLDEN.read_text(encoding="utf-8"))
    assert [c["robust"] for c in runs[first]["mlp"]["cells"]] == [
        c["robust"] for c in golden["cells"]]


if __name__ == "__main__":
    if sys.argv[1:] != ["--update"]:
        raise SystemExit("usage: python tests/test_golden.py --update")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import conftest  # noqa: F401 - the tests' weight cache (QBENCH_CACHE)

    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(compute(), indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {GOLDEN}")
