"""IPROP and the exact integer view of BNN-WAQ MLPs (attacks/iprop.py, attacks/integer_bnn.py)."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

import zoo
from attacks import create_attack
from attacks.integer_bnn import IntegerBNN, UnsupportedModelError
from attacks.iprop import IPROP, last_layer_flips
from results.errors import QBenchError
from zoo.layers import sign_pm1
from zoo.models import MLP


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Many small tensor operations: one thread is much faster on a shared CPU.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _hidden_acts(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    acts: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda _m, _i, o: acts.append(o.detach()))
             for m in model.net if type(m).__name__ == "SignActivation"]
    try:
        with torch.no_grad():
            logits = model(x)
    finally:
        for h in hooks:
            h.remove()
    return [logits, *acts]


@pytest.mark.parametrize("name,dataset", [("mnist5k-mlp5x100-bnn-waq", "mnist5k"),
                                          ("digits-mlp5x100-bnn-waq", "digits")])
def test_integer_view_matches_torch_on_every_test_point(name, dataset):
    model, _ = zoo.get_model(name, progress=False)
    data = zoo.load_dataset(dataset)
    x = data.test_x
    logits, *acts = _hidden_acts(model, x)
    ib = IntegerBNN(model)
    hs = ib.forward_hidden(x)
    assert len(hs) == len(acts) == 5
    for h, a in zip(hs, acts, strict=True):
        assert set(h.unique().tolist()) <= {-1, 1}
        assert torch.equal(h, a.to(torch.int8))
    assert torch.equal(ib.logits(x).argmax(1), logits.argmax(1))
    assert torch.equal(ib.logits(x), logits)  # the same float32 operation on the same ±1 input
    # the folded float64 first layer agrees with the model's float32 one (no ties here)
    assert torch.equal(torch.where(ib.first_margins(x) >= 0, 1, -1).to(torch.int8), hs[0])
    # the integer layers' thresholds needed no float32 correction
    assert ib.calibrated == 0


def _tiny_mlp(in_features: int, hidden: list[int], seed: int) -> MLP:
    torch.manual_seed(seed)
    model = MLP(in_features, hidden, 10, "bnn-waq")
    with torch.no_grad():
        for m in model.net:
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.uniform_(-3, 3)
                m.running_var.uniform_(0.5, 4)
                m.weight.uniform_(-1, 1)
                m.bias.uniform_(-0.5, 0.5)
    return model.eval()


def test_integer_thresholds_exact_on_ties_negative_and_zero_scales():
    # Layer 2 of 6 inputs: every ±1 input (64) enumerated. Ties: zero bias, integer running
    # mean, β = 0, so BN output is exactly 0 when W·h equals the mean (and sign(0) = +1).
    model = _tiny_mlp(4, [6, 8], seed=1)
    bn2 = model.net[5]
    lin2 = model.net[4]
    with torch.no_grad():
        lin2.bias.zero_()
        bn2.running_mean.copy_(torch.tensor([0.0, 2.0, -2.0, 4.0, 0.0, 2.0, 1.0, -3.0]))
        bn2.bias.zero_()
        bn2.weight.copy_(torch.tensor([1.0, -1.0, 0.5, -0.25, 0.0, 0.0, -2.0, 3.0]))
        bn2.bias[5] = -0.5  # a constant −1 unit (scale 0, β < 0); unit 4 is constant +1
    ib = IntegerBNN(model)
    sigma = ib.hidden[0].sigma.tolist()
    assert sigma == [1, -1, 1, -1, 0, 0, -1, 1]
    h1 = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=6)))
    with torch.no_grad():
        expected = torch.where(bn2(lin2(h1)) >= 0, 1, -1).to(torch.int8)
    got = ib.next_layer(0, h1)
    assert torch.equal(got, expected)
    assert (got[:, 4] == 1).all() and (got[:, 5] == -1).all()
    k = h1 @ sign_pm1(lin2.weight.detach()).T
    tie = k[:, 0] == 0  # unit 0 sits exactly on its threshold: +1
    assert tie.any() and (got[tie, 0] == 1).all()
    tie1 = k[:, 1] == 2  # σ = −1: +1 iff k ≤ 2, so +1 at the tie too
    assert tie1.any() and (got[tie1, 1] == 1).all()


def test_last_layer_step_is_optimal_by_brute_force():
    model = _tiny_mlp(6, [5, 8], seed=2)
    ib = IntegerBNN(model)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(40, 6, generator=g)
    hL = ib.forward_hidden(x)[-1].to(torch.float64)
    W = ib.W_out.to(torch.float64)
    t = torch.randint(0, 10, (40,), generator=g)
    p = (t + 1 + torch.randint(0, 9, (40,), generator=g)) % 10
    cs = {"network": W[t] - W[p], "real": torch.randn(40, 8, generator=g, dtype=torch.float64)}
    subsets = [s for r in range(9) for s in itertools.combinations(range(8), r)]
    for kind, c in cs.items():
        for S in (1, 2, 3, 5, 8):
            cost = torch.rand(40, 8, generator=g, dtype=torch.float64)
            mask = last_layer_flips(hL, c, S, cost)
            assert (mask.sum(1) <= S).all()
            got = (c * torch.where(mask, -hL, hL)).sum(1)
            for b in range(40):
                best = max(float((c[b] * hL[b] * torch.tensor(
                    [-1.0 if j in sub else 1.0 for j in range(8)],
                    dtype=torch.float64)).sum()) for sub in subsets if len(sub) <= S)
                assert got[b].item() == pytest.approx(best, abs=1e-9), (kind, S, b)
            # every chosen flip strictly helps
            assert ((-2 * c * hL)[mask] > 0).all()


def test_iprop_flips_are_real_and_inside_the_box():
    model, _ = zoo.get_model("mnist5k-mlp5x100-bnn-waq", progress=False)
    x, _ = zoo.load_dataset("mnist5k").test_subset(60)
    with torch.no_grad():
        clean = model(x).argmax(1)
    eps = 0.08
    attack = create_attack("iprop", rounds=20)
    assert isinstance(attack, IPROP) and not attack.uses_gradients
    result = attack(model, x, clean, eps=eps)
    x_adv = result.x_adv
    assert x_adv.shape == x.shape
    assert (x_adv >= 0).all() and (x_adv <= 1).all()
    assert ((x_adv - x).abs() <= eps + 1e-6).all()
    model.eval()
    with torch.no_grad():
        flipped = model(x_adv).argmax(1) != clean
    assert result.info["claimed_success"] == int(flipped.sum())
    assert flipped.sum() > 0
    # the integer view agrees with torch on the adversarial inputs too
    assert torch.equal(IntegerBNN(model).predict(x_adv), model(x_adv).argmax(1))


def test_iprop_flip_rate_at_large_eps():
    model, _ = zoo.get_model("digits-mlp5x100-bnn-waq", progress=False)
    x, _ = zoo.load_dataset("digits").test_subset(100)
    with torch.no_grad():
        clean = model(x).argmax(1)
    result = IPROP()(model, x, clean, eps=0.3)
    with torch.no_grad():
        rate = (model(result.x_adv).argmax(1) != clean).float().mean().item()
    assert rate >= 0.9
    assert ((result.x_adv - x).abs() <= 0.3 + 1e-6).all()


@pytest.mark.parametrize("name,found", [("digits-mlp5x100-ref", "'ref'"),
                                        ("digits-mlp5x100-bnn-wq", "'bnn-wq'")])
def test_other_models_are_refused(name, found):
    model, _ = zoo.get_model(name, progress=False)
    with pytest.raises(UnsupportedModelError) as err:
        IntegerBNN(model)
    assert "bnn-waq" in str(err.value) and found in str(err.value)
    assert isinstance(err.value, QBenchError) and isinstance(err.value, ValueError)
    x, _ = zoo.load_dataset("digits").test_subset(4)
    with pytest.raises(UnsupportedModelError, match="only bnn-waq MLPs"):
        IPROP()(model, x, torch.zeros(4, dtype=torch.long), eps=0.1)


def test_conv_model_is_refused():
    conv = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 10))
    with pytest.raises(UnsupportedModelError, match="bnn-waq.*found a Sequential"):
        IntegerBNN(conv)


@pytest.mark.slow
def test_flip_rate_sweep_verifies_and_plots(tmp_path):
    from bench.fliprate import COLUMNS, flip_rate_sweep, plot_flip_rate

    df = flip_rate_sweep(["digits-mlp5x100-bnn-waq", "digits-mlp5x100-ref"],
                         ["iprop", "pgd-linf", "milp-linf"], [0.05, 0.3], n=30, seed=0,
                         milp_n=10, milp_time_limit=1.0)
    assert list(df.columns) == COLUMNS and len(df) == 12
    exact = df[(df["model"] == "digits-mlp5x100-bnn-waq") & (df["attack"] == "milp-linf")]
    assert (exact["n"] == 10).all()
    assert (exact["flips"] + exact["proved"] + exact["undecided"] == 10).all()
    waq = df[df["model"] == "digits-mlp5x100-bnn-waq"].set_index(["attack", "eps"])
    assert waq.loc[("iprop", 0.3), "flip_rate"] >= 0.9
    assert (waq["rejected"] == 0).all() and (waq["flips"] / waq["n"] == waq["flip_rate"]).all()
    assert (waq["seconds_per_sample"] > 0).all()
    refused = df[(df["model"] == "digits-mlp5x100-ref") & (df["attack"] == "iprop")]
    assert refused["flip_rate"].isna().all() and refused["error"].str.contains("bnn-waq").all()
    path = plot_flip_rate(df, tmp_path / "fliprate.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_iprop_runs_through_the_runner_and_counts_integer_forwards(waq_batch):
    """The runner's pass counter is a transparent wrapper: IPROP looks through it, and its
    cost is the forward passes of its exact integer network (no backward passes)."""
    import bench
    from bench import engine

    model, x, y, clean = waq_batch
    out = engine.attack_cell(model, x, y, clean, attack_name="iprop", eps=0.2, seed=3,
                             device="cpu")
    assert out["status"] == "ok", out["error"]
    attacked = int(clean.sum())
    assert out["forwards_per_sample"] * attacked == out["info"]["integer_forwards"] > attacked
    assert out["backwards_per_sample"] == 0
    direct = create_attack("iprop")(model, x[clean], y[clean], eps=0.2,
                                    generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        broken = model(direct.x_adv).argmax(1) != y[clean]
    assert [v for v, c in zip(out["robust"], clean.tolist(), strict=True) if c] == [
        int(not b) for b in broken.tolist()]
    df = bench.evaluate(model, dataset="digits", attacks="iprop", eps=[0.2], n=40,
                        device="cpu")
    assert df["status"].tolist() == ["ok"] and df["robust_acc"].iloc[0] < 0.5
