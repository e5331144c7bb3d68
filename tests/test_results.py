"""Record schema and storage: typed, validated on write and load, append-only."""

from __future__ import annotations

import json

import pytest
from factories import make_cell

import results
from results.schema import CellRecord, RecordError, from_dict, to_dict


def test_valid_record_round_trips():
    rec = make_cell().validate()
    again = from_dict(CellRecord, json.loads(json.dumps(to_dict(rec))))
    assert again == rec


@pytest.mark.parametrize(("field", "value", "message"), [
    ("eps", "0.1", "eps"),  # a number stored as a string
    ("robust_acc", 0.5, "mean of the robust vector"),
    ("robust", [1, 0, 0, 2], "only 0 and 1"),
    ("robust", [0, 0, 0, 1], "not correct on its clean input"),
    ("norm", "l1", "norm"),
    ("n_attacked", 4, "inconsistent"),
    ("clean_acc", 1.5, "fraction"),
    ("n", 4.0, "n"),
])
def test_schema_rejects_bad_fields(field, value, message):
    with pytest.raises(RecordError, match=message):
        make_cell(**{field: value}).validate()


def test_unknown_fields_and_error_cells():
    data = to_dict(make_cell())
    data["surprise"] = 1
    with pytest.raises(RecordError, match="unknown fields"):
        from_dict(CellRecord, data)
    with pytest.raises(RecordError, match="error message"):
        make_cell(status="error", robust_acc=None).validate()
    make_cell(status="error", robust_acc=None, error="RuntimeError: boom").validate()


def test_append_load_and_last_record_wins(tmp_path):
    path = results.cells_path("s", tmp_path)
    results.append(path, make_cell())
    results.append(path, make_cell(key="k2", eps=0.2))
    results.append(path, make_cell(robust=[0, 0, 0, 0], robust_acc=0.0))  # forced re-run of k1
    df = results.load(root=tmp_path)
    assert len(df) == 2
    assert df.set_index("key").loc["k1", "robust_acc"] == 0.0
    for col in ["suite", "dataset", "model", "attack", "norm", "eps", "n", "clean_acc",
                "robust_acc", "seconds", "seconds_per_sample", "device", "seed", "robust",
                "versions"]:
        assert col in df.columns
    assert df["eps"].dtype.kind == "f" and df["n"].dtype.kind == "i"


def test_a_redefined_attack_replaces_its_earlier_cells(tmp_path):
    path = results.cells_path("s", tmp_path)
    old = make_cell(key="old", created="2026-01-01T00:00:00Z")
    new = make_cell(key="new", attack_config={"steps": 20, "l2_direction": "rescaled"},
                    robust=[0, 0, 0, 0], robust_acc=0.0, created="2026-01-02T00:00:00Z")
    other_n = make_cell(key="n2", n=2, robust=[1, 0], clean_correct=[1, 1], n_attacked=2,
                        clean_acc=1.0, robust_acc=0.5, created="2026-01-01T00:00:00Z")
    for rec in (new, old, other_n):  # file order does not matter, creation time does
        results.append(path, rec)
    df = results.load(root=tmp_path)
    assert sorted(df["key"]) == ["n2", "new"]
    assert results.best_known(df)["best_known_acc"].iloc[0] == 0.0


def test_half_written_last_line_is_ignored_then_repaired(tmp_path):
    path = results.cells_path("s", tmp_path)
    results.append(path, make_cell())
    with open(path, "a") as f:
        f.write('{"key": "k2", "suite": "s", "da')  # the run was killed mid-write
    assert list(results.latest_cells("s", tmp_path)) == ["k1"]
    results.append(path, make_cell(key="k3"))
    assert list(results.latest_cells("s", tmp_path)) == ["k1", "k3"]


def test_corrupt_middle_line_is_reported_with_its_line(tmp_path):
    path = results.cells_path("s", tmp_path)
    results.append(path, make_cell())
    with open(path, "a") as f:
        f.write("garbage\n")
    results.append(path, make_cell(key="k2"))
    with pytest.raises(RecordError, match=r"line 2"):
        results.load(root=tmp_path)
    assert path.read_text().count("\n") == 3  # nothing was removed


def test_best_known_is_the_per_sample_minimum():
    import pandas as pd

    a = make_cell(attack="a", robust=[1, 0, 1, 0], robust_acc=0.5, clean_correct=[1, 1, 1, 0])
    b = make_cell(attack="b", key="k2", robust=[0, 1, 1, 0], robust_acc=0.5,
                  clean_correct=[1, 1, 1, 0], seconds_per_sample=1.0)
    c = make_cell(attack="c", key="k3", status="error", robust_acc=None, error="E: x",
                  robust=[1, 1, 1, 0], clean_correct=[1, 1, 1, 0])
    df = pd.DataFrame([to_dict(r) for r in (a, b, c)])
    best = results.best_known(df)
    assert len(best) == 1
    row = best.iloc[0]
    assert row["best_known_acc"] == 0.25 and row["attacks"] == 2
    assert row["broken_by"] == ["b", "a", "", ""]
    assert row["unique_breaks"] == {"a": 1, "b": 1}
