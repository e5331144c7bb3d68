"""Seeded training recipes. Every model in the zoo is trained by :func:`train_model`."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from zoo.data import Dataset
from zoo.layers import clip_latent_weights


@dataclass(frozen=True)
class Recipe:
    """How a model is trained. Part of the model's identity: change it and weights retrain.

    ``logit_scale`` multiplies the logits inside the training loss only. Binarized networks
    produce logits in the tens or hundreds; without it the softmax saturates and training
    stalls. It is never applied at evaluation: the evaluated model is the unscaled one.
    ``adv_eps > 0`` turns on PGD L∞ adversarial training (``adv_steps`` steps of
    ``adv_eps / 4``, random start).
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

    def recipe_id(self, arch: str) -> str:
        blob = json.dumps({"arch": arch, **asdict(self)}, sort_keys=True).encode()
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


def _pgd_train_batch(model: nn.Module, x: torch.Tensor, y: torch.Tensor, recipe: Recipe,
                     gen: torch.Generator) -> torch.Tensor:
    """PGD L∞ examples for adversarial training (model in train mode, as in Madry et al.)."""
    eps, step = recipe.adv_eps, recipe.adv_eps / 4
    noise = torch.rand(x.shape, generator=gen, device=x.device) * 2 - 1
    adv = (x + eps * noise).clamp(0, 1)
    for _ in range(recipe.adv_steps):
        adv.requires_grad_(True)
        loss = F.cross_entropy(model(adv) * recipe.logit_scale, y)
        (grad,) = torch.autograd.grad(loss, adv)
        adv = adv.detach() + step * grad.sign()
        adv = torch.min(torch.max(adv, x - eps), x + eps).clamp(0, 1)
    return adv.detach()


def train_model(
    model: nn.Module, data: Dataset, recipe: Recipe, *, device: str = "cpu",
    progress: bool = True, desc: str = "train",
) -> dict:
    """Train in place; returns a summary (clean accuracy on the test split, seconds)."""
    torch.manual_seed(recipe.seed)
    gen = torch.Generator(device="cpu").manual_seed(recipe.seed)
    model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    n = len(data.train_y)
    steps_per_epoch = (n + recipe.batch_size - 1) // recipe.batch_size
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, recipe.epochs * steps_per_epoch)
    adv_gen = torch.Generator(device=device).manual_seed(recipe.seed + 1)
    start = time.perf_counter()
    for _ in tqdm(range(recipe.epochs), desc=desc, disable=not progress, leave=False):
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, recipe.batch_size):
            idx = perm[i : i + recipe.batch_size]
            x, y = data.train_x[idx].to(device), data.train_y[idx].to(device)
            if recipe.adv_eps > 0:
                x = _pgd_train_batch(model, x, y, recipe, adv_gen)
            loss = F.cross_entropy(model(x) * recipe.logit_scale, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if recipe.clip_latent:
                clip_latent_weights(model)
    seconds = time.perf_counter() - start
    model.eval()
    return {
        "clean_acc": accuracy(model, data.test_x, data.test_y),
        "train_seconds": round(seconds, 2),
        "train_samples": n,
    }
