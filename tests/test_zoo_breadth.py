"""Zoo breadth: convnets, the CIFAR-10 architectures, adversarial training, Fashion-MNIST,
CIFAR-10 files in torchvision's format, recipes and model cards.

Everything here runs on CPU on tiny inputs; nothing trains a registered model for real.
"""

from __future__ import annotations

import pickle
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import zoo
from attacks.gradient import FixedTemperature, GradientAttack
from results.errors import DataMissingError
from zoo.catalog import MNIST_AT_EPS, at_recipe
from zoo.cifar import resnet18, vgg16
from zoo.convnets import VGGNet, convnet
from zoo.data import DEBIAN_FASHION_MNIST, Dataset
from zoo.layers import BinaryConv2d, BinaryLinear, SignActivation
from zoo.models import MLP, QUANTS
from zoo.registry import model_card, model_spec
from zoo.train import Recipe, crop_flip, train_model

ARCHS = {  # name -> (factory(quant), input shape)
    "convnet": (convnet, (1, 28, 28)),
    "resnet18": (resnet18, (3, 32, 32)),
    "vgg16": (vgg16, (3, 32, 32)),
}


def _build(arch: str, quant: str) -> tuple[nn.Module, tuple[int, int, int]]:
    factory, shape = ARCHS[arch]
    torch.manual_seed(0)
    return factory(quant), shape


def _random_dataset(shape: tuple[int, ...], n_train: int = 8, n_test: int = 4) -> Dataset:
    g = torch.Generator().manual_seed(0)
    return Dataset("random", torch.rand(n_train, *shape, generator=g),
                   torch.randint(0, 10, (n_train,), generator=g),
                   torch.rand(n_test, *shape, generator=g),
                   torch.randint(0, 10, (n_test,), generator=g))


def _pm1(t: torch.Tensor) -> torch.Tensor:
    return torch.where(t >= 0, torch.ones_like(t), -torch.ones_like(t))


@pytest.mark.parametrize("quant", QUANTS)
@pytest.mark.parametrize("arch", list(ARCHS))
def test_every_architecture_trains_a_few_steps(arch, quant):
    model, shape = _build(arch, quant)
    data = _random_dataset(shape, n_train=6, n_test=2)
    before = {k: v.clone() for k, v in model.named_parameters()}
    recipe = Recipe(epochs=1, batch_size=3, max_steps=2, lr=1e-2, clip_latent=quant != "ref",
                    augment="crop-flip" if shape[0] == 3 else "")
    summary = train_model(model, data, recipe, progress=False)
    assert summary["train_steps"] == 2
    unchanged = [k for k, v in model.named_parameters() if torch.equal(v, before[k])]
    assert not unchanged, f"parameters not trained: {unchanged[:5]}"
    with torch.no_grad():
        out = model.eval()(data.test_x)
    assert out.shape == (2, 10) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


def _binarized_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, BinaryConv2d | BinaryLinear)]


@pytest.mark.parametrize("arch", [*ARCHS, "mlp"])
def test_bnn_wq_effective_weights_and_biases_are_signs(arch):
    if arch == "mlp":
        model, shape = MLP(784, [100] * 5, 10, "bnn-wq"), (1, 28, 28)
    else:
        model, shape = _build(arch, "bnn-wq")
    model.eval()
    layers = _binarized_layers(model)
    float_layers = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)
                    and not isinstance(m, BinaryConv2d | BinaryLinear)]
    assert layers and not float_layers, "every conv/dense layer of BNN-WQ must be binarized"
    assert all(m.binarize_bias and m.bias is not None for m in layers)
    assert not any(isinstance(m, SignActivation) for m in model.modules())
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d)]
    assert bns and all(not bn.affine for bn in bns)

    seen: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out: seen.__setitem__(mod, (inp[0], out)))
             for m in layers]
    x = torch.rand(2, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    assert set(seen) == set(layers), "some binarized layer was not used in the forward pass"
    with torch.no_grad():
        for m, (inp, out) in seen.items():
            w, b = _pm1(m.weight), _pm1(m.bias)
            assert set(w.unique().tolist()) <= {-1.0, 1.0} and set(b.unique().tolist()) <= {
                -1.0, 1.0}
            if isinstance(m, BinaryConv2d):
                expect = F.conv2d(inp, w, b, m.stride, m.padding)
                latent = F.conv2d(inp, m.weight, m.bias, m.stride, m.padding)
            else:
                expect, latent = F.linear(inp, w, b), F.linear(inp, m.weight, m.bias)
            assert torch.allclose(out, expect, rtol=1e-5, atol=1e-4), type(m).__name__
            assert not torch.allclose(out, latent, rtol=1e-3, atol=1e-3)
    # The last layer is binarized too (every weight and bias, as the paper evaluates BNN-WQ).
    last = [m for m in model.modules() if isinstance(m, BinaryLinear)][-1]
    assert last.out_features == 10


@pytest.mark.parametrize("arch", [*ARCHS, "mlp"])
def test_bnn_waq_hidden_activations_are_pm1(arch):
    if arch == "mlp":
        model, shape = MLP(784, [100] * 5, 10, "bnn-waq"), (1, 28, 28)
    else:
        model, shape = _build(arch, "bnn-waq")
    # A training step so that BN statistics are not at their initial values.
    train_model(model, _random_dataset(shape, n_train=3, n_test=1),
                Recipe(epochs=1, batch_size=3, max_steps=1), progress=False)
    model.eval()
    signs = [m for m in model.modules() if isinstance(m, SignActivation)]
    assert len(signs) >= 5
    outputs: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda mod, inp, out: outputs.append(out)) for m in signs]
    first: list[torch.Tensor] = []
    layers = _binarized_layers(model)
    hooks.append(layers[0].register_forward_hook(lambda mod, inp, out: first.append(inp[0])))
    x = torch.rand(3, *shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    assert len(outputs) == len(signs)
    for out in outputs:
        assert set(out.unique().tolist()) == {-1.0, 1.0}
    # The first layer sees the real-valued input; weights are signs, biases stay float.
    assert torch.equal(first[0].reshape(x.shape), x)
    assert all(not m.binarize_bias for m in layers)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d)]
    assert bns and all(bn.affine for bn in bns)


def test_ref_models_have_no_binarized_layers():
    for arch in ARCHS:
        model, _ = _build(arch, "ref")
        assert not _binarized_layers(model)
        assert not any(isinstance(m, SignActivation) for m in model.modules())


@pytest.mark.parametrize("quant", ["ref", "bnn-wq"])
def test_adversarial_training_improves_pgd_accuracy(digits, quant):
    """Base model versus its PGD-trained twin (same seed and schedule) on the 8x8 digits."""
    if quant == "ref":
        base = Recipe(epochs=6)
    else:
        base = Recipe(epochs=6, lr=3e-3, logit_scale=0.1, clip_latent=True)
    at = at_recipe(base, MNIST_AT_EPS)
    assert (at.adv_eps, at.adv_steps, at.epochs) == (MNIST_AT_EPS, 7, base.epochs)
    # The attack uses the training temperature, so that BNN-WQ gradients do not vanish.
    attack = GradientAttack(norm="linf", steps=20, scaler=FixedTemperature(base.logit_scale))
    robust = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 100-unit MLP gains nothing from threads; loaded CPUs lose
    try:
        for name, recipe in (("base", base), ("at", at)):
            torch.manual_seed(0)
            model = MLP(64, [100] * 5, 10, quant)
            summary = train_model(model, digits, recipe, progress=False)
            assert summary["clean_acc"] > 0.85
            x_adv = attack(model, digits.test_x, digits.test_y, eps=0.1).x_adv
            with torch.no_grad():
                robust[name] = float((model(x_adv).argmax(1) == digits.test_y).float().mean())
    finally:
        torch.set_num_threads(threads)
    assert robust["at"] > robust["base"] + 0.25, robust


# ---------------------------------------------------------------------------------------
# CIFAR-10 in torchvision's on-disk format


def _write_fake_cifar10(root: Path, per_batch: int = 6) -> np.ndarray:
    """A tiny CIFAR-10 in torchvision's layout: pickled dicts in cifar-10-batches-py."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    first = None
    for i, fname in enumerate([*(f"data_batch_{k}" for k in range(1, 6)), "test_batch"]):
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in (np.arange(per_batch) + i) % 10]
        with open(folder / fname, "wb") as f:
            pickle.dump({"batch_label": fname, "data": data, "labels": labels,
                         "filenames": [f"{j}.png" for j in range(per_batch)]}, f)
        if first is None:
            first = data
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)
    return first


def test_cifar10_loads_torchvision_files_and_trains_one_step(tmp_path):
    first = _write_fake_cifar10(tmp_path)
    with pytest.warns(UserWarning, match="differ from the official CIFAR-10"):
        data = zoo.load_dataset("cifar10", tmp_path)
    assert data.train_x.shape == (30, 3, 32, 32) and data.test_x.shape == (6, 3, 32, 32)
    assert data.train_y.dtype == torch.int64 and data.train_y[:3].tolist() == [0, 1, 2]
    # Channel-major rows: pixel (c, h, w) is byte c*1024 + h*32 + w.
    assert float(data.train_x[0, 2, 5, 7]) == pytest.approx(first[0, 2 * 1024 + 5 * 32 + 7] / 255)
    assert float(data.train_x.min()) >= 0 and float(data.train_x.max()) <= 1
    # The registered model with its real recipe (SGD, crop + flip), capped at one step.
    spec = model_spec("cifar10-resnet18-ref")
    assert spec.recipe.augment == "crop-flip" and spec.recipe.optimizer == "sgd"
    torch.manual_seed(0)
    model = spec.factory()
    summary = train_model(model, data, replace(spec.recipe, max_steps=1, batch_size=8),
                          progress=False)
    assert summary["train_steps"] == 1 and 0.0 <= summary["clean_acc"] <= 1.0
    x, y = data.test_subset(4)
    x_adv = GradientAttack(norm="linf", steps=2)(model, x, y, eps=8 / 255).x_adv
    assert x_adv.shape == x.shape and float((x_adv - x).abs().max()) <= 8 / 255 + 1e-6


def test_cifar10_missing_is_a_one_line_error(tmp_path, monkeypatch):
    import torchvision

    def offline(self):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torchvision.datasets.CIFAR10, "download", offline)
    with pytest.raises(DataMissingError) as err:
        zoo.load_dataset("cifar10", tmp_path / "empty")
    msg = str(err.value)
    assert "\n" not in msg and "cifar-10-batches-py" in msg and "OSError" in msg


def test_cifar10_corrupt_batch_is_reported(tmp_path):
    _write_fake_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DataMissingError, match="data_batch_3"):
        zoo.load_dataset("cifar10", tmp_path)


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(),
                    reason="Debian package dataset-fashion-mnist is not installed "
                    "(apt-get install -y dataset-fashion-mnist)")
def test_fashion_mnist_loads_from_debian_files(tmp_path):
    data = zoo.load_dataset("fashion-mnist", tmp_path)  # empty root: only Debian's files
    assert data.train_x.shape == (60000, 1, 28, 28) and data.test_x.shape == (10000, 1, 28, 28)
    assert torch.bincount(data.train_y).tolist() == [6000] * 10
    assert torch.bincount(data.test_y).tolist() == [1000] * 10
    assert float(data.train_x.min()) == 0.0 and float(data.train_x.max()) == 1.0


# ---------------------------------------------------------------------------------------
# Recipes, catalog and cards


def test_new_recipe_fields_leave_existing_model_ids_unchanged():
    # Pinned before Recipe gained optimizer/momentum/augment/amp/max_steps.
    assert model_spec("mnist5k-mlp5x100-bnn-waq").recipe_id == "02175a624e3706f0"
    assert model_spec("mnist5k-mlp5x100-ref").recipe_id == "24fe3bfe0ce69671"
    r = Recipe()
    assert r.recipe_id("a") == replace(r, momentum=0.9, max_steps=0).recipe_id("a")
    assert r.recipe_id("a") != replace(r, max_steps=5).recipe_id("a")
    assert r.recipe_id("a") != replace(r, optimizer="sgd").recipe_id("a")
    with pytest.raises(ValueError, match="augment"):
        Recipe(augment="mixup")


def test_catalog_has_the_new_models():
    names = set(zoo.list_models())
    expected = {f"{d}-convnet-{q}" for d in ("mnist5k", "fashion-mnist") for q in QUANTS}
    expected |= {f"{d}-convnet-{q}-at" for d in ("mnist5k", "fashion-mnist")
                 for q in ("ref", "bnn-wq")}
    expected |= {"mnist5k-mlp5x100-ref-at", "mnist5k-mlp5x100-bnn-wq-at"}
    expected |= {f"cifar10-{a}-{q}" for a in ("resnet18", "vgg16") for q in QUANTS}
    expected |= {"cifar10-resnet18-ref-at", "cifar10-resnet18-bnn-wq-at"}
    assert expected <= names
    for name in expected:
        spec = model_spec(name)
        assert name.startswith(f"{spec.dataset}-{spec.arch}-{spec.quant}")
        assert (spec.recipe.adv_eps > 0) == name.endswith("-at")
        if spec.dataset == "cifar10":
            assert spec.recipe.epochs >= 100 and spec.recipe.augment == "crop-flip"
            assert (spec.recipe.amp == "") == (spec.quant == "bnn-waq")
    assert model_spec("cifar10-resnet18-ref-at").recipe.adv_eps == pytest.approx(8 / 255)


def test_model_card_static_part_for_an_untrained_model():
    card = model_card("cifar10-resnet18-bnn-wq-at")
    assert card["trained"] is False
    assert card["dataset"] == "cifar10" and card["quant"] == "bnn-wq"
    assert "ResNet-18" in card["architecture"]
    at = card["adversarial_training"]
    assert at["enabled"] and at["eps"] == pytest.approx(8 / 255) and at["steps"] == 7
    assert at["step"] == pytest.approx(2 / 255) and at["base_model"] == "cifar10-resnet18-bnn-wq"
    assert card["recipe"]["epochs"] == 100 and card["parameters"] > 10_000_000
    assert model_card("mnist5k-convnet-ref")["adversarial_training"] == {"enabled": False}


def test_crop_flip_is_a_shift_or_mirror_of_the_input():
    x = torch.rand(16, 3, 8, 8)
    g = torch.Generator().manual_seed(0)
    same = crop_flip(x, g, pad=0)  # no padding: each image is itself or its mirror
    for a, b in zip(x, same, strict=True):
        assert torch.equal(a, b) or torch.equal(a.flip(2), b)
    out = crop_flip(x, torch.Generator().manual_seed(0))
    again = crop_flip(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and torch.equal(out, again)


def test_mixed_precision_is_refused_for_sign_activations():
    model = VGGNet((4, "M"), (), in_channels=1, image_size=8, num_classes=10, quant="bnn-waq")
    data = _random_dataset((1, 8, 8))
    with pytest.raises(ValueError, match="sign activations"):
        train_model(model, data, Recipe(amp="bf16", max_steps=1), progress=False)


@pytest.mark.slow
def test_cifar10_suite_runs_on_cpu_with_a_tiny_subset_and_one_training_step(tmp_path,
                                                                            monkeypatch):
    """The paper's CIFAR-10 suite end to end without a GPU: the suite's ε (Table 6), a
    registered BNN-WAQ ResNet-18 trained by its real recipe for one step, 20 test points."""
    import json

    from bench import cli
    from bench.suites import get_suite
    from results.vocabulary import match_names

    monkeypatch.setenv("QBENCH_CACHE", str(tmp_path / "cache"))
    _write_fake_cifar10(tmp_path / "data", per_batch=20)
    suite = get_suite("cifar10")
    assert suite.eps == {"linf": [8 / 255], "l2": [120 / 255]} and suite.n == 10000
    cheap = ("fgsm,fgsm-njs,fgsm-hns,pgd-linf,pgd-linf-njs,pgd-linf-hns,pgd-l2,pgd-l2-njs,"
             "pgd-l2-hns,apgd-dlr,deepfool-linf")
    assert set(cheap.split(",")) <= set(match_names(suite.attacks, sorted(cheap.split(",")) + [
        "square", "autoattack", "bba-linf", "bba-l2", "deepfool-l2", "apgd-ce",
        "fgsm-beta0.1", "pgd-linf-beta0.1", "pgd-linf-r5", "pgd-linf-njs-raw"], "attack"))
    args = ["run", "--suite", "cifar10", "--models", "cifar10-resnet18-bnn-waq",
            "--attacks", cheap, "--n", "20", "--data-root", str(tmp_path / "data"),
            "--device", "cpu", "--max-train-steps", "1", "--no-progress"]
    assert cli.main(args) == 2  # a smoke run must name its own records folder
    with pytest.warns(UserWarning, match="differ from the official CIFAR-10"):
        assert cli.main([*args, "--results", str(tmp_path / "rec")]) == 0
    cells = [json.loads(line) for line in (tmp_path / "rec" / "cifar10.cells.jsonl").open()]
    assert sorted(c["attack"] for c in cells) == sorted(cheap.split(","))
    assert all(c["status"] == "ok" and c["n"] == 20 for c in cells)
    assert {c["eps"] for c in cells} == {8 / 255, 120 / 255}
    pgd = next(c for c in cells if c["attack"] == "pgd-linf")
    # at most 20 passes per point (early stopping: fewer once points are broken)
    assert pgd["attack_config"]["steps"] == 20 and 0 <= pgd["forwards_per_sample"] <= 20
    assert pgd["attack_config"]["rel_step"] * 8 / 255 == pytest.approx(2 / 255)
    (model,) = [json.loads(line) for line in (tmp_path / "rec" / "cifar10.models.jsonl").open()]
    card = model["card"]
    assert card["smoke_max_train_steps"] == 1 and card["train_steps"] == 1
    assert card["recipe_id"] != model_spec("cifar10-resnet18-bnn-waq").recipe_id
    assert {c["model_sha256"] for c in cells} == {card["weights_sha256"]}
    # the smoke weights live apart from the real ones, which stay untrained
    weights = tmp_path / "cache" / "weights"
    assert (weights / "cifar10-resnet18-bnn-waq.smoke-1.json").exists()
    assert not (weights / "cifar10-resnet18-bnn-waq.json").exists()
    assert model_card("cifar10-resnet18-bnn-waq")["trained"] is False
