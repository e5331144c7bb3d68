"""Model registry in the style of timm: a name is all a user needs to get a trained model.

``register_model`` records a factory with its dataset, architecture, quantization and training
recipe; ``list_models("*bnn-waq")`` lists names by wildcard; ``get_model(name)`` returns the
model in eval mode with verified weights: the shipped ones (``zoo/weights``) where the model
has them, else trained here first (seeded) and cached.
"""

from __future__ import annotations

import fnmatch
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import nn

from results.errors import CorruptWeightsError, QBenchError, UnknownNameError
from zoo.data import dataset_info, load_dataset
from zoo.quantized import MULTIBIT, quantization_card
from zoo.store import (
    SHIPPED_DIR,
    load_weights,
    model_lock,
    paths_for,
    read_card,
    save_weights,
)
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
        # the reference's normalisation of this dataset: the coordinates of NJS's Jacobian
        "input_normalisation": info.normalisation(),
        "arch": spec.arch,
        "architecture": spec.architecture or spec.description,
        "quant": spec.quant,
        **({"quantization": quantization_card(spec.quant)} if spec.quant in MULTIBIT else {}),
        "description": spec.description,
        "recipe": asdict(spec.recipe),
        "recipe_id": spec.recipe_id,
        "adversarial_training": adversarial_training_summary(spec),
        "parameters": sum(p.numel() for p in model.parameters()),
    }


#: Where the weights :func:`get_model` returns come from (see :mod:`zoo.store`)
WEIGHTS = ("shipped", "trained")


def shipped_card(spec: ModelSpec) -> dict | None:
    """The card of the model's shipped weights; None when it has none.

    Shipped weights of another recipe than the registered one are refused: they no longer
    describe the model, and training silently instead would change every published number.
    """
    card = read_card(spec.name, SHIPPED_DIR)
    if card is not None and card.get("recipe_id") != spec.recipe_id:
        raise CorruptWeightsError(
            f"the shipped weights of {spec.name} were trained with recipe "
            f"{card.get('recipe_id')}, but the registry's recipe is now {spec.recipe_id}: "
            f"train and ship the new weights (`python -m bench train {spec.name} --retrain "
            f"--ship`) and recompute the model's records")
    return card


def model_card(name: str) -> dict:
    """The model's card: that of its shipped weights, else of the weights trained here for the
    current recipe (``"trained": True`` either way), else the static part (``"trained":
    False``; no training happens). ``weights_source`` says which.

    Cards written before a field existed are completed from the registration.
    """
    spec = model_spec(name)
    static = _static_card(spec)
    card = shipped_card(spec)
    if card is not None:
        return {**static, **card, "trained": True, "weights_source": "shipped"}
    card = read_card(name)
    if card is not None and card.get("recipe_id") == spec.recipe_id:
        return {**static, **card, "trained": True, "weights_source": "trained"}
    out = {**static, "trained": False}
    if card is not None:
        out["stale_card"] = ("a card for an older recipe is cached; `get_model` retrains "
                             f"(cached recipe_id {card.get('recipe_id')})")
    return out


def weights_path(card: dict) -> Path:
    """The weights file behind a card that :func:`get_model` returned."""
    smoke = card.get("smoke_max_train_steps")
    key = card["name"] if smoke is None else f"{card['name']}.smoke-{smoke}"
    root = SHIPPED_DIR if card.get("weights_source") == "shipped" else None
    return paths_for(key, root)[0]


def _load_state(model: nn.Module, key: str, card: dict, root: Path | None = None) -> None:
    """Load verified weights; weights that do not fit the architecture are corrupt too."""
    state = load_weights(key, card, root)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0][:200]
        fix = ("restore the shipped files with `git checkout -- zoo/weights`"
               if root == SHIPPED_DIR else
               f"retrain with `python -m bench train {key.split('.smoke-')[0]} --retrain`")
        raise CorruptWeightsError(
            f"weights file of {key} does not fit its architecture ({first}). "
            f"{fix[0].upper()}{fix[1:]}.") from None


def get_model(
    name: str, *, device: str = "cpu", weights: str = "shipped", retrain: bool = False,
    progress: bool = True, data_root: str | None = None, max_train_steps: int | None = None,
) -> tuple[nn.Module, dict]:
    """The trained model in eval mode on ``device`` and its card.

    ``weights="shipped"`` (the default) returns the weights shipped with the zoo, the ones
    the published records were computed from, verified by sha256; a model without shipped
    weights is trained here (seeded) and cached. ``weights="trained"`` returns the weights
    trained on this machine, training them first if none are cached for the current recipe.
    ``retrain`` trains again (implies ``"trained"``): on another CPU type or thread count the
    same recipe gives other weights, hence another sha256 and other cells; the shipped weights
    are never replaced. The card's ``weights_source`` says which weights were returned.
    A file that fails its sha256 check raises CorruptWeightsError.

    ``max_train_steps`` caps training at that many optimizer steps: a smoke run of the real
    recipe on a machine too small for it. Such weights are cached apart from the real ones
    (``NAME.smoke-N``) and their card says ``"smoke_max_train_steps": N``.
    """
    if weights not in WEIGHTS:
        raise QBenchError(f"unknown weights {weights!r}; allowed: {', '.join(WEIGHTS)}")
    spec, key = model_spec(name), name
    run = spec  # the spec whose recipe is trained: a smoke run caps its steps
    if max_train_steps is not None:
        if max_train_steps < 1:
            raise ValueError(f"max_train_steps must be a positive step count, got "
                             f"{max_train_steps}")
        run = replace(spec, recipe=replace(spec.recipe, max_steps=max_train_steps))
        key = f"{name}.smoke-{max_train_steps}"
    model = initial_model(run)
    shipped = (shipped_card(spec) if weights == "shipped" and not retrain
               and max_train_steps is None else None)
    if shipped is not None:
        _load_state(model, key, shipped, SHIPPED_DIR)
        card = {**shipped, "weights_source": "shipped"}
    else:
        card = {**_trained_here(model, run, key, retrain=retrain, device=device,
                                progress=progress, data_root=data_root,
                                max_train_steps=max_train_steps),
                "weights_source": "trained"}
    # Cards written before a field existed are completed from the registration.
    card = {**_static_card(run, model), **card}
    return model.to(device).eval(), card


def initial_model(spec: ModelSpec) -> nn.Module:
    """The untrained network, initialised from the recipe's seed (global RNG left untouched)."""
    with torch.random.fork_rng():
        torch.manual_seed(spec.recipe.seed)
        return spec.factory()


def _trained_here(model: nn.Module, run: ModelSpec, key: str, *, retrain: bool, device: str,
                  progress: bool, data_root: str | None, max_train_steps: int | None,
                  root: Path | None = None) -> dict:
    """Load the weights of ``run``'s recipe cached in ``root`` (default: the cache) into
    ``model``, training them first when there are none (or ``retrain``); their card."""
    with model_lock(key, root):  # one process trains a model; the others wait, then load it
        card = None if retrain else read_card(key, root)
        if card is not None and card.get("recipe_id") == run.recipe_id:
            _load_state(model, key, card, root)
            return card
        data = load_dataset(run.dataset, data_root)
        summary = train_model(model, data, run.recipe, device=device, progress=progress,
                              desc=f"train {run.name}")
        smoke = {} if max_train_steps is None else {"smoke_max_train_steps": max_train_steps}
        card = save_weights(key, model.state_dict(), {
            **_static_card(run, model),
            **smoke,
            "trained_on": device,
            # weights depend on them: float reductions differ by thread count and by the
            # vector instruction set torch's kernels use
            "train_threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "torch": torch.__version__,
            "platform": platform.platform(),
            **summary,
        }, root)
        # Reload from disk so that a model is only ever used through verified weights.
        _load_state(model, key, card, root)
        return card


def train_into(name: str, root: Path, *, device: str = "cpu", progress: bool = True,
               data_root: str | None = None) -> tuple[nn.Module, dict]:
    """Train ``name`` from scratch into the folder ``root`` (not the cache): the trained
    model in eval mode and its card. For comparing a retrained model with the shipped one."""
    spec = model_spec(name)
    model = initial_model(spec)
    card = _trained_here(model, spec, name, retrain=True, device=device, progress=progress,
                         data_root=data_root, max_train_steps=None, root=root)
    return model.eval(), {**_static_card(spec, model), **card, "weights_source": "trained"}


def ship(name: str) -> dict:
    """Copy the weights trained here for ``name``'s current recipe into the shipped folder
    (for maintainers, before recomputing the model's records); the shipped card."""
    spec = model_spec(name)
    card = read_card(name)
    if card is None or card.get("recipe_id") != spec.recipe_id:
        raise QBenchError(f"{name} has no weights trained here for its current recipe: "
                          f"train it first (`python -m bench train {name} --retrain --ship`)")
    state = load_weights(name, card)
    card = {k: v for k, v in card.items() if k not in ("weights_sha256", "weights_source")}
    shipped = save_weights(name, state, card, SHIPPED_DIR)
    if shipped["weights_sha256"] != read_card(name)["weights_sha256"]:
        raise CorruptWeightsError(f"shipping {name} changed its bytes; nothing is shipped")
    return shipped


__all__ = ["WEIGHTS", "CorruptWeightsError", "ModelSpec", "get_model", "list_models",
           "model_card", "model_spec", "register_model", "ship", "weights_path"]
