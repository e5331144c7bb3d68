"""``python -m bench reproduce``: recompute a sample of the committed cells and compare.

A published number is checkable when anyone can recompute it: each sampled cell is run again
from the shipped weights (sha256-checked, and required to be the weights the record names),
with the record's seed, test points and attack configuration, at the record's torch thread
count. Every recorded field that is a result must come out the same: the cell's key, the
per-sample ``robust`` and ``clean_correct`` vectors, the accuracies, the counts of attacked
and rejected points, the forward/backward passes per sample and the attack's ``info`` (its
real numbers to a relative :data:`INFO_RTOL`: the β statistics of PGD++ are float32
reductions whose last digits follow the CPU's vector width, e.g. NJS's β1 0.50111817492 on
AVX2 and 0.50111817401 on AVX-512, HNS's largest β 8.5875931 and 8.5875835, while the
per-sample results they lead to are the same), and the passes per sample to a relative
:data:`PASSES_RTOL`: our gradient attacks stop each point at its first misclassified iterate,
and the same rounding differences can move that step for a few points (measured: 2 and 4 of
some 5,900 passes of two PGD-L2 cells moved between AVX2 and AVX-512 kernels, with the same
per-sample results). Left out are timings (wall seconds, and
``info`` entries whose name says ``seconds``) and provenance (time, host, hardware, library
versions: the key already holds the attack library's version).

The exact verifier decides each point within a per-point time limit, so a slower machine may
leave undecided (``unknown``) a point the record decided: such cells agree when every point
both runs decided got the same verdict, and the table says how many were undecided in one.

The sample is stratified: cells are grouped by (model, attack family) and drawn round-robin
over the groups, shuffled by ``--seed``, so 20 cells cover the models and families evenly.
"""

from __future__ import annotations

import math
import random
import re
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

import results
from attacks import attack_spec
from bench.engine import evaluate_cells, resolve_device
from bench.grid import plan_cells
from results.bestknown import current_runs
from results.errors import QBenchError
from results.schema import CellRecord
from results.store import latest_cells
from results.vocabulary import family_of, match_names
from zoo import get_model, load_dataset

#: The fields of a record that are results, hence must be reproduced exactly
COMPARED = ("key", "model_sha256", "attack_config", "inputs_sha256", "status", "n",
            "n_attacked", "clean_correct", "robust", "clean_acc", "robust_acc", "rejected",
            "forwards_per_sample", "backwards_per_sample", "info")
#: How far a real number in a cell's ``info`` may move (relative) between CPUs
INFO_RTOL = 1e-5  # about a hundred float32 rounding steps
#: How far the passes per sample may move (relative) between CPUs: early stopping follows each
#: point's first successful step (a change of the attack's work shows up as tens of per cent)
PASSES_RTOL = 0.01
PASSES = ("forwards_per_sample", "backwards_per_sample")
#: Families whose attacks stop at a wall-clock limit per point (see the module docstring)
TIME_LIMITED = ("exact",)


@dataclass
class Outcome:
    """One recomputed cell beside its record."""

    record: CellRecord
    robust_acc: float | None = None
    differs: list[str] = field(default_factory=list)
    undecided: int = 0  # points the time limit left undecided in one run only

    @property
    def agrees(self) -> bool:
        return not self.differs


def family(record: CellRecord) -> str:
    return family_of(record.attack_config)


def sample_cells(cells: list[CellRecord], k: int, seed: int) -> list[CellRecord]:
    """``k`` cells drawn round-robin over the (model, family) groups, shuffled by ``seed``."""
    if k < 1:
        raise QBenchError(f"--sample must be a positive number of cells, got {k}")
    rng = random.Random(seed)
    groups: dict[tuple[str, str], list[CellRecord]] = {}
    for cell in sorted(cells, key=lambda c: c.key):
        groups.setdefault((cell.model, family(cell)), []).append(cell)
    order = sorted(groups)
    rng.shuffle(order)
    for name in order:
        rng.shuffle(groups[name])
    out: list[CellRecord] = []
    while len(out) < k and any(groups.values()):
        for name in order:
            if groups[name] and len(out) < k:
                out.append(groups[name].pop())
    return out


def record_threads(record: CellRecord) -> int:
    """The torch thread count the record was computed at (its hardware string), else 1."""
    found = re.search(r"(\d+) torch threads", record.hardware)
    return int(found.group(1)) if found else 1


def _timing(name: str) -> bool:
    return "seconds" in name


def _same(a: object, b: object, rtol: float = 0.0) -> bool:
    """Equal, real numbers to ``rtol`` (relative), within lists and dicts too."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k], rtol) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(u, v, rtol) for u, v in zip(a, b, strict=True))
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (a, b))
    if numbers and float in (type(a), type(b)):
        a, b = float(a), float(b)
        return (math.isclose(a, b, rel_tol=rtol, abs_tol=0.0) if rtol else a == b) or (
            math.isnan(a) and math.isnan(b))
    return type(a) is type(b) and a == b


def compare(old: CellRecord, new: CellRecord) -> Outcome:
    """The result fields in which ``new`` differs from ``old`` (timings and provenance left
    out); the time-limited verifier is compared on the points both runs decided."""
    out = Outcome(old, new.robust_acc)
    a, b = asdict(old), asdict(new)
    a["info"] = {k: v for k, v in a["info"].items() if not _timing(k)}
    b["info"] = {k: v for k, v in b["info"].items() if not _timing(k)}
    verdicts = a["info"].get("verdicts"), b["info"].get("verdicts")
    if family(old) in TIME_LIMITED and all(isinstance(v, list) for v in verdicts) \
            and "unknown" in verdicts[0] + verdicts[1]:
        pairs = list(zip(*verdicts, strict=True))
        both = [i for i, (u, v) in enumerate(pairs) if "unknown" not in (u, v)]
        out.undecided = sum(1 for u, v in pairs if (u == "unknown") != (v == "unknown"))
        if any(pairs[i][0] != pairs[i][1] or a["robust"][i] != b["robust"][i] for i in both):
            out.differs.append("verdicts")
        # counts and the accuracy follow the undecided points; what both decided must agree
        skip = {"robust", "robust_acc", "info"}
    else:
        skip = set()
    rtol = {"info": INFO_RTOL, **dict.fromkeys(PASSES, PASSES_RTOL)}
    out.differs += [f for f in COMPARED if f not in skip
                    and not _same(a[f], b[f], rtol.get(f, 0.0))]
    return out


def recompute(record: CellRecord, device: str) -> CellRecord:
    """The cell run again from the shipped weights, as the runner ran it."""
    model, card = get_model(record.model, device=device, progress=False)
    if card["weights_sha256"] != record.model_sha256:
        raise QBenchError(
            f"the shipped weights of {record.model} ({card['weights_sha256'][:12]}…) are not "
            f"the ones its records were computed from ({record.model_sha256[:12]}…): the "
            f"records are stale; recompute them with `python -m bench run --suite "
            f"{record.suite}`")
    data = load_dataset(record.dataset)
    threads = torch.get_num_threads()
    torch.set_num_threads(record_threads(record))
    try:
        cells = plan_cells(data, [(record.attack, [record.eps], record.n)])
        return next(evaluate_cells(
            model, cells, model_name=record.model, model_sha256=record.model_sha256,
            suite=record.suite, dataset=data, n=record.n, seed=record.seed, device=device))
    finally:
        torch.set_num_threads(threads)


def published_cells(suite: str, root=None) -> list[CellRecord]:
    """The ``ok`` cells the boards show: of each measurement only the latest (an attack
    redefined since leaves its older cells in the append-only file), of each model only its
    current run (:func:`results.bestknown.current_runs`)."""
    frame = results.load(suite, root)
    if frame.empty:
        return []
    shown = set(current_runs(frame[frame["status"] == "ok"])["key"])
    return [c for c in latest_cells(suite, root).values() if c.key in shown]


def reproduce(suite: str, *, sample: int = 20, seed: int = 0, models: str | None = None,
              attacks: str | None = None, device: str = "cpu", root=None,
              on_outcome: Callable[[Outcome], None] | None = None) -> list[Outcome]:
    """Recompute ``sample`` committed ``ok`` cells of ``suite`` (optionally only of the
    ``models``/``attacks`` patterns) and compare each with its record."""
    cells = published_cells(suite, root)
    if not cells:
        raise QBenchError(f"no computed cells of suite {suite!r} to reproduce")
    if models is not None:
        names = set(match_names(models, sorted({c.model for c in cells}), "model"))
        cells = [c for c in cells if c.model in names]
    if attacks is not None:
        names = set(match_names(attacks, sorted({c.attack for c in cells}), "attack"))
        cells = [c for c in cells if c.attack in names]
    for name in {c.attack for c in cells}:
        attack_spec(name)  # an attack no longer registered cannot be recomputed: say so
    device = resolve_device(device)
    outcomes = []
    for record in sample_cells(cells, sample, seed):
        outcome = compare(record, recompute(record, device))
        outcomes.append(outcome)
        if on_outcome is not None:
            on_outcome(outcome)
    return outcomes


HEADER = f"{'model':34} {'attack':18} {'ε':>8} {'n':>5}  {'recorded':>8} {'now':>8}  result"


def row(outcome: Outcome) -> str:
    """One line of the table ``python -m bench reproduce`` prints."""
    r = outcome.record
    eps = f"{r.norm}={r.eps:.4g}"
    now = "-" if outcome.robust_acc is None else f"{outcome.robust_acc:.3f}"
    if outcome.differs:
        verdict = "DIFFERS: " + ", ".join(outcome.differs)
    elif outcome.undecided:
        verdict = f"same ({outcome.undecided} points undecided in one run: time limit)"
    else:
        verdict = "same"
    return f"{r.model:34} {r.attack:18} {eps:>8} {r.n:>5}  {r.robust_acc:>8.3f} {now:>8}  {verdict}"


def main(suite: str, *, sample: int, seed: int, models: str | None, attacks: str | None,
         device: str) -> int:
    """Print the table as cells finish; 0 when all agree, 1 otherwise."""
    print(HEADER, flush=True)
    outcomes = reproduce(suite, sample=sample, seed=seed, models=models, attacks=attacks,
                         device=device, on_outcome=lambda o: print(row(o), flush=True))
    same = sum(o.agrees for o in outcomes)
    print(f"{same}/{len(outcomes)} cells of suite {suite} reproduced exactly from the shipped "
          "weights" + ("" if same == len(outcomes) else "; the others differ"), flush=True)
    if same != len(outcomes):
        print("a difference means this machine computes other numbers than the records: "
              "install the versions that made them (`pip install -c constraints.txt`, "
              "as every nox session does; each record's `versions` field names them) and, if "
              "it persists, report it",
              file=sys.stderr)
    return 0 if same == len(outcomes) else 1
