"""The cifar10 suite's GPU path, local against Ray: cells per minute on one GPU.

Writes a synthetic CIFAR-10 of the real shape (random images in torchvision's on-disk layout,
so no download) and runs the ``cifar10`` suite on it twice into fresh records folders, with
models trained for ``--max-train-steps`` only: once ``--executor local --device cuda`` and once
``--executor ray --gpus-per-task G`` (G < 1: several tasks share the GPU). Prints the wall time
and cells per minute of each and checks that both recorded the same cells with the same
per-sample results. The models are trained (capped) before either timed run. The numbers
measure the harness, not the models (random data).

    python benchmarks/gpu_ray_cifar10.py                     # about 5 minutes on one GPU
    python benchmarks/gpu_ray_cifar10.py --smoke             # a CPU check of the script
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def write_synthetic_cifar10(root: Path, train: int, test: int) -> None:
    """Random uint8 images in cifar-10-batches-py, as torchvision stores CIFAR-10."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    sizes = [*([train // 5] * 5), test]
    names = [*(f"data_batch_{k}" for k in range(1, 6)), "test_batch"]
    for name, size in zip(names, sizes, strict=True):
        batch = {"batch_label": name, "data": rng.integers(0, 256, (size, 3072), np.uint8),
                 "labels": [int(v) for v in rng.integers(0, 10, size)],
                 "filenames": [f"{i}.png" for i in range(size)]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)


def run(args: argparse.Namespace, data: Path, out: Path, executor: list[str]) -> dict:
    cmd = [sys.executable, "-m", "bench", "run", "--suite", "cifar10", "--data-root", str(data),
           "--results", str(out), "--max-train-steps", str(args.max_train_steps),
           "--n", str(args.n), "--no-progress", *executor]
    if args.models:
        cmd += ["--models", args.models]
    if args.attacks:
        cmd += ["--attacks", args.attacks]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode:
        raise SystemExit(f"{' '.join(executor)} failed:\n{done.stderr[-2000:]}")
    lines = (out / "cifar10.cells.jsonl").read_text().splitlines()
    cells = {r["key"]: r["robust"] for r in map(json.loads, lines)}
    return {"wall_s": round(wall, 1), "cells": len(cells),
            "cells_per_min": round(60 * len(cells) / wall, 1), "_vectors": cells}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=500, help="test points per cell (default 500)")
    p.add_argument("--models", default="cifar10-resnet18-*,cifar10-vgg16-bnn-waq",
                   help="model pattern (default: the ResNet-18s and the BNN-WAQ VGG-16)")
    p.add_argument("--attacks", default="fgsm*,pgd-*,apgd-ce,deepfool-linf",
                   help="attack pattern (default: the gradient attacks and DeepFool)")
    p.add_argument("--max-train-steps", type=int, default=20)
    p.add_argument("--gpus-per-task", type=float, default=0.25)
    p.add_argument("--smoke", action="store_true",
                   help="tiny sizes on the CPU: checks the script, measures nothing")
    args = p.parse_args()
    local = ["--executor", "local", "--device", "cuda"]
    remote = ["--executor", "ray", "--gpus-per-task", str(args.gpus_per_task),
              "--threads-per-task", "2"]
    sizes = (50000, 10000)
    if args.smoke:
        args.n, args.models, args.attacks, args.max_train_steps = 8, "cifar10-vgg16-bnn-waq", \
            "fgsm,pgd-linf", 1
        local, remote, sizes = ["--device", "cpu"], ["--executor", "ray"], (50, 10)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("QBENCH_CACHE", str(Path(tmp) / "cache"))
        write_synthetic_cifar10(Path(tmp) / "data", *sizes)
        # train the models first (capped steps), so that neither timed run includes training
        warm = argparse.Namespace(**{**vars(args), "attacks": "fgsm", "n": 8})
        run(warm, Path(tmp) / "data", Path(tmp) / "warm", local)
        a = run(args, Path(tmp) / "data", Path(tmp) / "local", local)
        b = run(args, Path(tmp) / "data", Path(tmp) / "ray", remote)
    same = a.pop("_vectors") == b.pop("_vectors")
    print(json.dumps({"local": a, "ray": b, "same_cells_and_results": same,
                      "ray_over_local_throughput": round(b["cells_per_min"] /
                                                         a["cells_per_min"], 2)}, indent=1))


if __name__ == "__main__":
    main()
