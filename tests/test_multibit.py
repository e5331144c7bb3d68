"""Multi-bit networks (Brevitas fake quantization) and their exact integer evaluation."""

from __future__ import annotations

import pytest
import torch
from factories import evaluate_attacks
from torch import nn

import bench
import zoo
from bench.verify import predict
from zoo.deployed import IntegerEmulation, integer_model
from zoo.quantized import MULTIBIT

MLP = "mnist5k-mlp5x100-w4a4"


@pytest.fixture(scope="module")
def mnist():
    return zoo.load_dataset("mnist5k")


def test_every_bit_width_is_registered_with_a_card_that_says_how_it_quantizes():
    names = zoo.list_models("mnist5k-*-w*a*")
    for quant in MULTIBIT:
        for arch in ("mlp5x100", "mlp3x512", "convnet"):
            assert f"mnist5k-{arch}-{quant}" in names
    assert "mnist5k-mlp5x100-w4a4-at" in names
    _, card = zoo.get_model("mnist5k-mlp3x512-w2a32", progress=False)
    q = card["quantization"]
    assert (q["weight_bits"], q["activation_bits"]) == (2, None)
    assert q["library"].startswith("brevitas 0.13")
    assert card["quant"] == "w2a32" and "weight-only" in card["description"]


@pytest.mark.parametrize("quant", list(MULTIBIT))
def test_weights_and_activations_take_at_most_their_bit_widths_values(quant, mnist):
    import brevitas.nn as qnn

    model, _ = zoo.get_model(f"mnist5k-mlp5x100-{quant}", progress=False)
    weight_bits, act_bits = MULTIBIT[quant]
    seen: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append(o.detach()))
             for m in model.modules() if isinstance(m, qnn.QuantReLU)]
    with torch.no_grad():
        model(mnist.test_x[:200])
    for h in hooks:
        h.remove()
    for m in model.modules():
        if isinstance(m, qnn.QuantLinear):  # narrow range: 2^B − 1 levels at most
            assert m.quant_weight().value.unique().numel() <= 2 ** weight_bits - 1
    assert len(seen) == (5 if act_bits else 0)
    for out in seen:
        assert out.unique().numel() <= 2 ** act_bits and bool((out >= 0).all())


@pytest.mark.parametrize("name", [MLP, "mnist5k-convnet-w2a2", "mnist5k-mlp3x512-w8a8",
                                  "mnist5k-mlp5x100-w2a32"])
def test_the_integer_evaluation_is_the_same_network(name, mnist):
    """Exact integer arithmetic and float32 fake quantization agree on clean test points
    (they may differ only where float32 rounds a pre-activation across a threshold)."""
    model, _ = zoo.get_model(name, progress=False)
    deployed = integer_model(model)
    assert isinstance(deployed, IntegerEmulation)
    x = mnist.test_x[:500]
    with torch.no_grad():
        fake = model(x).double()
    exact = deployed(x)
    assert exact.dtype == torch.float64
    agree = (fake.argmax(1) == exact.argmax(1)).double().mean()
    assert agree >= 0.995
    close = torch.isclose(fake, exact, rtol=1e-4, atol=1e-4).all(1).double().mean()
    assert close >= 0.9  # most points take the same activation codes all the way


def test_no_integer_evaluation_for_float_or_binarized_models_and_unknown_layers(digits_models):
    assert integer_model(digits_models["ref"]) is None
    assert integer_model(digits_models["bnn-waq"]) is None
    model, _ = zoo.get_model(MLP, progress=False)
    with pytest.raises(ValueError, match="does not know Tanh"):
        IntegerEmulation(nn.Sequential(model, nn.Tanh()))


def test_gradient_attacks_run_and_every_counted_example_is_rechecked(mnist):
    model, card = zoo.get_model(MLP, progress=False)
    rows = list(evaluate_attacks(
        model, model_name=MLP, model_sha256=card["weights_sha256"], suite="t", dataset=mnist,
        attacks=["pgd-linf", "pgd-linf-njs", "pgd-linf-hns", "square"], eps={"linf": [0.1]},
        n=100, seed=0, device="cpu"))
    for r in rows:
        assert r.status == "ok", r.error
        broken = sum(r.clean_correct) - sum(r.robust)
        assert r.info["deployed_checked"] == broken > 0, r.attack
        assert 0 <= r.info["deployed_held"] <= broken
    # the straight-through gradient is a real gradient here: PGD breaks most points
    assert rows[0].robust_acc < 0.5


def test_the_exact_attacks_do_not_apply_to_multi_bit_models():
    grid = bench.build_grid(suite="custom", dataset="mnist5k", models="mnist5k-mlp5x100-w*",
                            attacks="iprop,flip-search-linf,milp-linf,fgsm",
                            eps={"linf": [0.1]}, n=20)
    assert {a for _, a, _ in grid.cells()} == {"fgsm"}


def test_the_model_record_flags_clean_disagreements(mnist):
    from bench.engine import model_record

    model, card = zoo.get_model(MLP, progress=False)
    grid = bench.build_grid(suite="custom", dataset="mnist5k", models=MLP, attacks="fgsm",
                            eps={"linf": [0.1]}, n=200)
    record = model_record(model, MLP, card["weights_sha256"], card, grid, mnist, "cpu")
    x, _ = mnist.test_subset(200)
    expected = int((predict(model, x) != predict(integer_model(model), x)).sum())
    assert record.diagnostics["deployed_clean_disagree"] == expected
