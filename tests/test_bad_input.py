"""The bad-input table: every case is refused with ONE line saying what is wrong and what is
allowed (exit code 2 on the command line, a named QBenchError subclass from the Python API),
and no records file changes (every file of the records folder is hashed before and after).

The README's "Bad input" section lists these cases and their messages.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import bench
import zoo
from bench.cli import main
from results.errors import (
    BadEpsilonError,
    BadModelError,
    CorruptDataError,
    EmptyPatternError,
    QBenchError,
    UnknownNameError,
)
from results.store import RECORDS_DIR
from zoo import store

ROOT = Path(__file__).resolve().parents[1]
DIGITS = "digits-mlp5x100-ref"
RUN = ["run", "--models", DIGITS, "--attacks", "fgsm", "--eps", "0.1", "--n", "20"]


def _hashes(*folders: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for folder in folders for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def records(tmp_path) -> Path:
    """A records folder seeded with copies of a few committed records (cells and a model)."""
    root = tmp_path / "records"
    root.mkdir()
    for name, lines in (("mnist5k.cells.jsonl", 3), ("mnist5k.models.jsonl", 1)):
        with open(RECORDS_DIR / name, encoding="utf-8") as f:
            head = [next(f) for _ in range(lines)]
        (root / name).write_text("".join(head), encoding="utf-8")
    return root


# ---------------------------------------------------------------------------------------
# Files the cases read: IDX files (MNIST), CIFAR-10 batches, weights and cards, records.


def _idx(arr: np.ndarray, *, little_endian: bool = False) -> bytes:
    code = {np.dtype("u1"): 0x08, np.dtype("i1"): 0x09}[arr.dtype]
    dims = struct.pack(("<" if little_endian else ">") + "I" * arr.ndim, *arr.shape)
    return bytes([0, 0, code, arr.ndim]) + dims + arr.tobytes()


def _mnist_files(root: Path, n: int = 30) -> Path:
    """Four valid, tiny MNIST IDX files (gzipped) in ``root/MNIST/raw``."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split in ("train", "t10k"):
        (raw / f"{split}-images-idx3-ubyte.gz").write_bytes(gzip.compress(
            _idx(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))))
        (raw / f"{split}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(
            _idx(rng.integers(0, 10, (n,), dtype=np.uint8))))
    return raw


def _gz(data: bytes) -> bytes:
    return gzip.compress(data)


IMAGES = "t10k-images-idx3-ubyte.gz"
LABELS = "t10k-labels-idx1-ubyte.gz"
_rng = np.random.default_rng(1)
_IMG = _rng.integers(0, 256, (30, 28, 28), dtype=np.uint8)
_LAB = _rng.integers(0, 10, (30,), dtype=np.uint8)

#: (file, bytes that replace it, message)
IDX_CASES = {
    "idx-bad-magic": (IMAGES, _gz(b"\x01\x02\x08\x03" + _IMG.tobytes()), "bad magic number"),
    "idx-truncated-header": (IMAGES, _gz(b"\x00\x00\x08\x03\x00\x00"), "is truncated"),
    "idx-truncated-data": (IMAGES, _gz(_idx(_IMG)[:-100]), "is truncated"),
    "idx-extra-bytes": (IMAGES, _gz(_idx(_IMG) + b"\x00" * 7), "7 bytes too many"),
    "idx-little-endian": (IMAGES, _gz(_idx(_IMG, little_endian=True)), "little-endian"),
    "idx-unknown-type": (IMAGES, _gz(b"\x00\x00\x07\x03" + _idx(_IMG)[4:]),
                         "unknown IDX type code 0x07"),
    "idx-wrong-image-size": (IMAGES, _gz(_idx(_IMG.reshape(30, 14, 56))),
                             "images must be (N, 28, 28)"),
    "idx-pixels-outside-0-255": (IMAGES, _gz(_idx(-_IMG[:, :, :].astype(np.int8) - 1)),
                                 "outside 0-255"),
    "idx-label-count": (LABELS, _gz(_idx(_LAB[:29])), "one label per image"),
    "idx-labels-out-of-range": (LABELS, _gz(_idx(_LAB + 10)), "labels outside 0-9"),
    "idx-not-gzip": (LABELS, b"this is not gzip data", "cannot be read as an IDX file"),
}


@pytest.mark.parametrize("case", sorted(IDX_CASES))
def test_corrupt_idx_file_is_one_line_naming_the_file(case, tmp_path, records, capsys):
    raw = _mnist_files(tmp_path / "data")
    fname, blob, message = IDX_CASES[case]
    (raw / fname).write_bytes(blob)
    before = _hashes(records, RECORDS_DIR)
    code = main(["run", "--models", "mnist-mlp5x100-ref", "--attacks", "fgsm", "--eps", "0.1",
                 "--n", "10", "--data-root", str(tmp_path / "data"), "--results", str(records)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err and str(raw / fname) in err, err
    assert _hashes(records, RECORDS_DIR) == before


@pytest.mark.parametrize("missing", ["every-file", "one-file"])
def test_missing_data_files_are_one_line(missing, tmp_path, records, capsys, monkeypatch):
    import torchvision

    def offline(self):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", offline)  # no network here
    root = tmp_path / "data"
    if missing == "one-file":
        (_mnist_files(root) / LABELS).unlink()
    code, err = _run_cli(["run", "--models", "mnist-mlp5x100-ref", "--attacks", "fgsm", "--eps",
                          "0.1", "--n", "10", "--data-root", str(root)], records, capsys)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert f"dataset 'mnist' is not under {root}" in err and "--data-root" in err, err


def test_valid_idx_files_load(tmp_path):
    """The files the IDX cases corrupt are valid as written (so each case tests one fault)."""
    raw = _mnist_files(tmp_path)
    data = zoo.data._mnist(tmp_path)
    assert data.test_x.shape == (30, 1, 28, 28) and float(data.test_x.min()) >= 0
    assert float(data.test_x.max()) <= 1
    labels = zoo.data.read_idx(raw / LABELS)
    assert data.test_y.tolist() == labels.astype(np.int64).tolist()


# ---------------------------------------------------------------------------------------
# CIFAR-10 batches are untrusted pickles.


class _Exploit:
    """A pickle that, loaded with plain ``pickle.load``, creates a file."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def _cifar_batches(root: Path) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for fname in [*zoo.data.CIFAR10_TRAIN_BATCHES, "test_batch"]:
        with open(folder / fname, "wb") as f:
            pickle.dump({"batch_label": fname,
                         "data": rng.integers(0, 256, (4, 3072), dtype=np.uint8),
                         "labels": [0, 1, 2, 3], "filenames": ["a.png"] * 4}, f, protocol=2)
    return folder


def test_a_crafted_cifar_pickle_is_refused_without_running_code(tmp_path, records, capsys):
    folder = _cifar_batches(tmp_path / "data")
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"data": _Exploit(marker), "labels": []}, protocol=2)
    pickle.loads(payload)  # what plain unpickling would do: run the payload
    assert marker.exists()
    marker.unlink()
    (folder / "data_batch_2").write_bytes(payload)
    before = _hashes(records, RECORDS_DIR)
    code = main(["run", "--models", "cifar10-vgg16-ref", "--attacks", "fgsm", "--eps", "0.1",
                 "--n", "2", "--data-root", str(tmp_path / "data"), "--results", str(records)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "data_batch_2" in err and "refused to load posix.system" in err, err
    assert not marker.exists()
    assert _hashes(records, RECORDS_DIR) == before


def test_cifar_batches_written_by_python2_numpy_still_load(tmp_path):
    """The official files are protocol-2 pickles naming ``numpy.core.multiarray``."""
    folder = _cifar_batches(tmp_path)
    for f in folder.iterdir():
        blob = f.read_bytes().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
        assert b"numpy.core.multiarray" in blob
        f.write_bytes(blob)
    with pytest.warns(UserWarning, match="differ from the official"):
        data = zoo.data.load_cifar_batches("cifar10", folder)
    assert data is not None and data.train_x.shape == (20, 3, 32, 32)
    assert data.test_y.tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize(("blob", "message"), [
    (b"not a pickle", "is not a CIFAR-10 batch"),
    (pickle.dumps([1, 2, 3], protocol=2), "not a dict"),
    (pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 12]}, protocol=2),
     "labels outside 0-9"),
    (pickle.dumps({"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]}, protocol=2),
     "expected (N, 3072) uint8"),
], ids=["garbage", "not-a-dict", "labels-out-of-range", "wrong-shape"])
def test_corrupt_cifar_batch_is_one_line(blob, message, tmp_path):
    folder = _cifar_batches(tmp_path)
    (folder / "test_batch").write_bytes(blob)
    with pytest.raises(CorruptDataError) as err:
        zoo.data.load_cifar_batches("cifar10", folder)
    msg = str(err.value)
    assert message in msg and "test_batch" in msg and "\n" not in msg


# ---------------------------------------------------------------------------------------
# The command line: names, patterns, ε, n, device, weights, cards, records.

#: (argv, message); ``run`` and ``board`` get ``--results <seeded records>``.
CLI_CASES = {
    "model-matches-nothing": (["run", "--models", "nosuch-*", "--attacks", "fgsm"],
                              "unknown model 'nosuch-*'"),
    "models-comma": (["run", "--models", ",", "--attacks", "fgsm"],
                     "empty model pattern ','"),
    "models-empty": (["run", "--models", "", "--attacks", "fgsm"], "empty model pattern ''"),
    "suite-models-empty": (["run", "--suite", "digits", "--models", ""],
                           "empty model pattern ''"),
    "attacks-comma": (["run", "--models", DIGITS, "--attacks", ","],
                      "empty attack pattern ','"),
    "attacks-empty": (["run", "--models", DIGITS, "--attacks", ""], "empty attack pattern ''"),
    "attack-matches-nothing": (["run", "--models", DIGITS, "--attacks", "pgd-linff"],
                               "Did you mean: pgd-linf"),
    "eps-empty": ([*RUN[:5], "--eps", ""], "holds no value"),
    "eps-comma": ([*RUN[:5], "--eps", ","], "holds no value"),
    "eps-norm-without-value": ([*RUN[:5], "--eps", "linf="], "holds no value"),
    "eps-empty-between-commas": ([*RUN[:5], "--eps", "0.1,,0.3"], "empty value"),
    "eps-not-a-number": ([*RUN[:5], "--eps", "abc"], "not a number"),
    "eps-division-by-zero": ([*RUN[:5], "--eps", "1/0"], "not a number"),
    "eps-negative": ([*RUN[:5], "--eps", "-1"], "out of range for the linf norm"),
    "eps-nan": ([*RUN[:5], "--eps", "nan"], "finite number"),
    "eps-inf": ([*RUN[:5], "--eps", "inf"], "finite number"),
    "eps-too-large": ([*RUN[:5], "--eps", "1.5"], "in [0, 1]"),
    "eps-unknown-norm": ([*RUN[:5], "--eps", "l3=1"], "unknown norm 'l3'"),
    "eps-no-value-for-norm": ([*RUN[:5], "--eps", "l2=1.5"], "no ε given for the linf norm"),
    "eps-duplicate": ([*RUN[:5], "--eps", "0.1", "0.1"], "given twice for the linf norm"),
    "eps-duplicate-forms": ([*RUN[:5], "--eps", "8/255", "linf=0.03137254901960784"],
                            "given twice for the linf norm"),
    "n-zero": ([*RUN, "--n", "0"], "n must be between 1 and 300"),
    "n-negative": ([*RUN, "--n", "-5"], "n must be between 1 and 300"),
    "n-too-large": ([*RUN, "--n", "301"], "n must be between 1 and 300"),
    "suite-unknown": (["run", "--suite", "nope"], "unknown suite"),
    "device-unknown": ([*RUN, "--device", "tpu"], "unknown device 'tpu'; allowed"),
    "max-train-steps-zero": ([*RUN, "--max-train-steps", "0"], "positive step count"),
    "jobs-zero": ([*RUN, "--jobs", "0"], "--jobs must be a positive number of processes"),
    "jobs-with-ray": ([*RUN, "--jobs", "2", "--executor", "ray"],
                      "--jobs 2 runs local processes; with --executor ray use"),
    "board-unknown-suite": (["board", "--suite", "digits"], "no records for suite 'digits'"),
    "board-eps-empty": (["board", "--suite", "mnist5k", "--eps", ""], "holds no value"),
    "board-eps-two": (["board", "--suite", "mnist5k", "--eps", "0.1,0.3"],
                      "a board shows one threat model, so give one ε (got 2)"),
    "board-eps-norm-token": (["board", "--suite", "mnist5k", "--eps", "l2=1.5"],
                             "choose the norm with --norm (e.g. --norm l2 --eps 1.5)"),
    "board-eps-out-of-range": (["board", "--suite", "mnist5k", "--eps", "2"],
                               "out of range for the linf norm"),
    "board-attacks-match-nothing": (["board", "--suite", "mnist5k", "--attacks", "nosuch"],
                                    "unknown attack 'nosuch'"),
    "board-attacks-typo": (["board", "--suite", "mnist5k", "--attacks", "fgsm,fgsn"],
                           "Did you mean: fgsm"),
    "results-empty": ([*RUN, "--results", ""], "--results '' names no folder"),
    "results-blank": ([*RUN, "--results", "  "], "--results '  ' names no folder"),
    "ray-address-with-local-executor": ([*RUN, "--ray-address", "127.0.0.1:6379"],
                                        "--ray-address 127.0.0.1:6379 sizes Ray tasks and takes "
                                        "effect with --executor ray only"),
    "threads-per-task-with-local-executor": ([*RUN, "--threads-per-task", "0"],
                                             "--threads-per-task 0 sizes Ray tasks"),
    "gpus-per-task-with-local-executor": ([*RUN, "--gpus-per-task", "-1"],
                                          "--gpus-per-task -1.0 sizes Ray tasks"),
    "threads-per-task-zero": ([*RUN, "--executor", "ray", "--threads-per-task", "0"],
                              "--threads-per-task must be a positive number of CPU threads"),
    "gpus-per-task-negative": ([*RUN, "--executor", "ray", "--gpus-per-task", "-1"],
                               "--gpus-per-task must be a number of GPUs ≥ 0"),
    "gpus-per-task-nan": ([*RUN, "--executor", "ray", "--gpus-per-task", "nan"],
                          "--gpus-per-task must be a number of GPUs ≥ 0"),
    # an address where no cluster can be is refused at once (ray.init waited until killed)
    "ray-address-bad-port": ([*RUN, "--executor", "ray", "--ray-address", "garbage:99999"],
                             "is not HOST:PORT with a port from 1 to 65535"),
    "ray-address-no-port": ([*RUN, "--executor", "ray", "--ray-address", "headnode"],
                            "is not HOST:PORT"),
    "ray-address-nothing-listens": ([*RUN, "--executor", "ray", "--ray-address", "127.0.0.1:1"],
                                    "cannot reach a Ray cluster at '127.0.0.1:1': nothing "
                                    "accepts a connection there"),
    # an attack that applies to none of the selected models used to run nothing, exit 0
    "attack-applies-to-no-model": (["run", "--models", DIGITS, "--attacks", "iprop,milp-linf",
                                    "--eps", "0.1", "--n", "20"],
                                   "iprop applies to models with arch mlp*, quant bnn-waq"),
    "train-models-empty": (["train", ""], "empty model pattern ''"),
    "train-models-comma": (["train", " , "], "empty model pattern ' , '"),
    "train-unknown": (["train", "digits-mlp5x100-rf"], "Did you mean: digits-mlp5x100-ref"),
    "show-unknown": (["show", "cifar10-mlp"], "unknown model"),
    "train-check-and-ship": (["train", DIGITS, "--check", "--ship"],
                             "cannot be combined with --retrain or --ship"),
}
if not torch.cuda.is_available():
    CLI_CASES["device-cuda-without-gpu"] = ([*RUN, "--device", "cuda"], "no CUDA GPU")


def _run_cli(argv: list[str], records: Path, capsys) -> tuple[int, str]:
    if argv[0] in ("run", "board") and "--results" not in argv:
        argv = [*argv, "--results", str(records)]
    before = _hashes(records, RECORDS_DIR)
    code = main(argv)
    out = capsys.readouterr()
    assert _hashes(records, RECORDS_DIR) == before, "a records file changed"
    assert out.out == "", out.out
    return code, out.err


def test_retrain_without_results_folder_is_refused(capsys):
    """Weights trained here are not the shipped ones: their cells never reach the records."""
    before = _hashes(RECORDS_DIR)
    assert main([*RUN, "--retrain"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --retrain") and "--results DIR" in err, err
    assert _hashes(RECORDS_DIR) == before


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_cli_bad_input_is_one_line_and_exit_2(case, records, capsys):
    argv, message = CLI_CASES[case]
    code, err = _run_cli(argv, records, capsys)
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err, err


@pytest.fixture
def shipped_copy(tmp_path, monkeypatch) -> tuple[Path, Path]:
    """The zoo's shipped folder replaced by a copy holding the digits model's weights and card."""
    from zoo import registry

    folder = tmp_path / "shipped"
    folder.mkdir()
    src_w, src_c = store.paths_for(DIGITS, registry.SHIPPED_DIR)
    wpath, cpath = folder / src_w.name, folder / src_c.name
    shutil.copy(src_w, wpath)
    shutil.copy(src_c, cpath)
    monkeypatch.setattr(registry, "SHIPPED_DIR", folder)
    monkeypatch.setattr(store, "SHIPPED_DIR", folder)
    monkeypatch.setenv("QBENCH_CACHE", str(tmp_path / "cache"))
    return wpath, cpath


def _flip_byte(path: Path) -> None:
    blob = bytearray(path.read_bytes())
    blob[-5] ^= 0xFF
    path.write_bytes(bytes(blob))


WEIGHT_CASES = {
    "weights-flipped-byte": (lambda w, c: _flip_byte(w), ["train", DIGITS],
                             "sha256"),
    "weights-missing": (lambda w, c: w.unlink(), ["train", DIGITS], "is missing"),
    "card-not-json": (lambda w, c: c.write_text("{not json"), ["train", DIGITS],
                      "unreadable"),
    "card-invalid-utf8": (lambda w, c: c.write_bytes(b"\xff\xfe{"), ["show", DIGITS],
                          "unreadable"),
    "card-without-sha": (lambda w, c: c.write_text('{"recipe_id": "x"}'), ["show", DIGITS],
                         "no weights_sha256"),
    "weights-a-directory": (lambda w, c: (w.unlink(), w.mkdir()), ["train", DIGITS],
                            "is a directory, not a file"),
    "card-a-directory": (lambda w, c: (c.unlink(), c.mkdir()), ["show", DIGITS],
                         "is a directory, not a file"),
    "card-clean-acc-a-string": (
        lambda w, c: c.write_text(c.read_text().replace('"clean_acc": ', '"clean_acc": "x", '
                                                        '"_was": ')), ["show", DIGITS],
        "clean_acc is 'x', not a fraction in [0, 1]"),
    # a run stops with the one line too: a file problem is not the model's (no error cells)
    "run-with-flipped-weights": (lambda w, c: _flip_byte(w), RUN, "sha256"),
}


@pytest.mark.parametrize("case", list(WEIGHT_CASES))
def test_corrupt_weights_and_cards_are_one_line(case, shipped_copy, records, capsys):
    corrupt, argv, message = WEIGHT_CASES[case]
    wpath, cpath = shipped_copy
    assert main(["train", DIGITS]) == 0  # the copy is valid as made
    capsys.readouterr()
    corrupt(wpath, cpath)
    weights = {p: p.read_bytes() for p in (wpath, cpath) if p.is_file()}
    code, err = _run_cli([*argv, "--no-progress"] if argv[0] == "run" else argv, records,
                         capsys)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err and "git checkout --" in err, err
    assert {p: p.read_bytes() for p in (wpath, cpath) if p.is_file()} == weights


def test_weights_that_do_not_fit_the_architecture_are_one_line(shipped_copy, records, capsys):
    from safetensors.torch import save_file

    wpath, cpath = shipped_copy
    save_file({"nonsense": torch.zeros(3)}, str(wpath))
    card = cpath.read_text().replace(
        json.loads(cpath.read_text())["weights_sha256"], store.file_sha256(wpath))
    cpath.write_text(card)
    code, err = _run_cli(["train", DIGITS], records, capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert "does not fit its architecture" in err and "git checkout" in err, err


# ---------------------------------------------------------------------------------------
# Records files: a corrupt line stops the run before anything runs or is written.

RECORD_CASES = {
    "records-not-json": b"{not json\n",
    "records-wrong-schema": b'{"suite": "digits"}\n',
    "records-not-an-object": b"[1, 2]\n",
}


def _corrupt_records(records: Path, bad_line: bytes) -> None:
    first = (records / "mnist5k.cells.jsonl").read_bytes().splitlines(keepends=True)[0]
    (records / "mnist5k.cells.jsonl").write_bytes(first + bad_line + first)


@pytest.mark.parametrize("case", list(RECORD_CASES))
@pytest.mark.parametrize("command", ["run", "board"])
def test_corrupt_records_line_is_one_line(case, command, records, capsys):
    _corrupt_records(records, RECORD_CASES[case])
    argv = (["run", "--suite", "mnist5k", "--models", "mnist5k-mlp5x100-ref", "--attacks",
             "fgsm", "--eps", "0.1", "--n", "10"] if command == "run"
            else ["board", "--suite", "mnist5k"])
    code, err = _run_cli(argv, records, capsys)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert "mnist5k.cells.jsonl, line 2" in err, err


def test_invalid_utf8_in_records_is_one_line(records, capsys):
    _corrupt_records(records, b'{"suite": "\xff\xfe"}\n')
    code, err = _run_cli(["board", "--suite", "mnist5k"], records, capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert "mnist5k.cells.jsonl, line 2" in err, err


# ---------------------------------------------------------------------------------------
# The Python API: bench.evaluate with a user's model.


class _Wrong(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.lin = nn.Linear(64, 10)
        self.fn = fn

    def forward(self, x):
        return self.fn(self.lin(x.flatten(1)), x)


API_CASES = {
    "model-wrong-shape": (dict(model=_Wrong(lambda z, x: z[:, :7])), BadModelError,
                          "it must return one logit per class, shape (20, 10)"),
    "model-transposed": (dict(model=_Wrong(lambda z, x: z.t())), BadModelError, "(10, 20)"),
    "model-nan-logits": (dict(model=_Wrong(lambda z, x: z * float("nan"))), BadModelError,
                         "NaN or infinite logits for 20 of 20"),
    "model-inf-logits": (dict(model=_Wrong(
        lambda z, x: z.index_fill(0, torch.tensor([3]), float("inf")))),
        BadModelError, "infinite logits for 1 of 20 test inputs; it must return finite"),
    "model-fails-on-input": (dict(model=nn.Sequential(nn.Flatten(), nn.Linear(784, 10))),
                             BadModelError, "the model fails on inputs of shape (20, 1, 8, 8)"),
    "api-attacks-empty": (dict(attacks=[]), EmptyPatternError, "empty attack pattern"),
    "api-attack-unknown": (dict(attacks="nosuch"), UnknownNameError, "unknown attack"),
    "api-eps-unknown-norm": (dict(eps={"l3": [0.1]}), BadEpsilonError, "unknown norm 'l3'"),
    "api-eps-not-a-number": (dict(eps="abc"), BadEpsilonError, "ε must be a number"),
    "api-eps-duplicate": (dict(eps=[0.1, 0.1]), BadEpsilonError, "given twice"),
    "api-eps-empty": (dict(eps=[]), BadEpsilonError, "gives no value"),
    "api-n-zero": (dict(n=0), QBenchError, "n must be between 1 and 300"),
    "api-unknown-device": (dict(device="tpu"), QBenchError, "unknown device 'tpu'"),
    "api-unknown-dataset": (dict(dataset="digitz"), UnknownNameError, "unknown dataset"),
    # wrong types: a named error, never a raw TypeError from deep inside
    "api-eps-none": (dict(eps=None), BadEpsilonError, "eps must be a number, a list"),
    "api-eps-bool": (dict(eps=True), BadEpsilonError, "got True"),
    "api-eps-list-of-none": (dict(eps=[0.1, None]), BadEpsilonError, "got [0.1, None]"),
    "api-n-str": (dict(n="20"), QBenchError, "n must be a whole number (int), got '20' (str)"),
    "api-n-float": (dict(n=20.0), QBenchError, "got 20.0 (float)"),
    "api-n-bool": (dict(n=True), QBenchError, "got True (bool)"),
    "api-seed-str": (dict(seed="abc"), QBenchError, "seed must be a whole number"),
    "api-attacks-none": (dict(attacks=None), QBenchError, "attacks must be a name or wildcard"),
    "api-attacks-list-of-int": (dict(attacks=[1]), QBenchError, "got [1]"),
    "api-dataset-none": (dict(dataset=None), QBenchError, "dataset must be the name of a "
                         "registered dataset"),
    "model-plain-function": (dict(model=lambda x: x), BadModelError,
                             "model must be a torch.nn.Module"),
    "model-int64-logits": (dict(model=_Wrong(lambda z, x: (100 * z).long())), BadModelError,
                           "returns torch.int64 logits; it must return floating-point"),
    "model-ignores-input": (dict(model=_Wrong(lambda z, x: z[:1].expand(len(x), 10) * 0 + 1)),
                            BadModelError, "same logits for all 20 test inputs"),
    "model-writes-into-input": (dict(model=_Wrong(lambda z, x: (x.mul_(0.5), z)[1])),
                                BadModelError, "writes into its input tensor"),
}


@pytest.mark.parametrize("case", list(API_CASES))
def test_evaluate_bad_input_raises_a_named_error(case, records):
    kwargs, error, message = API_CASES[case]
    args = dict(model=_Wrong(lambda z, x: z), dataset="digits", attacks="fgsm", eps=0.1, n=20,
                device="cpu")
    args.update(kwargs)
    before = _hashes(records, RECORDS_DIR)
    with pytest.raises(error) as err:
        bench.evaluate(args.pop("model"), **args)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert _hashes(records, RECORDS_DIR) == before


def test_a_model_writing_into_its_input_leaves_the_dataset_as_it_was():
    data = zoo.load_dataset("digits")
    before = data.test_x.clone()
    with pytest.raises(BadModelError, match="writes into its input"):
        bench.evaluate(_Wrong(lambda z, x: (x.mul_(0.5), z)[1]), dataset="digits",
                       attacks="fgsm", eps=0.1, n=20, device="cpu")
    assert torch.equal(zoo.load_dataset("digits").test_x, before)


def test_evaluate_accepts_the_good_model_of_the_table():
    """The base model of the API cases is valid: each case breaks exactly one thing."""
    torch.manual_seed(0)
    df = bench.evaluate(_Wrong(lambda z, x: z), dataset="digits", attacks="fgsm", eps=0.1,
                        n=20, device="cpu")
    assert len(df) == 1 and df["status"].tolist() == ["ok"]


# ---------------------------------------------------------------------------------------
# The site builder deletes stale pages only in a folder it created.


def test_site_builder_refuses_a_folder_it_did_not_create(tmp_path, records):
    import subprocess
    import sys

    out = tmp_path / "mine"
    out.mkdir()
    (out / "board-notes.html").write_text("my own page")
    (out / "img").mkdir()
    (out / "img" / "photo.png").write_bytes(b"png")
    before = _hashes(out, records, RECORDS_DIR)
    proc = subprocess.run([sys.executable, "-m", "leaderboard", "--records", str(records),
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert "not empty and was not created by the site builder" in proc.stderr
    assert _hashes(out, records, RECORDS_DIR) == before
    assert sorted(p.name for p in out.rglob("*")) == ["board-notes.html", "img", "photo.png"]


def test_site_builder_claims_new_and_empty_folders_and_cleans_only_its_own(tmp_path):
    from leaderboard.build import MARKER, SiteFolderError, build_site

    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "no-records").mkdir()  # an empty records folder (a missing one is refused)
    for out in (tmp_path / "new" / "site", empty):
        build_site(tmp_path / "no-records", out)
        assert (out / MARKER).is_file() and (out / "index.html").is_file()
        (out / "board-stale.html").write_text("a page of an earlier build")
        build_site(tmp_path / "no-records", out)  # its own folder: stale pages go
        assert not (out / "board-stale.html").exists()
    with pytest.raises(SiteFolderError, match="is a file"):
        build_site(tmp_path / "no-records", empty / "index.html")


def test_minus_zero_is_the_same_eps_as_zero(tmp_path, capsys):
    """`--eps -0` is ε = 0, the same cell as `--eps 0` (it was a second cell with its own key)."""
    root = str(tmp_path / "rec")
    assert main([*RUN[:5], "--eps", "-0", "--n", "5", "--results", root, "--no-progress"]) == 0
    assert main([*RUN[:5], "--eps", "0", "--n", "5", "--results", root, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "0 cells run, 1 already recorded" in out, out
    (line,) = (tmp_path / "rec" / "custom.cells.jsonl").read_text().splitlines()
    assert json.loads(line)["eps"] == 0 and '"eps": -0' not in line


def _folder_is_a_file(tmp: Path) -> Path:
    (tmp / "f").write_text("not a folder")
    return tmp / "f"


def _under_a_file(tmp: Path) -> Path:
    return _folder_is_a_file(tmp) / "sub"


def _records_file_is(kind: str, name: str = "custom.cells.jsonl"):
    def make(tmp: Path) -> Path:
        (tmp / "rec").mkdir()
        path = tmp / "rec" / name
        path.mkdir() if kind == "dir" else os.mkfifo(path)
        return tmp / "rec"
    return make


#: a records folder that is not what it should be: (make it, what the one line says)
FOLDER_CASES = {
    "folder-is-a-file": (_folder_is_a_file, "is a regular file, not a folder"),
    "folder-is-dev-null": (lambda tmp: Path("/dev/null"), "is a character device, not a folder"),
    "folder-under-a-file": (_under_a_file, "cannot be created (Not a directory)"),
    "folder-in-proc": (lambda tmp: Path("/proc/qbench-records"), "cannot be created"),
    "cells-file-is-a-dir": (_records_file_is("dir"), "custom.cells.jsonl is a directory"),
    "lock-file-is-a-dir": (_records_file_is("dir", "custom.cells.jsonl.lock"),
                           "custom.cells.jsonl.lock is a directory"),
    "models-file-is-a-dir": (_records_file_is("dir", "custom.models.jsonl"),
                             "custom.models.jsonl is a directory"),
    "cells-file-is-a-fifo": (_records_file_is("fifo"), "is a FIFO (named pipe), not a regular"),
    "claims-is-a-file": (lambda tmp: (tmp / ".claims").write_text("x") and tmp,
                         ".claims (where a run marks the cells it computes) is a regular file"),
}


@pytest.mark.slow
@pytest.mark.parametrize("command", ["run", "board"])
@pytest.mark.parametrize("case", list(FOLDER_CASES))
def test_an_unusable_records_folder_is_one_line_and_exit_2(case, command, tmp_path):
    """In a subprocess with a time limit: a FIFO used to block the run (and the board) forever."""
    make, message = FOLDER_CASES[case]
    folder = make(tmp_path)
    argv = ([*RUN, "--no-progress"] if command == "run" else ["board", "--suite", "custom"])
    done = subprocess.run([sys.executable, "-m", "bench", *argv, "--results", str(folder)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    if command == "board" and ((case.startswith("folder-") and "a regular file" not in message
                                and "device" not in message) or case == "claims-is-a-file"):
        message = "no records for suite 'custom'"  # nothing to read there: nothing to show
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    assert message in done.stderr, done.stderr
    assert done.stdout == ""


@contextlib.contextmanager
def small_disk(tmp_path: Path, size: str) -> Iterator[Path]:
    """A folder on a tmpfs of ``size`` (e.g. "16k") for the test's duration; the test is
    skipped where tmpfs cannot be mounted (not root)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)],
                           capture_output=True, text=True, check=False)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mount.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=False)


@pytest.mark.slow
def test_a_full_disk_ends_the_run_in_one_line_and_leaves_no_half_written_record(tmp_path):
    """On a 16 KiB tmpfs the records file fills up after a few cells: the run ends with exit 1
    and one line naming the file and the cause; every line left is a whole record."""
    with small_disk(tmp_path, "16k") as disk:
        done = subprocess.run(
            [sys.executable, "-m", "bench", "run", "--models",
             "digits-mlp5x100-ref,digits-mlp5x100-bnn-waq", "--attacks", "fgsm,pgd-linf",
             "--eps", "0.1", "0.2", "0.3", "--n", "300", "--results", str(disk),
             "--no-progress"], capture_output=True, text=True, timeout=300, cwd=ROOT)
        blob = (disk / "custom.cells.jsonl").read_bytes()
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"error: cannot write to records file {disk}/custom.cells"
                                  ".jsonl (No space left on device)"), done.stderr
    lines = blob.decode().splitlines()
    assert 0 < len(lines) < 12 and blob.endswith(b"\n")
    assert all(json.loads(line)["status"] == "ok" for line in lines)


def _site_case(tmp: Path, case: str) -> tuple[Path | None, Path]:
    """(--records, --out) of a site-builder case."""
    (tmp / "afile").write_text("x")
    bad = tmp / "bad"
    bad.mkdir()
    (bad / "x.cells.jsonl").write_text("garbage\n")
    empty = tmp / "empty"
    empty.mkdir()
    return {
        "out-under-a-file": (empty, tmp / "afile" / "site"),
        "out-in-proc": (empty, Path("/proc/qbench-site")),
        "records-missing": (tmp / "nosuch", tmp / "o"),
        "records-a-file": (tmp / "afile", tmp / "o"),
        "records-corrupt": (bad, tmp / "o"),
    }[case]


@pytest.mark.parametrize(("case", "message"), [
    ("out-under-a-file", "cannot be created or written (Not a directory"),
    ("out-in-proc", "cannot be created or written"),
    ("records-missing", "does not exist; give the folder that holds the *.cells.jsonl"),
    ("records-a-file", "is not a folder; give the folder that holds the *.cells.jsonl"),
    ("records-corrupt", "corrupt records file"),
])
def test_the_site_builder_refuses_bad_folders_and_leaves_no_out_folder(case, message, tmp_path):
    from leaderboard.build import SiteFolderError, build_site

    from results import RecordError

    records, out = _site_case(tmp_path, case)
    with pytest.raises((SiteFolderError, RecordError)) as err:
        build_site(records, out)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not out.exists()  # a refused build leaves nothing behind (it made --out first)


@pytest.mark.slow
def test_the_site_builder_on_a_full_disk_ends_in_one_line(tmp_path):
    """A 300 KiB tmpfs fills up while the site's figures are written: exit 1 and one line
    naming the folder and the cause; the folder keeps its marker, so the next build may clean
    it."""
    with small_disk(tmp_path, "300k") as disk:
        done = subprocess.run([sys.executable, "-m", "leaderboard", "--out", str(disk / "site")],
                              capture_output=True, text=True, timeout=300, cwd=ROOT)
        marked = (disk / "site" / ".qbench-site").is_file()
    assert done.returncode == 1, done.stderr[-2000:]
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"error: cannot write the site into {disk}/site "
                                  "(No space left on device"), done.stderr
    assert marked


@pytest.mark.parametrize(("case", "message"), [
    ("folder-a-file", "weights folder {cache}/weights is a file, not a folder"),
    ("lock-a-directory", "lock file {cache}/weights/" + DIGITS + ".lock is a directory"),
])
def test_an_odd_weights_cache_is_one_line(case, message, tmp_path, monkeypatch, capsys):
    """Training into the cache (--retrain) where the cache is not what it should be."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("QBENCH_CACHE", str(cache))
    cache.mkdir()
    if case == "folder-a-file":
        (cache / "weights").write_text("x")
    else:
        (cache / "weights" / f"{DIGITS}.lock").mkdir(parents=True)
    code = main(["train", DIGITS, "--retrain"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert message.format(cache=cache) in err, err


@pytest.mark.slow
def test_records_on_a_read_only_mount_are_shown_but_not_written(tmp_path):
    """A board reads a read-only mount of valid records; a run there is refused in one line."""
    src, ro = tmp_path / "src", tmp_path / "ro"
    src.mkdir()
    ro.mkdir()
    for name in ("mnist5k-oracle.cells.jsonl", "mnist5k-oracle.models.jsonl"):
        shutil.copy(RECORDS_DIR / name, src / name)
    mounted = subprocess.run(["mount", "--bind", str(src), str(ro)], capture_output=True,
                             text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {mounted.stderr.strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(ro)], check=True)
        bench_cmd = [sys.executable, "-m", "bench"]
        board = subprocess.run([*bench_cmd, "board", "--suite", "mnist5k-oracle", "--eps", "0.01",
                                "--results", str(ro)], capture_output=True, text=True,
                               timeout=120, cwd=ROOT)
        run = subprocess.run([*bench_cmd, *RUN, "--results", str(ro), "--no-progress"],
                             capture_output=True, text=True, timeout=120, cwd=ROOT)
    finally:
        subprocess.run(["umount", str(ro)], check=False)
    assert board.returncode == 0 and "mnist5k-mlp3x50-bnn-waq" in board.stdout, board.stderr
    assert run.returncode == 2 and run.stderr.count("\n") == 1, run.stderr
    assert f"records folder {ro} is not writable (Read-only file system)" in run.stderr


@pytest.mark.parametrize("what", ["cells-file", "folder"])
def test_an_immutable_records_file_or_folder_is_one_line(what, tmp_path, capsys):
    root = tmp_path / "rec"
    assert main([*RUN[:5], "--eps", "0.1", "--n", "5", "--results", str(root),
                 "--no-progress"]) == 0
    target = root / "custom.cells.jsonl" if what == "cells-file" else root
    if subprocess.run(["chattr", "+i", str(target)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not supported here")
    try:
        capsys.readouterr()
        code = main([*RUN[:5], "--eps", "0.2", "--n", "5", "--results", str(root),
                     "--no-progress"])
    finally:
        subprocess.run(["chattr", "-i", str(target)], check=False)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "(Operation not permitted)" in err and str(target) in err, err
