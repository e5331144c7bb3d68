"""Several ``python -m bench run`` processes on one grid: do they share the work?

Runs a grid once alone and then with ``--procs`` processes at once, each into a fresh records
folder, and prints the cells each computed, the duplicates, the unreadable lines and the total
CPU time of the processes against the single run's (the compute ratio). One thread per
process (``OMP_NUM_THREADS=1``), so spinning threads do not inflate CPU time.

    python benchmarks/parallel_runs.py --procs 4 -- --models \\
        mnist5k-mlp5x100-ref,mnist5k-mlp5x100-bnn-waq --attacks 'pgd-linf*,apgd-ce' \\
        --eps linf=0.1,0.3 --n 1000
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(procs: int, grid: list[str], folder: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "bench", "run", *grid, "--no-progress", "--results",
           str(folder)]
    cpu0, t0 = children_cpu(), time.perf_counter()
    running = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(procs)]
    outs = [p.communicate() for p in running]
    wall, cpu = time.perf_counter() - t0, children_cpu() - cpu0
    if any(p.returncode for p in running):
        raise SystemExit("a run failed:\n" + "\n".join(e[-800:] for _, e in outs))
    ran = [int(re.search(r"(\d+) cells run", o).group(1)) for o, _ in outs]
    bad, keys = 0, []
    for path in folder.glob("*.cells.jsonl"):
        for line in path.read_text().splitlines():
            try:
                keys.append(json.loads(line)["key"])
            except (json.JSONDecodeError, KeyError):
                bad += 1
    return {"procs": procs, "cells_run": ran, "lines": len(keys), "cells": len(set(keys)),
            "duplicates": len(keys) - len(set(keys)), "unreadable": bad,
            "cpu_s": round(cpu, 1), "wall_s": round(wall, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--procs", type=int, default=4)
    parser.add_argument("grid", nargs="*", help="arguments of `python -m bench run` after --")
    args = parser.parse_args()
    grid = args.grid or ["--models", "mnist5k-mlp5x100-ref,mnist5k-mlp5x100-bnn-waq",
                         "--attacks", "pgd-linf*,apgd-ce", "--eps", "linf=0.1,0.3",
                         "--n", "1000"]
    if "--models" in grid:  # train (or check) the models first: training is not the point
        subprocess.run([sys.executable, "-m", "bench", "train", grid[grid.index("--models") + 1]],
                       cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    with tempfile.TemporaryDirectory() as tmp:
        one = run(1, grid, Path(tmp) / "one")
        many = run(args.procs, grid, Path(tmp) / "many")
    print(json.dumps({"one": one, "parallel": many,
                      "compute_ratio": round(many["cpu_s"] / one["cpu_s"], 3)}, indent=1))


if __name__ == "__main__":
    main()
