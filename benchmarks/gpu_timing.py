"""GPU timings: our PGD / PGD++ NJS / HNS against torchattacks PGD and the floor on a
random-init ResNet-18 at CIFAR-10 size, with and without AMP, channels-last and torch.compile.

    python benchmarks/gpu_timing.py --quick                  # about 3-4 minutes on one GPU
    python benchmarks/gpu_timing.py                          # more rounds, both quantizations
    python benchmarks/gpu_timing.py --device cpu --smoke     # a check that it runs (seconds)

L∞ ε = 8/255, 20 steps of ε/4 (the paper's CIFAR-10 PGD uses 2/255 = ε/4), random start, on
random inputs labelled with the model's own predictions, so that every point starts correctly
classified (timing only: nothing is recorded). Ours stop early per point (as registered);
the ``*-all-steps`` rows run the same attacks on every point for every step, and
``points_with_other_candidates`` counts the points where both did not give the same bits (a
GPU's matrix kernels may round a row differently when the batch shrinks; on CPUs they do so
only below about a dozen rows, which early stopping never goes below). The model
(``zoo.cifar.resnet18``, untrained, eval mode, parameters frozen) is prepared per *variant*:

* ``fp32``: as it is;
* ``channels-last``: model and inputs in ``torch.channels_last`` memory format;
* ``amp-bf16``: the forward pass under ``torch.autocast`` (bfloat16), float32 logits;
* ``compile``: ``torch.compile(model)`` (its compile time is spent in the warm-up round).

Every attack sees the same prepared model. ``floor`` is 20 × (one forward + one backward to the
input). Each (variant, batch) times all attacks in interleaved rounds and reports medians; a
cell that fails (e.g. a variant a GPU or torch build does not support) is reported as an error
and the rest goes on. Writes a Markdown table to stdout and everything to ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attacks import AttackContext, create_attack  # noqa: E402
from benchmarks.peers import floor  # noqa: E402
from zoo.cifar import resnet18  # noqa: E402
from zoo.data import dataset_info  # noqa: E402

EPS = 8 / 255
ATTACKS = ("pgd-linf", "pgd-linf-njs", "pgd-linf-hns")
VARIANTS = ("fp32", "channels-last", "amp-bf16", "compile")


class Autocast(nn.Module):
    """The wrapped model's forward pass under autocast; float32 logits out."""

    def __init__(self, model: nn.Module, device: str, dtype: torch.dtype) -> None:
        super().__init__()
        self.model, self.device_type, self.dtype = model, torch.device(device).type, dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=self.dtype):
            return self.model(x).float()


def prepared(quant: str, variant: str, device: str) -> nn.Module:
    torch.manual_seed(0)
    model = resnet18(quant).to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    if variant == "channels-last":
        model = model.to(memory_format=torch.channels_last)
    elif variant == "amp-bf16":
        model = Autocast(model, device, torch.bfloat16).eval()
    elif variant == "compile":
        model = torch.compile(model)
    return model


def attacks_for(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int
                ) -> dict[str, Callable[[], object]]:
    out: dict[str, Callable[[], object]] = {"floor": partial(floor, model, x, y, steps)}
    # per model, once: not part of an attack's time (CIFAR-10-shaped inputs)
    context = AttackContext(reference_x=x[:101], std=tuple(dataset_info("cifar10").std))
    for name in ATTACKS:
        for early_stop, row in ((True, name), (False, f"{name}-all-steps")):
            attack = create_attack(name, early_stop=early_stop)
            attack.setup(model, context)
            if steps != attack.steps:  # smoke runs only; the registered attacks take 20 steps
                attack.steps = steps
            gen = torch.Generator(device=x.device).manual_seed(0)
            out[row] = partial(attack, model, x, y, eps=EPS, generator=gen)
    try:
        import torchattacks
    except ImportError:
        print("torchattacks is not installed (pip install --no-deps torchattacks): left out",
              file=sys.stderr)
    else:
        pgd = torchattacks.PGD(model, eps=EPS, alpha=EPS / 4, steps=steps, random_start=True)
        out["torchattacks"] = partial(pgd, x, y)
    return out


def other_candidates(last: dict[str, object]) -> dict[str, int]:
    """Per attack, how many points got other candidates with early stopping than without, in
    the last timed round (both runs drew the same random starts: one generator each, seeded
    alike and advanced alike)."""
    out = {}
    for name in ATTACKS:
        early, full = last.get(name), last.get(f"{name}-all-steps")
        if hasattr(early, "x_adv") and hasattr(full, "x_adv"):
            out[name] = int((early.x_adv != full.x_adv).flatten(1).any(1).sum())
    return out


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_cell(fns: dict[str, Callable[[], object]], rounds: int, device: str
              ) -> tuple[dict[str, float | str], dict[str, object]]:
    """Median seconds per callable over interleaved rounds (after one warm-up round), and
    what each returned in the last round."""
    times: dict[str, list[float]] = {n: [] for n in fns}
    errors: dict[str, str] = {}
    last: dict[str, object] = {}
    for r in range(rounds + 1):
        for name, fn in fns.items():
            if name in errors:
                continue
            try:
                sync(device)
                start = time.perf_counter()
                last[name] = fn()
                sync(device)
            except Exception as exc:  # noqa: BLE001 - report the cell, keep going
                errors[name] = f"{type(exc).__name__}: {exc}"[:200]
                continue
            if r:  # round 0 is the warm-up (and the compile)
                times[name].append(time.perf_counter() - start)
    return {n: errors.get(n) or statistics.median(t) for n, t in times.items()}, last


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="batches 256 and 1024, ref model, "
                    "3 rounds: about 3-4 minutes on one GPU")
    ap.add_argument("--smoke", action="store_true", help="a tiny run that checks the script "
                    "(ref model, batch 2, 1 step, 1 round, no compile); meant for --device cpu")
    ap.add_argument("--batches", type=int, nargs="+", default=[256, 1024])
    ap.add_argument("--quants", nargs="+", default=["ref", "bnn-waq"])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--out", type=Path, default=None, help="JSON file for the results")
    args = ap.parse_args(argv)
    steps = 20
    if args.quick:
        args.quants, args.rounds = ["ref"], 3
    if args.smoke:
        args.batches, args.rounds, steps = [2], 1, 1
        args.variants = [v for v in args.variants if v != "compile"]
        if "--quants" not in (argv if argv is not None else sys.argv):
            args.quants = ["ref"]
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("no CUDA GPU here: pass --device cpu (with --smoke for a quick check)")
    gen = torch.Generator().manual_seed(0)
    results = []
    for quant in args.quants:
        for variant in args.variants:
            try:
                model = prepared(quant, variant, args.device)
            except Exception as exc:  # noqa: BLE001
                results.append({"quant": quant, "variant": variant, "error": repr(exc)[:200]})
                continue
            for batch in args.batches:
                x = torch.rand(batch, 3, 32, 32, generator=gen).to(args.device)
                if variant == "channels-last":
                    x = x.contiguous(memory_format=torch.channels_last)
                with torch.no_grad():  # every point starts correctly classified
                    y = model(x).argmax(1)
                med, last = time_cell(attacks_for(model, x, y, steps), args.rounds,
                                      args.device)
                row = {"quant": quant, "variant": variant, "batch": batch, "seconds": med,
                       "points_with_other_candidates": other_candidates(last)}
                results.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    report = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda")
              else platform.processor() or platform.machine(),
              "torch": torch.__version__, "steps": steps, "eps": EPS,
              "rounds": args.rounds, "results": results}
    print(markdown(report))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    return report


def markdown(report: dict) -> str:
    """Medians in ms, and ours over the floor and over torchattacks."""
    lines = [f"{report['device']}, torch {report['torch']}, PGD-{report['steps']}, "
             f"medians of {report['rounds']} rounds", "",
             "| quant | variant | batch | floor ms | PGD ms | PGD/floor | PGD/torchattacks "
             "| NJS/PGD | HNS/PGD | NJS/torchattacks | HNS/torchattacks "
             "| early stop / all steps (PGD, NJS, HNS) | points with other candidates |",
             "|---" * 13 + "|"]

    def ratio(s: dict, a: str, b: str) -> str:
        ok = isinstance(s.get(a), float) and isinstance(s.get(b), float)
        return f"{s[a] / s[b]:.2f}" if ok else "-"

    def ms(v: object) -> str:
        return f"{1e3 * v:.1f}" if isinstance(v, float) else "error" if v else "-"

    for r in report["results"]:
        if "error" in r:
            lines.append(f"| {r['quant']} | {r['variant']} | - | error: {r['error']} |")
            continue
        s = r["seconds"]
        lines.append(f"| {r['quant']} | {r['variant']} | {r['batch']} | {ms(s.get('floor'))} "
                     f"| {ms(s.get('pgd-linf'))} | {ratio(s, 'pgd-linf', 'floor')} "
                     f"| {ratio(s, 'pgd-linf', 'torchattacks')} "
                     f"| {ratio(s, 'pgd-linf-njs', 'pgd-linf')} "
                     f"| {ratio(s, 'pgd-linf-hns', 'pgd-linf')} "
                     f"| {ratio(s, 'pgd-linf-njs', 'torchattacks')} "
                     f"| {ratio(s, 'pgd-linf-hns', 'torchattacks')} "
                     f"| {', '.join(ratio(s, a, f'{a}-all-steps') for a in ATTACKS)} "
                     f"| {sum(r.get('points_with_other_candidates', {}).values())} |")
    errors = [(r, n, v) for r in report["results"] for n, v in r.get("seconds", {}).items()
              if isinstance(v, str)]
    lines += [f"* error in {r['quant']} {r['variant']} {r['batch']} {n}: {v}"
              for r, n, v in errors]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
