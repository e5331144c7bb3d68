"""Where a suite's wall time went, from its records alone (nothing is run).

    python benchmarks/suite_time.py [--suite mnist5k] [--commit 66ade28] [--records DIR]

Every cell record holds the attack's ``seconds`` and its ``created`` time; every model record
holds the model card (with ``train_seconds``) and its own ``created`` time, written after the
model's last cell and diagnostics. For the records of one run (one ``qbench_commit``), this
prints per model: wall time (from the previous model record to this one), training, attack
time, and the rest (calibration, clean pass, verification, starting points, diagnostics,
record keeping); and per attack family the attack time. A minimum-norm search shared across ε
(``info.search_shared_across_eps``) is reported in each of its cells: it is counted once here.
Last, the attack time spent in the libraries' attacks (Foolbox's, AutoAttack's: see
:func:`wraps_a_library`) and the least wall time that alone takes on the run's cores.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import re
from pathlib import Path

from attacks.registry import attack_spec
from results.errors import UnknownNameError

RECORDS = Path(__file__).resolve().parents[1] / "results" / "records"

FAMILIES = (("fgsm", "FGSM family (ours)"), ("pgd-", "PGD family (ours)"),
            ("deepfool", "DeepFool (Foolbox)"), ("bba", "Brendel-Bethge (Foolbox)"),
            ("apgd", "APGD (AutoAttack)"), ("square", "Square (AutoAttack)"),
            ("autoattack", "AutoAttack ensemble"), ("iprop", "IPROP (ours)"),
            ("flip-search", "flip search (ours)"), ("milp", "exact verifier (ours)"))
#: the distributions whose *attacks* an adapter runs (flip search and the verifier name HiGHS,
#: a solver they call: they are ours)
ATTACK_LIBRARIES = ("foolbox", "pyautoattack")


def family(attack: str) -> str:
    return next((label for prefix, label in FAMILIES if attack.startswith(prefix)), attack)


def wraps_a_library(cell: dict) -> bool:
    """Whether a cell's attack is an adapter of a library's attack (:data:`ATTACK_LIBRARIES`):
    its recorded configuration names that library's version, or (records older than that
    field) the registry says so."""
    names = cell["attack_config"].get("library_versions")
    if names is None:
        try:
            names = getattr(attack_spec(cell["attack"]).factory, "libraries", ())
        except UnknownNameError:  # an attack no longer registered, recorded without the field
            return False
    return any(lib in ATTACK_LIBRARIES for lib in names)


def _time(stamp: str) -> dt.datetime:
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def breakdown(suite: str, commit: str | None = None, records: Path = RECORDS) -> dict:
    """Seconds per model and per attack family of one run of ``suite`` (default: the commit
    that wrote the most model records) in the folder ``records``.

    Per-model wall times assume one process (models one after another); for a run in several
    processes (``--jobs``) only the training and attack seconds are meaningful."""
    cells = _read(records / f"{suite}.cells.jsonl")
    models = _read(records / f"{suite}.models.jsonl")
    if commit is None:
        commit = collections.Counter(m["versions"]["qbench_commit"]
                                     for m in models).most_common(1)[0][0]
    cells = [c for c in cells if c["versions"]["qbench_commit"] == commit]
    models = sorted((m for m in models if m["versions"]["qbench_commit"] == commit),
                    key=lambda m: m["created"])
    attack_s: dict[str, float] = collections.defaultdict(float)
    family_s: dict[str, float] = collections.defaultdict(float)
    library_s = 0.0
    shared_seen = set()
    for c in cells:
        s = c["seconds"]
        if c["info"].get("search_shared_across_eps"):
            key = (c["model"], c["attack"])
            if key in shared_seen:
                s = 0.0
            shared_seen.add(key)
        attack_s[c["model"]] += s
        family_s[family(c["attack"])] += s
        if wraps_a_library(c):
            library_s += s
    rows = []
    first_cell = min((_time(c["created"]) for c in cells), default=None)
    prev = None
    for m in models:
        card = m["card"]
        train = float(card.get("train_seconds", 0.0))
        end = _time(m["created"])
        # the first model: from the end of its training (its first cell) back by its training
        start = prev if prev is not None else (first_cell - dt.timedelta(seconds=train)
                                               if first_cell else end)
        wall = (end - start).total_seconds()
        rows.append({"model": m["model"], "wall": wall, "train": train,
                     "attacks": attack_s[m["model"]],
                     "rest": wall - train - attack_s[m["model"]]})
        prev = end
    cores = re.search(r"(\d+) cores", cells[0]["hardware"]) if cells else None
    return {"commit": commit, "models": rows, "families": dict(family_s),
            "library_seconds": library_s, "cores": int(cores.group(1)) if cores else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--suite", default="mnist5k")
    ap.add_argument("--commit", default=None, help="qbench_commit of the run (default: the "
                    "one that wrote the most model records)")
    ap.add_argument("--records", type=Path, default=RECORDS,
                    help="records folder (default: the project's results/records)")
    args = ap.parse_args()
    b = breakdown(args.suite, args.commit, args.records)
    print(f"suite {args.suite}, run of commit {b['commit']}\n")
    print("| model | wall s | training s | attacks s | rest s |\n|---|---|---|---|---|")
    tot = collections.Counter()
    for r in b["models"]:
        print(f"| {r['model']} | {r['wall']:.0f} | {r['train']:.1f} | {r['attacks']:.1f} | "
              f"{r['rest']:.1f} |")
        tot.update({k: r[k] for k in ("wall", "train", "attacks", "rest")})
    print(f"| total | {tot['wall']:.0f} | {tot['train']:.1f} | {tot['attacks']:.1f} | "
          f"{tot['rest']:.1f} |\n")
    print("| attack family | seconds | share of attack time |\n|---|---|---|")
    total = sum(b["families"].values())
    for fam, s in sorted(b["families"].items(), key=lambda kv: -kv[1]):
        print(f"| {fam} | {s:.1f} | {s / total:.0%} |")
    lib = b["library_seconds"]
    print(f"\nlibraries' attacks (Foolbox, AutoAttack): {lib:.0f} s of {total:.0f} s "
          f"({lib / total:.0%})", end="")
    if b["cores"]:
        print(f"; alone they keep the run's {b['cores']} cores busy for at least "
              f"{lib / b['cores'] / 60:.1f} minutes", end="")
    print()


if __name__ == "__main__":
    main()
