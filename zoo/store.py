"""Trained weights on disk: a safetensors file plus a JSON model card holding its sha256.

A weights file is used only if its sha256 matches the card; anything else raises
:class:`CorruptWeightsError` with what to do. Nothing here ever silently retrains or deletes.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from zoo.errors import CorruptWeightsError


def cache_dir() -> Path:
    """Root of everything the harness caches: ``$QBENCH_CACHE`` or ``./.cache/qbench``."""
    return Path(os.environ.get("QBENCH_CACHE", Path.cwd() / ".cache" / "qbench"))


def weights_dir() -> Path:
    return cache_dir() / "weights"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def paths_for(name: str, root: Path | None = None) -> tuple[Path, Path]:
    root = root or weights_dir()
    return root / f"{name}.safetensors", root / f"{name}.json"


def save_weights(name: str, state: dict[str, torch.Tensor], card: dict, root: Path | None = None
                 ) -> dict:
    """Write weights and card atomically; returns the card with ``weights_sha256`` filled in."""
    wpath, cpath = paths_for(name, root)
    wpath.parent.mkdir(parents=True, exist_ok=True)
    tmp = wpath.with_suffix(".safetensors.tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(tmp))
    os.replace(tmp, wpath)
    card = {**card, "weights_sha256": file_sha256(wpath)}
    tmpc = cpath.with_suffix(".json.tmp")
    tmpc.write_text(json.dumps(card, indent=2, sort_keys=True))
    os.replace(tmpc, cpath)
    return card


def read_card(name: str, root: Path | None = None) -> dict | None:
    """The model card, or None when the model was never trained here."""
    wpath, cpath = paths_for(name, root)
    if not cpath.exists():
        return None
    try:
        card = json.loads(cpath.read_text())
        if not isinstance(card, dict) or "weights_sha256" not in card:
            raise ValueError("no weights_sha256 field")
    except ValueError as exc:
        raise CorruptWeightsError(
            f"model card {cpath} is unreadable ({exc}). Delete {cpath} and {wpath}, or "
            f"retrain with `python -m bench train {name} --retrain`."
        ) from None
    return card


def load_weights(name: str, card: dict, root: Path | None = None) -> dict[str, torch.Tensor]:
    """Load weights, verifying the sha256 recorded in the card."""
    wpath, _ = paths_for(name, root)
    fix = f"Retrain with `python -m bench train {name} --retrain` (or delete {wpath})."
    if not wpath.exists():
        raise CorruptWeightsError(f"weights file {wpath} is missing but its card exists. {fix}")
    actual = file_sha256(wpath)
    if actual != card["weights_sha256"]:
        raise CorruptWeightsError(
            f"weights file {wpath} is corrupt: sha256 {actual[:12]}… does not match the "
            f"recorded {card['weights_sha256'][:12]}…. {fix}"
        )
    try:
        return load_file(str(wpath))
    except (SafetensorError, OSError) as exc:
        raise CorruptWeightsError(f"weights file {wpath} cannot be parsed ({exc}). {fix}") from None
