"""Trained weights on disk: a safetensors file plus a JSON model card holding its sha256.

Two places hold them. :data:`SHIPPED_DIR` (``zoo/weights`` in the repository) holds the
weights every committed record was computed from: training on another CPU gives other
weights (float reductions differ with the vector instruction set and the thread count), so a
published number can only be checked against the very weights behind it. The cache
(:func:`weights_dir`) holds what was trained on this machine: models without shipped weights,
smoke runs and ``--retrain``.

A weights file is used only if its sha256 matches the card; anything else raises
:class:`CorruptWeightsError` with what to do. Nothing here ever silently retrains or deletes.

Writes are atomic (a unique temporary file in the same folder, fsync, rename; the card last,
so a card always describes complete weights), and :func:`model_lock` lets one process at a
time train and write a given model.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from results.errors import CorruptWeightsError


def cache_dir() -> Path:
    """Root of everything the harness caches: ``$QBENCH_CACHE`` or ``./.cache/qbench``."""
    return Path(os.environ.get("QBENCH_CACHE", Path.cwd() / ".cache" / "qbench"))


def weights_dir() -> Path:
    """Weights trained on this machine (see the module docstring)."""
    return cache_dir() / "weights"


#: The shipped weights: the repository's ``zoo/weights`` (installed with the package)
SHIPPED_DIR = Path(__file__).resolve().parent / "weights"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def paths_for(name: str, root: Path | None = None) -> tuple[Path, Path]:
    root = root or weights_dir()
    return root / f"{name}.safetensors", root / f"{name}.json"


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write ``path`` through a unique temporary file in its folder: write, fsync, rename.

    A reader sees the old file or the complete new one, never a partial file, and two writers
    never share a temporary file.
    """
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a crash
    finally:
        os.close(dir_fd)


@contextlib.contextmanager
def model_lock(name: str, root: Path | None = None) -> Iterator[None]:
    """Exclusive lock on one model's files (``NAME.lock`` next to the weights).

    Held while a model's card is checked and the model is trained and saved, so that of two
    processes asking for the same untrained model one trains and the other waits, then loads.
    A read-only cache (no lock file can be made) is used without the lock: it can only be
    read, and reading a complete, renamed file needs none.
    """
    wpath, _ = paths_for(name, root)
    folder, lock = wpath.parent, wpath.with_name(f"{name}.lock")
    if folder.exists() and not folder.is_dir():
        raise CorruptWeightsError(f"weights folder {folder} is a file, not a folder; move it "
                                  "away or point QBENCH_CACHE at another folder")
    _not_a_file(lock, "lock file", f"Remove it (`rmdir {lock}`); it is made again as needed.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        f = open(lock, "a")  # noqa: SIM115 - closed below
    except OSError as exc:
        if not _read_only(folder):
            raise CorruptWeightsError(f"weights folder {folder} cannot be written "
                                      f"({exc.strerror}); point QBENCH_CACHE at a folder "
                                      "you can write to") from None
        f = None
    if f is None:  # a read-only cache: nothing can be written, so there is nothing to lock
        yield
        return
    with f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _read_only(folder: Path) -> bool:
    return folder.is_dir() and not os.access(folder, os.W_OK)


def save_weights(name: str, state: dict[str, torch.Tensor], card: dict, root: Path | None = None
                 ) -> dict:
    """Write weights, then the card, atomically; returns the card with ``weights_sha256``."""
    wpath, cpath = paths_for(name, root)
    wpath.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    sha: list[str] = []

    def write_weights(tmp: Path) -> None:
        save_file(tensors, str(tmp))
        sha.append(file_sha256(tmp))

    _atomic_write(wpath, write_weights)
    card = {**card, "weights_sha256": sha[0]}
    text = json.dumps(card, indent=2, sort_keys=True)
    _atomic_write(cpath, lambda tmp: tmp.write_text(text))
    return card


def _not_a_file(path: Path, what: str, fix: str) -> None:
    """Raise CorruptWeightsError when something other than a regular file stands at ``path``."""
    if path.exists() and not path.is_file():
        kind = "a directory" if path.is_dir() else "not a regular file"
        raise CorruptWeightsError(f"{what} {path} is {kind}, not a file. {fix}")


def read_card(name: str, root: Path | None = None) -> dict | None:
    """The model card, or None when the model was never trained here."""
    wpath, cpath = paths_for(name, root)
    fix = _what_to_do(name, root)
    if not cpath.exists():
        return None
    _not_a_file(cpath, "model card", fix)
    try:
        card = json.loads(cpath.read_text())
        if not isinstance(card, dict) or "weights_sha256" not in card:
            raise ValueError("no weights_sha256 field")
        acc = card.get("clean_acc")
        if acc is not None and (isinstance(acc, bool) or not isinstance(acc, int | float)
                                or not 0 <= acc <= 1):
            raise ValueError(f"clean_acc is {acc!r}, not a fraction in [0, 1]")
    except (ValueError, OSError) as exc:
        raise CorruptWeightsError(f"model card {cpath} is unreadable ({exc}). {fix}") from None
    return card


def _what_to_do(name: str, root: Path | None) -> str:
    """The way out of a bad weights file or card: shipped ones are restored, cached retrained."""
    wpath, cpath = paths_for(name, root)
    if root == SHIPPED_DIR:
        return (f"These are shipped weights: restore them with `git checkout -- {wpath} "
                f"{cpath}`.")
    return f"Retrain with `python -m bench train {name} --retrain` (or delete {wpath} and {cpath})."


def load_weights(name: str, card: dict, root: Path | None = None) -> dict[str, torch.Tensor]:
    """Load weights, verifying the sha256 recorded in the card."""
    wpath, _ = paths_for(name, root)
    fix = _what_to_do(name, root)
    if not wpath.exists():
        raise CorruptWeightsError(f"weights file {wpath} is missing but its card exists. {fix}")
    _not_a_file(wpath, "weights file", fix)
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
