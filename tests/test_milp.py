"""The exact verifier (attacks.milp) against an independent brute force, torch's tie rule,
and the runner."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.optimize import linprog
from torch import nn

from attacks.integer_bnn import FIRST_LAYER_TOL
from attacks.milp import BNNVerifier
from bench.verify import verify
from zoo.models import MLP

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _trained_tiny(seed: int, in_features: int = 6, hidden=(8, 6), classes: int = 4) -> MLP:
    """A BNN-WAQ MLP trained for a few hundred steps on random data with a linear teacher."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(512, in_features, generator=gen)
    teacher = torch.randn(in_features, classes, generator=gen)
    y = ((x - 0.5) @ teacher).argmax(1)
    torch.manual_seed(seed)
    model = MLP(in_features, list(hidden), classes, "bnn-waq")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(300):
        b = torch.randint(0, len(x), (64,), generator=gen)
        loss = nn.functional.cross_entropy(model(x[b]) / 2, y[b])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _first_layer_affine(model: MLP) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit j of layer 1 is +1 iff ``G_j·x + g_j ≥ 0`` (BN folded in float64, by hand), and
    the BN scale |s_j| that turns the verifier's pre-activation tolerance into G's units."""
    lin, bn = model.net[1], model.net[2]
    W = torch.where(lin.weight >= 0, 1.0, -1.0).double()
    s = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).double()
    G = s[:, None] * W
    g = s * (lin.bias.double() - bn.running_mean.double()) + bn.bias.double()
    scale = s.abs()
    return G.detach().numpy(), g.detach().numpy(), scale.detach().numpy()


def brute_force(model: MLP, x0: torch.Tensor, label: int, eps: float) -> str:
    """Every first-layer sign pattern, one LP each (SciPy): is it reachable from the box, and
    does the rest of the network (run by torch itself) then predict another class?

    ``broken``: a winning pattern reachable with every margin cleared by the float tolerance;
    ``robust``: no winning pattern is reachable even inside the tolerance band; else
    ``ambiguous``.
    """
    G, g, scale = _first_layer_affine(model)
    lo = np.clip(x0.numpy() - eps, 0, 1)
    hi = np.clip(x0.numpy() + eps, 0, 1)
    band = FIRST_LAYER_TOL * scale
    rest = model.net[4:]
    verdict = "robust"
    for signs in itertools.product((-1.0, 1.0), repeat=len(g)):
        s = np.array(signs)
        with torch.no_grad():
            pred = int(rest(torch.tensor(s, dtype=torch.float32)[None]).argmax(1))
        if pred == label:
            continue

        def reachable(margin: np.ndarray, s: np.ndarray = s) -> bool:
            # s_j·(G_j·x + g_j) ≥ margin_j   ⇔   −s_j·G_j·x ≤ s_j·g_j − margin_j
            res = linprog(np.zeros(len(lo)), A_ub=-s[:, None] * G, b_ub=s * g - margin,
                          bounds=list(zip(lo, hi, strict=True)), method="highs")
            return res.status == 0

        if reachable(band):
            return "broken"
        if reachable(-band):
            verdict = "ambiguous"
    return verdict


@pytest.mark.slow
def test_verdicts_equal_the_brute_force_on_random_points():
    """On 2 tiny trained BNN-WAQ MLPs (8 first-layer units: 256 patterns), 150 random
    (point, ε) pairs: the verifier's search and its MILP both agree with the enumeration,
    and every counterexample passes the benchmark's verification."""
    gen = torch.Generator().manual_seed(0)
    counts = {"robust": 0, "broken": 0}
    for seed in (1, 2):
        model = _trained_tiny(seed)
        verifier = BNNVerifier(model, time_limit=30)
        for _ in range(75):
            x0 = torch.rand(6, generator=gen)
            eps = float([0.02, 0.05, 0.1, 0.2, 0.3][int(torch.randint(5, (1,), generator=gen))])
            with torch.no_grad():
                label = int(model(x0[None]).argmax(1))
            truth = brute_force(model, x0, label, eps)
            if truth == "ambiguous":
                continue
            counts[truth] += 1
            for method in ("search", "milp"):
                v = verifier.verify(x0, label, eps, method=method)
                assert v.status == truth, (seed, x0.tolist(), eps, method, v)
                if v.status == "broken":
                    check = verify(model, x0[None], torch.tensor([label]), v.x[None], eps=eps,
                                   norm="linf")
                    assert bool(check.success[0]) and check.rejected == 0
    assert counts["robust"] >= 20 and counts["broken"] >= 20, counts
    assert sum(counts.values()) >= 100, counts


def _tie_model() -> MLP:
    """2 inputs, 3 hidden units, 2 classes; z0 − z1 = 2·(h_u + h_v), so the logits tie
    whenever u = x1 + x2 − 1 and v = x1 − x2 have opposite signs (h_1 is always +1)."""
    model = MLP(2, [3], 2, "bnn-waq").eval()
    lin, bn, out = model.net[1], model.net[2], model.net[4]
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 1.0], [1.0, 1.0], [1.0, -1.0]]))
        lin.bias.copy_(torch.tensor([5.0, -1.0, 0.0]))
        bn.running_mean.zero_()
        bn.running_var.fill_(1 - bn.eps)
        bn.weight.fill_(1.0)
        bn.bias.zero_()
        out.weight.copy_(torch.tensor([[1.0, 1.0, 1.0], [1.0, -1.0, -1.0]]))
        out.bias.zero_()
    return model


@pytest.mark.parametrize(("x0", "label", "expected"), [
    # h_u = h_v = −1: class 1. Within 0.2 a tie is reachable (x = (0.4, 0.7)) but not
    # u, v ≥ 0: on a tie torch's argmax takes the first index, class 0 — broken.
    ((0.2, 0.5), 1, "broken"),
    # h_u = h_v = +1: class 0. Within 0.2 ties are reachable, u, v < 0 together are not:
    # every tie still predicts class 0 — robust.
    ((0.8, 0.5), 0, "robust"),
])
def test_argmax_tie_rule_decides(x0, label, expected):
    model = _tie_model()
    x = torch.tensor(x0)
    with torch.no_grad():
        assert int(model(x[None]).argmax(1)) == label
    verifier = BNNVerifier(model)
    for method in ("search", "milp"):
        v = verifier.verify(x, label, 0.2, method=method)
        assert v.status == expected, (method, v)
    assert brute_force(model, x, label, 0.2) == expected
    if expected == "broken":
        with torch.no_grad():
            logits = model(v.x[None])[0]
        assert logits[0] == logits[1]  # the counterexample is a tie, won by class 0


@pytest.mark.slow
def test_milp_cell_through_the_runner(waq_batch, digits):
    """``milp-linf`` through the runner on the digits BNN-WAQ MLP: one verdict per test point
    ("" for clean mistakes), robust = proved + unknown, and no other attack of the same
    points breaks a point it proved robust."""
    from bench import engine
    from bench.calibrate import attack_context

    model, x, y, clean = waq_batch
    context = attack_context(digits, "cpu")  # NJS (a presolve attack) needs its β1, as in a run
    out = engine.attack_cell(model, x, y, clean, attack_name="milp-linf", eps=0.02, seed=0,
                             device="cpu", context=context)
    assert out["status"] == "ok", out["error"]
    info, verdicts = out["info"], out["info"]["verdicts"]
    assert len(verdicts) == len(x)
    assert [v == "" for v in verdicts] == (~clean).tolist()
    assert sum(out["robust"]) == info["proved"] + info["unknown"]
    assert info["broken"] == sum(clean.tolist()) - sum(out["robust"])
    assert out["rejected"] == 0
    for other in ("pgd-linf-njs", "apgd-ce", "fgsm"):
        cell = engine.attack_cell(model, x, y, clean, attack_name=other, eps=0.02, seed=0,
                                  device="cpu", context=context)
        for v, r in zip(verdicts, cell["robust"], strict=True):
            assert not (v == "robust" and r == 0), other
