"""Seeded training recipes. Every model in the zoo is trained by :func:`train_model`."""

from __future__ import annotations

import hashlib
import json
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from zoo.data import Dataset
from zoo.layers import SignActivation, clip_latent_weights

#: The fields of the first Recipe. They always enter ``recipe_id``; fields added later enter it
#: only when they differ from their default, so that adding a field never changes the identity
#: (and never invalidates the cached weights) of an existing model.
_V1_FIELDS = frozenset({"epochs", "batch_size", "lr", "weight_decay", "seed", "logit_scale",
                        "clip_latent", "adv_eps", "adv_steps"})

OPTIMIZERS = ("adam", "sgd")
AUGMENTS = ("", "crop-flip")
AMPS = ("", "bf16", "fp16")


@dataclass(frozen=True)
class Recipe:
    """How a model is trained. Part of the model's identity: change it and weights retrain.

    ``logit_scale`` multiplies the logits inside the training loss only. Binarized networks
    produce logits in the tens or hundreds; without it the softmax saturates and training
    stalls. It is never applied at evaluation: the evaluated model is the unscaled one.
    ``adv_eps > 0`` turns on PGD L∞ adversarial training (``adv_steps`` steps of
    ``adv_eps / 4``, random start).

    Later fields (all off at their default):

    * ``optimizer``: ``"adam"`` or ``"sgd"`` (SGD with ``momentum``, Nesterov). The learning
      rate always follows a cosine schedule down to 0 over the whole run.
    * ``augment``: ``"crop-flip"`` is the standard CIFAR augmentation: a random 32×32 crop of
      the image zero-padded by 4 pixels, and a horizontal flip with probability 1/2. It is
      drawn per sample from its own seeded generator, before any adversarial example is built.
    * ``amp``: ``"bf16"``/``"fp16"`` runs the training forward passes (and those of the
      adversarial-training attack) under ``torch.autocast`` **on CUDA only** (ignored on CPU).
      Weight binarization is unaffected: the sign of a float32 latent weight is taken in
      float32 and ±1 is exact in either format. The loss is computed in float32. Models with
      sign *activations* (BNN-WAQ) refuse it: a sign of a rounded pre-activation could differ
      from the float32 one at evaluation. Evaluation is always float32. fp16 uses a GradScaler.
    * ``max_steps``: stop after this many optimizer steps (0: no cap); the cosine schedule is
      then laid over the capped run. Meant for tests and smoke runs.
    """

    epochs: int = 15
    batch_size: int = 100
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0
    logit_scale: float = 1.0
    clip_latent: bool = False
    adv_eps: float = 0.0
    adv_steps: int = 7
    optimizer: str = "adam"
    momentum: float = 0.9
    augment: str = ""
    amp: str = ""
    max_steps: int = 0

    def __post_init__(self) -> None:
        for name, value, allowed in (("optimizer", self.optimizer, OPTIMIZERS),
                                     ("augment", self.augment, AUGMENTS),
                                     ("amp", self.amp, AMPS)):
            if value not in allowed:
                raise ValueError(f"Recipe {name}={value!r} is unknown; allowed: {allowed}")
        if self.epochs < 1 or self.batch_size < 1 or self.max_steps < 0:
            raise ValueError("Recipe needs epochs >= 1, batch_size >= 1 and max_steps >= 0")

    def identity(self) -> dict:
        """The fields that define the recipe (new fields only when not at their default)."""
        d = asdict(self)
        for f in fields(self):
            if f.name not in _V1_FIELDS and d[f.name] == f.default:
                del d[f.name]
        return d

    def recipe_id(self, arch: str) -> str:
        blob = json.dumps({"arch": arch, **self.identity()}, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """Clean accuracy in eval mode."""
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for i in range(0, len(y), batch_size):
        pred = model(x[i : i + batch_size].to(device)).argmax(1).cpu()
        correct += int((pred == y[i : i + batch_size]).sum())
    return correct / len(y)


def crop_flip(x: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop of the zero-padded batch (same size as ``x``) and random horizontal flip."""
    n, c, h, w = x.shape
    dev = x.device
    padded = F.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=gen, device=dev)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=gen, device=dev)
    flip = torch.rand(n, generator=gen, device=dev) < 0.5
    rows = (oy[:, None] + torch.arange(h, device=dev))[:, None, :, None]
    cols = ox[:, None] + torch.arange(w, device=dev)
    cols = torch.where(flip[:, None], cols.flip(1), cols)[:, None, None, :]
    batch = torch.arange(n, device=dev)[:, None, None, None]
    chan = torch.arange(c, device=dev)[None, :, None, None]
    return padded[batch, chan, rows, cols]


def _autocast(recipe: Recipe, device: str):
    if recipe.amp and torch.device(device).type == "cuda":
        dtype = torch.bfloat16 if recipe.amp == "bf16" else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return nullcontext()


def _pgd_train_batch(model: nn.Module, x: torch.Tensor, y: torch.Tensor, recipe: Recipe,
                     gen: torch.Generator, device: str = "cpu") -> torch.Tensor:
    """PGD L∞ examples for adversarial training (model in train mode, as in Madry et al.)."""
    eps, step = recipe.adv_eps, recipe.adv_eps / 4
    noise = torch.rand(x.shape, generator=gen, device=x.device) * 2 - 1
    adv = (x + eps * noise).clamp(0, 1)
    for _ in range(recipe.adv_steps):
        adv.requires_grad_(True)
        with _autocast(recipe, device):
            logits = model(adv)
        loss = F.cross_entropy(logits.float() * recipe.logit_scale, y)
        (grad,) = torch.autograd.grad(loss, adv)
        adv = adv.detach() + step * grad.sign()
        adv = torch.min(torch.max(adv, x - eps), x + eps).clamp(0, 1)
    return adv.detach()


def train_model(
    model: nn.Module, data: Dataset, recipe: Recipe, *, device: str = "cpu",
    progress: bool = True, desc: str = "train",
) -> dict:
    """Train in place; returns a summary (clean accuracy on the test split, seconds).

    Training runs under its own RNG state: the global torch RNG (CPU, and the training
    device's) is seeded with ``recipe.seed`` inside :func:`torch.random.fork_rng`, so training
    neither depends on nor changes the caller's random state. Batch order, adversarial starts
    and augmentation draw from their own seeded generators.
    """
    if recipe.amp and any(isinstance(m, SignActivation) for m in model.modules()):
        raise ValueError("mixed precision (Recipe.amp) is refused for models with sign "
                         "activations: train BNN-WAQ models in float32")
    dev = torch.device(device)
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(recipe.seed)
        return _train(model, data, recipe, device=device, progress=progress, desc=desc)


def _train(model: nn.Module, data: Dataset, recipe: Recipe, *, device: str, progress: bool,
           desc: str) -> dict:
    """The training loop of :func:`train_model` (called with the RNG already seeded)."""
    gen = torch.Generator(device="cpu").manual_seed(recipe.seed)
    model.to(device).train()
    if recipe.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(
            model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
            weight_decay=recipe.weight_decay, nesterov=True)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    n = len(data.train_y)
    steps_per_epoch = (n + recipe.batch_size - 1) // recipe.batch_size
    total_steps = recipe.epochs * steps_per_epoch
    if recipe.max_steps:
        total_steps = min(total_steps, recipe.max_steps)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, total_steps)
    adv_gen = torch.Generator(device=device).manual_seed(recipe.seed + 1)
    aug_gen = torch.Generator(device=device).manual_seed(recipe.seed + 2)
    scaler = torch.amp.GradScaler("cuda", enabled=recipe.amp == "fp16"
                                  and torch.device(device).type == "cuda")
    # On an accelerator, the training set moves there once; on CPU this is a no-op.
    train_x, train_y = data.train_x.to(device), data.train_y.to(device)
    on_cpu = torch.device(device).type == "cpu"
    steps = 0
    start = time.perf_counter()
    for _ in tqdm(range(recipe.epochs), desc=desc, disable=not progress, leave=False):
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, recipe.batch_size):
            idx = perm[i : i + recipe.batch_size]
            if not on_cpu:
                idx = idx.to(device)
            x, y = train_x[idx], train_y[idx]
            if recipe.augment == "crop-flip":
                x = crop_flip(x, aug_gen)
            if recipe.adv_eps > 0:
                x = _pgd_train_batch(model, x, y, recipe, adv_gen, device)
            with _autocast(recipe, device):
                logits = model(x)
            loss = F.cross_entropy(logits.float() * recipe.logit_scale, y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            if recipe.clip_latent:
                clip_latent_weights(model)
            steps += 1
            if steps == total_steps:
                break
        if steps == total_steps:
            break
    seconds = time.perf_counter() - start
    model.eval()
    return {
        "clean_acc": accuracy(model, data.test_x, data.test_y),
        "train_seconds": round(seconds, 2),
        "train_samples": n,
        "train_steps": steps,
    }
