"""What decides points: the exact verifier's pattern search against the plain big-M MILP,
solved by HiGHS and by SCIP (pyscipopt), on the same points and the same time limit.

    python benchmarks/milp_solvers.py --model mnist5k-mlp5x100-bnn-waq --eps 0.01 --points 10

Points are the first test points that PGD++ (NJS and HNS) does not break, as in a
``milp-linf`` cell. SCIP needs ``pip install pyscipopt`` (a measurement only; qbench does not
depend on it); without it, its column says so. One thread for every solver.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

import zoo
from attacks import create_attack
from attacks.milp import BNNVerifier
from bench.calibrate import attack_context


def scip_solve(path: Path, time_limit: float) -> tuple[str, float, int]:
    """(status, seconds, nodes) of SCIP on a model file; status "n/a" without pyscipopt."""
    try:
        from pyscipopt import Model
    except ImportError:
        return "n/a", float("nan"), 0
    m = Model()
    m.hideOutput()
    m.readProblem(str(path))
    m.setParam("limits/time", time_limit)
    m.setParam("parallel/maxnthreads", 1)
    m.setParam("limits/solutions", 1)  # feasibility: the first solution is a counterexample
    t0 = time.perf_counter()
    m.optimize()
    seconds = time.perf_counter() - t0
    status = m.getStatus()
    verdict = {"infeasible": "robust", "sollimit": "broken", "optimal": "broken",
               "timelimit": "unknown"}.get(status, status)
    return verdict, seconds, int(m.getNNodes())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mnist5k-mlp5x100-bnn-waq")
    parser.add_argument("--eps", type=float, default=0.01)
    parser.add_argument("--points", type=int, default=10)
    parser.add_argument("--time-limit", type=float, default=30.0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    model, _ = zoo.get_model(args.model, progress=False)
    data = zoo.load_dataset(zoo.model_spec(args.model).dataset)
    context = attack_context(data, "cpu")  # as the engine sets attacks up
    x, y = data.test_subset(200)
    with torch.no_grad():
        standing = model(x).argmax(1) == y
    gen = torch.Generator().manual_seed(0)
    for name in ("pgd-linf-njs", "pgd-linf-hns"):
        idx = standing.nonzero().squeeze(1)
        attack = create_attack(name)
        attack.setup(model, context)
        adv = attack(model, x[idx], y[idx], eps=args.eps, generator=gen).x_adv
        with torch.no_grad():
            standing[idx[model(adv).argmax(1) != y[idx]]] = False
    points = standing.nonzero().squeeze(1)[: args.points].tolist()
    verifier = BNNVerifier(model, time_limit=args.time_limit)
    print(f"{args.model}, L∞ ε = {args.eps:g}, {args.time_limit:g} s per point and method\n")
    print("| point | k | search | HiGHS MILP | SCIP MILP |")
    print("|---|---|---|---|---|")
    totals = {"search": 0, "highs": 0, "scip": 0}
    with tempfile.TemporaryDirectory() as tmp:
        for i in points:
            s = verifier.verify(x[i], int(y[i]), args.eps, method="search")
            path = Path(tmp) / f"p{i}.mps"
            h = verifier.verify(x[i], int(y[i]), args.eps, method="milp", write_model=str(path))
            sc = scip_solve(path, args.time_limit) if path.exists() else ("bounds", 0.0, 0)
            for key, status in (("search", s.status), ("highs", h.status), ("scip", sc[0])):
                totals[key] += status in ("robust", "broken")
            print(f"| {i} | {s.unstable} | {s.status} {s.seconds:.1f} s | {h.status} "
                  f"{h.seconds:.1f} s, {h.nodes} nodes | {sc[0]} {sc[1]:.1f} s, {sc[2]} nodes |",
                  flush=True)
    print(f"\ndecided of {len(points)}: search {totals['search']}, HiGHS {totals['highs']}, "
          f"SCIP {totals['scip']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
