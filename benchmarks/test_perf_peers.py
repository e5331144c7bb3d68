"""Our PGD-20 and PGD++ against their peers and the floor, per model (``nox -s perf``).

Outside ``tests/``, so the normal test run skips it. For each of the three BNN-WAQ models of
the mnist5k zoo and one adversarially trained model (trained or loaded through the zoo), on a
batch of 256 test points, L∞ ε = 0.1, 20 steps of ε/4 from a random start (see ``peers.py``
for what each name runs; ours stop early per point, the peers do not):

* ``test_time``: one pytest-benchmark entry per (model, attack), compared with the committed
  baseline in ``benchmarks/.baselines`` (``nox -s perf`` fails on a median 25% slower). Test ids
  carry the thread count: a baseline only compares with runs on as many threads.
* ``test_ratios``: ours and the peers timed side by side in one process, in interleaved rounds;
  prints the table of median ratios and fails when a ratio is over its goal (:data:`LIMITS`):
  PGD++ NJS and HNS (early stopping, as registered) at most 0.35× torchattacks' PGD-20 on the
  BNN-WAQ models and 1.0× on the adversarially trained one; for the same work as the peers
  (ours without early stopping, ``*-all``), our PGD at most 1.05× a peer (torchattacks PGD,
  Foolbox LinfPGD, AutoAttack APGD-CE), NJS at most 1.05× and HNS 1.30× our PGD. The floor
  ratio and what early stopping saves are reported, not enforced.
* ``test_early_stopping_keeps_the_verdicts``: the timed attacks give the same candidates, bit
  for bit, as the same attacks run on every point for every step.

Threads: ``QBENCH_PERF_THREADS`` (default 2). On a machine that other processes keep busy, two
threads can wait on each other for most of a run (OpenMP barriers): use 1 there. Save a new
baseline with ``nox -s perf -- --benchmark-save=baseline``.
"""

from __future__ import annotations

import os

import peers
import pytest
import torch

THREADS = int(os.environ.get("QBENCH_PERF_THREADS", "2"))
torch.set_num_threads(THREADS)

#: interleaved rounds of the ratio check and pytest-benchmark rounds, per model (the convnet is
#: the noisiest and the slowest: at least 11 interleaved rounds; on the MLPs, 15-21 rounds left
#: medians ±5% apart from run to run on a shared 2-core machine, 41-61 rounds about ±2%)
RATIO_ROUNDS = {"mnist5k-mlp5x100-bnn-waq": 61, "mnist5k-mlp3x512-bnn-waq": 41,
                "mnist5k-convnet-bnn-waq": 15, "mnist5k-mlp5x100-ref-at": 41}
TIME_ROUNDS = {"mnist5k-mlp5x100-bnn-waq": 15, "mnist5k-mlp3x512-bnn-waq": 7,
               "mnist5k-convnet-bnn-waq": 3, "mnist5k-mlp5x100-ref-at": 11}
#: largest allowed ratio of medians on every model, for the same work as the peers (ours
#: without early stopping): the loop's own speed and the temperatures' overhead
COMMON_LIMITS = {"pgd-all/torchattacks": 1.05, "pgd-all/foolbox": 1.05,
                 "pgd-all/apgd-ce": 1.05, "pgd-njs-all/pgd-all": 1.05,
                 "pgd-hns-all/pgd-all": 1.30}
#: PGD++ against torchattacks' PGD-20: where early stopping pays (the BNN-WAQ models, broken
#: within a few steps once the temperature is right) and where most points survive
LIMITS = {arch: {**COMMON_LIMITS, "pgd-njs/torchattacks": 0.35, "pgd-hns/torchattacks": 0.35}
          for arch in peers.BNN_ARCHS}
LIMITS[peers.ROBUST_ARCH] = {**COMMON_LIMITS, "pgd-njs/torchattacks": 1.0,
                             "pgd-hns/torchattacks": 1.0}
NAMES = ("floor", *peers.OURS, *peers.ALL_STEPS, *peers.PEERS)

_RUNS: dict[str, dict] = {}


def _runs(arch: str) -> dict:
    if arch not in _RUNS:
        _RUNS.clear()  # one model in memory at a time
        model, x, y = peers.load(arch)
        _RUNS[arch] = peers.runs(model, x, y)
    return _RUNS[arch]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("arch", peers.ARCHS)
@pytest.mark.parametrize("threads", [f"t{THREADS}"])
def test_time(benchmark, threads, arch, name):
    runs = _runs(arch)
    if name not in runs:
        pytest.skip(f"{name} is not installed (nox -s perf installs every peer)")
    benchmark.group = f"{arch} {threads}"
    benchmark.extra_info.update(model=arch, batch=peers.BATCH, eps=peers.EPS, threads=THREADS)
    benchmark.pedantic(runs[name], rounds=TIME_ROUNDS[arch], warmup_rounds=1, iterations=1)


@pytest.mark.parametrize("arch", peers.ARCHS)
def test_ratios(arch, ratio_tables):
    runs = _runs(arch)
    missing = [n for n in NAMES if n not in runs]
    assert not missing, f"peers missing: {missing} (nox -s perf installs them)"
    load = os.getloadavg()[0]
    times = peers.interleaved(runs, RATIO_ROUNDS[arch])
    med = peers.medians(times)
    ratios = peers.ratio_rows(med)
    ratio_tables.append((arch, THREADS, RATIO_ROUNDS[arch], load, med, ratios))
    limits = LIMITS[arch]
    over = {k: round(r, 3) for k, r in ratios.items() if k in limits and r > limits[k]}
    assert not over, (f"{arch}: over the limit {over} (limits {limits}); all ratios "
                      f"{ {k: round(r, 3) for k, r in ratios.items()} }")


@pytest.mark.parametrize("arch", peers.ARCHS)
def test_early_stopping_keeps_the_verdicts(arch):
    """Early stopping is only allowed to save time: the same candidates, bit for bit, as the
    same attack run on every point for every step (hence the same robust-accuracy verdicts)."""
    from attacks import AttackContext, create_attack
    from zoo.data import dataset_info
    from zoo.layers import frozen

    model, x, y = peers.load(arch)
    context = AttackContext(reference_x=x[:101], std=tuple(dataset_info("mnist5k").std))
    for name in ("pgd-linf", "pgd-linf-njs", "pgd-linf-hns"):
        out = []
        for early_stop in (True, False):
            attack = create_attack(name, early_stop=early_stop)
            attack.setup(model, context)  # as for the timings
            with frozen(model):
                out.append(attack(model, x, y, eps=peers.EPS,
                                  generator=torch.Generator().manual_seed(0)).x_adv)
        assert torch.equal(out[0], out[1]), f"{arch} {name}: early stopping changed candidates"
