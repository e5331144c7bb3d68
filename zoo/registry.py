"""Model registry in the style of timm: a name is all a user needs to get a trained model.

``register_model`` records a factory with its dataset, architecture, quantization and training
recipe; ``list_models("*bnn-waq")`` lists names by wildcard; ``get_model(name)`` returns the
model in eval mode with verified weights, training it first (seeded) if it was never trained.
"""

from __future__ import annotations

import fnmatch
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn

from zoo.data import dataset_info, load_dataset
from zoo.errors import CorruptWeightsError, UnknownNameError
from zoo.store import load_weights, model_lock, read_card, save_weights
from zoo.train import Recipe, train_model


@dataclass(frozen=True)
class ModelSpec:
    name: str
    dataset: str
    arch: str
    quant: str
    factory: Callable[[], nn.Module]
    recipe: Recipe
    description: str = ""
    architecture: str = ""  # human-readable layer list, shown on the model card

    @property
    def recipe_id(self) -> str:
        return self.recipe.recipe_id(self.arch + "/" + self.quant)

    @property
    def adversarially_trained(self) -> bool:
        return self.recipe.adv_eps > 0


_MODELS: dict[str, ModelSpec] = {}


def register_model(
    name: str, *, dataset: str, arch: str, quant: str, recipe: Recipe, description: str = "",
    architecture: str = "",
) -> Callable[[Callable[[], nn.Module]], Callable[[], nn.Module]]:
    """Decorator registering a zero-argument factory that builds the untrained network."""

    def wrap(factory: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        dataset_info(dataset)  # the dataset must exist
        _MODELS[name] = ModelSpec(name, dataset, arch, quant, factory, recipe, description,
                                  architecture)
        return factory

    return wrap


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style wildcard, sorted."""
    return sorted(fnmatch.filter(_MODELS, pattern))


def model_spec(name: str) -> ModelSpec:
    if name not in _MODELS:
        raise UnknownNameError("model", name, sorted(_MODELS))
    return _MODELS[name]


def adversarial_training_summary(spec: ModelSpec) -> dict:
    """What the card says about adversarial training (``{"enabled": False}`` when none)."""
    r = spec.recipe
    if r.adv_eps <= 0:
        return {"enabled": False}
    base = spec.name[: -len("-at")] if spec.name.endswith("-at") else None
    return {
        "enabled": True,
        "method": "PGD L-inf adversarial training (Madry et al.): every training batch is "
        "replaced by its PGD adversarial examples, model in train mode",
        "norm": "linf",
        "eps": r.adv_eps,
        "eps_in_255": round(r.adv_eps * 255, 3),
        "step": r.adv_eps / 4,
        "steps": r.adv_steps,
        "random_start": "uniform in the eps-ball",
        "loss": f"cross-entropy on {r.logit_scale:g} x logits",
        "base_model": base if base in _MODELS else None,
    }


def _static_card(spec: ModelSpec, model: nn.Module | None = None) -> dict:
    """The card fields that follow from the registration alone (no training needed)."""
    info = dataset_info(spec.dataset)
    if model is None:
        model = spec.factory()
    return {
        "name": spec.name,
        "dataset": spec.dataset,
        "input_shape": list(info.input_shape),
        "arch": spec.arch,
        "architecture": spec.architecture or spec.description,
        "quant": spec.quant,
        "description": spec.description,
        "recipe": asdict(spec.recipe),
        "recipe_id": spec.recipe_id,
        "adversarial_training": adversarial_training_summary(spec),
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def model_card(name: str) -> dict:
    """The model's card: the trained card when weights for the current recipe are cached
    (``"trained": True``), else the static part (``"trained": False``; no training happens).

    Cards written before a field existed are completed from the registration.
    """
    spec = model_spec(name)
    card = read_card(name)
    static = _static_card(spec)
    if card is not None and card.get("recipe_id") == spec.recipe_id:
        return {**static, **card, "trained": True}
    out = {**static, "trained": False}
    if card is not None:
        out["stale_card"] = ("a card for an older recipe is cached; `get_model` retrains "
                             f"(cached recipe_id {card.get('recipe_id')})")
    return out


def _load_state(model: nn.Module, key: str, card: dict) -> None:
    """Load verified weights; weights that do not fit the architecture are corrupt too."""
    state = load_weights(key, card)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0][:200]
        raise CorruptWeightsError(
            f"weights file of {key} does not fit its architecture ({first}). Retrain with "
            f"`python -m bench train {key.split('.smoke-')[0]} --retrain`.") from None


def get_model(
    name: str, *, device: str = "cpu", retrain: bool = False, progress: bool = True,
    data_root: str | None = None, max_train_steps: int | None = None,
) -> tuple[nn.Module, dict]:
    """The trained model in eval mode on ``device`` and its card.

    Trains (and caches) the model when it was never trained here, or when its recipe changed.
    A cached file that fails its sha256 check raises CorruptWeightsError unless ``retrain``.

    ``max_train_steps`` caps training at that many optimizer steps: a smoke run of the real
    recipe on a machine too small for it. Such weights are cached apart from the real ones
    (``NAME.smoke-N``) and their card says ``"smoke_max_train_steps": N``.
    """
    spec, key = model_spec(name), name
    run = spec  # the spec whose recipe is trained: a smoke run caps its steps
    if max_train_steps is not None:
        if max_train_steps < 1:
            raise ValueError(f"max_train_steps must be a positive step count, got "
                             f"{max_train_steps}")
        run = replace(spec, recipe=replace(spec.recipe, max_steps=max_train_steps))
        key = f"{name}.smoke-{max_train_steps}"
    recipe, recipe_id = run.recipe, run.recipe_id
    with torch.random.fork_rng():  # seeded initialisation, global RNG left untouched
        torch.manual_seed(recipe.seed)
        model = spec.factory()
    with model_lock(key):  # one process trains a model; the others wait, then load it
        card = None if retrain else read_card(key)
        if card is not None and card.get("recipe_id") == recipe_id:
            _load_state(model, key, card)
        else:
            data = load_dataset(spec.dataset, data_root)
            summary = train_model(model, data, recipe, device=device, progress=progress,
                                  desc=f"train {name}")
            smoke = ({} if max_train_steps is None
                     else {"smoke_max_train_steps": max_train_steps})
            card = save_weights(key, model.state_dict(), {
                **_static_card(run, model),
                **smoke,
                "trained_on": device,
                # weights depend on it: the float reductions of training differ by thread count
                "train_threads": torch.get_num_threads(),
                "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "torch": torch.__version__,
                "platform": platform.platform(),
                **summary,
            })
            # Reload from disk so that a model is only ever used through verified weights.
            _load_state(model, key, card)
    # Cards written before a field existed are completed from the registration.
    card = {**_static_card(run, model), **card}
    return model.to(device).eval(), card

__all__ = ["CorruptWeightsError", "ModelSpec", "get_model", "list_models", "model_card",
           "model_spec", "register_model"]
