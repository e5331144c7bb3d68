"""Flip rate under L∞ bounds: IPROP versus PGD / PGD++ (Gupta & Ajanthan, AAAI 2022, appendix,
Fig. 2).

The protocol of the PGD++ paper's appendix (Fig. 2, after IPROP's paper): the share of test
points whose prediction *flips* under an L∞ perturbation of size ε. Each attack gets the
model's own clean prediction as its "label", so a success is any change of the predicted
class — clean mistakes are attacked like any other point (this is not adversarial accuracy).
Every flip is verified by the benchmark's own check (:func:`bench.verify.verify`, with the
clean prediction as the label), independently of the attack: the candidate must be finite,
inside the ε-ball around the clean input and inside [0, 1] and predicted differently by the
model in eval mode; a candidate that breaks the threat model counts as no flip (and is
counted in ``rejected``). Every attack is set up as the benchmark's engine sets it up (NJS
β1 on the first 101 test images of the model's dataset).

The exact verifier (``milp-linf``, :mod:`attacks.milp`) adds the optimum where it can: on the
first ``milp_n`` points, with a short per-point time limit and its pattern search only (the
MILP behind it overruns short limits and decided nothing at these sizes), its verified flips
are a lower bound
on the exact flip rate and the points it proved unflippable an upper bound (``proved``,
``undecided`` columns); the plot draws its flips with the undecided share shaded above them.

Run as ``python -m bench.fliprate --models mnist5k-mlp5x100-bnn-waq --n 500 --out DIR`` to
write ``DIR/fliprate.csv`` and ``DIR/fliprate.png``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch

import zoo
from attacks import attack_spec, create_attack, list_attacks
from bench.calibrate import attack_context
from bench.verify import verify

DEFAULT_MODELS = ("mnist5k-mlp5x100-bnn-waq", "mnist5k-mlp3x512-bnn-waq")
DEFAULT_ATTACKS = ("iprop", "pgd-linf", "pgd-linf-njs", "pgd-linf-hns", "milp-linf")
#: the exact verifier's points and per-point time limit in the sweep (seconds)
MILP_N = 100
MILP_TIME_LIMIT = 2.0
DEFAULT_EPS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5)
COLUMNS = ["model", "attack", "eps", "n", "flip_rate", "seconds", "seconds_per_sample",
           "flips", "rejected", "clean_acc", "error", "proved", "undecided"]

def flip_rate_sweep(model_names: Sequence[str], attack_names: Sequence[str],
                    eps_list: Sequence[float], n: int = 500, seed: int = 0,
                    device: str = "cpu", *, progress: bool = False, milp_n: int = MILP_N,
                    milp_time_limit: float = MILP_TIME_LIMIT) -> pd.DataFrame:
    """Flip rate of each attack on each model at each L∞ ε, on the first ``n`` test points.

    Flip-rate protocol: the attack's label is the model's clean prediction, and a flip is a
    verified candidate (inside the ε-ball and [0, 1], finite) whose eval-mode prediction
    differs from the clean one; rejected candidates count as no flip. Each cell runs with a
    fresh generator seeded with ``seed``. ``seconds`` is the wall time of the attack call
    alone. A model an attack refuses (IPROP takes BNN-WAQ MLPs only) gives a row with a NaN
    flip rate and the reason in ``error``.

    The exact verifier ``milp-linf`` runs on the first ``milp_n`` points only, with
    ``milp_time_limit`` seconds per point; its rows also give the points it ``proved``
    unflippable and those left ``undecided`` (the exact flip rate lies in
    [flips, n − proved] / n).

    Columns: model, attack, eps, n, flip_rate, seconds, seconds_per_sample, flips, rejected,
    clean_acc, error, proved, undecided (the last two for the verifier only).
    """
    rows = []
    for model_name in model_names:
        model, _ = zoo.get_model(model_name, device=device, progress=progress)
        dataset = zoo.model_spec(model_name).dataset
        data = zoo.load_dataset(dataset)
        context = attack_context(data, device)  # what the runner sets attacks up with
        x, y = data.test_subset(n)
        x, y = x.to(device), y.to(device)
        with torch.no_grad():
            clean = model(x).argmax(1)
        clean_acc = int((clean == y).sum()) / n
        for attack_name in attack_names:
            for eps in eps_list:
                exact = attack_spec(attack_name).traits.family == "exact"
                attack = (create_attack(attack_name, time_limit=milp_time_limit,
                                        use_milp=False) if exact
                          else create_attack(attack_name))
                attack.setup(model, context)  # e.g. NJS β1 on the first 101 test images
                m = min(milp_n, n) if exact else n
                xs, cs = x[:m], clean[:m]
                gen = torch.Generator(device=device).manual_seed(seed)
                row = {"model": model_name, "attack": attack_name, "eps": float(eps), "n": m,
                       "clean_acc": clean_acc, "error": ""}
                start = time.perf_counter()
                try:
                    result = attack(model, xs, cs, eps=float(eps), generator=gen)
                except zoo.QBenchError as err:
                    row.update(flip_rate=math.nan, seconds=math.nan,
                               seconds_per_sample=math.nan, flips=0, rejected=0,
                               error=str(err))
                    rows.append(row)
                    continue
                seconds = time.perf_counter() - start
                # a flip is a verified adversarial example against the clean prediction
                verdict = verify(model, xs, cs, result.x_adv, eps=float(eps), norm="linf")
                valid, rejected = verdict.success, verdict.misclassified & ~verdict.success
                row.update(flip_rate=int(valid.sum()) / m, seconds=seconds,
                           seconds_per_sample=seconds / m, flips=int(valid.sum()),
                           rejected=int(rejected.sum()))
                if exact:
                    row.update(proved=int(result.info.get("proved", 0)),
                               undecided=int(result.info.get("unknown", 0)))
                rows.append(row)
                if progress:
                    print(f"{model_name} {attack_name} eps={eps:g}: flip rate "
                          f"{row['flip_rate']:.3f} ({seconds / n:.4f} s/sample)",
                          file=sys.stderr, flush=True)
    return pd.DataFrame(rows, columns=COLUMNS)


def plot_flip_rate(df: pd.DataFrame, path: str | Path) -> Path:
    """Flip rate versus ε: one panel per model, one line per attack; writes a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(df["model"]))
    fig, axes = plt.subplots(1, max(len(models), 1), figsize=(5 * max(len(models), 1), 4),
                             squeeze=False, sharey=True)
    for ax, model in zip(axes[0], models, strict=False):
        part = df[df["model"] == model]
        for attack in dict.fromkeys(part["attack"]):
            line = part[part["attack"] == attack].sort_values("eps")
            if "undecided" in line and line["undecided"].notna().any():  # a verifier
                top = line["flip_rate"] + line["undecided"].fillna(0) / line["n"]
                ax.fill_between(line["eps"], line["flip_rate"], top, color="0.2", alpha=0.18,
                                lw=0, label=f"{attack}: undecided")
                ax.plot(line["eps"], line["flip_rate"], marker="s", color="0.1", lw=2,
                        label=f"{attack} (exact where decided, n={int(line['n'].iloc[0])})")
                continue
            ax.plot(line["eps"], line["flip_rate"], marker="o", label=attack)
        ax.set_xscale("log")
        ticks = sorted(set(part["eps"]))
        ax.set_xticks(ticks, [f"{e:g}" for e in ticks])
        ax.minorticks_off()
        ax.set_title(model, fontsize=9)
        ax.set_xlabel("L∞ ε (inputs in [0, 1])")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel("flip rate")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.fliprate",
        description="Flip rate vs L∞ ε: IPROP, PGD / PGD++ and the exact verifier.")
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS),
                        help="comma-separated model names")
    parser.add_argument("--attacks", default=None,
                        help="comma-separated attack names (default: the registered ones of "
                        f"{', '.join(DEFAULT_ATTACKS)})")
    parser.add_argument("--eps", default=",".join(f"{e:g}" for e in DEFAULT_EPS),
                        help="comma-separated L∞ bounds in [0, 1]")
    parser.add_argument("--n", type=int, default=500, help="first n test points")
    parser.add_argument("--milp-n", type=int, default=MILP_N,
                        help="first n test points for the exact verifier (milp-linf)")
    parser.add_argument("--milp-time-limit", type=float, default=MILP_TIME_LIMIT,
                        help="the verifier's seconds per point")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (1 is fastest on a busy machine)")
    parser.add_argument("--out", required=True, help="output folder")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.attacks is None:
        attacks = [a for a in DEFAULT_ATTACKS if a in list_attacks()]
    else:
        attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    eps_list = [float(e) for e in args.eps.split(",") if e.strip()]
    try:
        df = flip_rate_sweep(models, attacks, eps_list, n=args.n, seed=args.seed,
                             device=args.device, progress=True, milp_n=args.milp_n,
                             milp_time_limit=args.milp_time_limit)
    except zoo.QBenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "fliprate.csv", index=False)
    plot_flip_rate(df, out / "fliprate.png")
    table = df.pivot_table(index=["model", "eps"], columns="attack", values="flip_rate")
    print(table.to_string(float_format=lambda v: f"{v:.3f}"))
    print(f"wrote {out / 'fliprate.csv'} and {out / 'fliprate.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
