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


def test_a_point_broken_at_a_smaller_eps_is_broken_at_every_larger_one():
    import pandas as pd

    def cell(attack, eps, robust, n=4, **over):
        return make_cell(attack=attack, key=f"{attack}{eps}{n}", eps=eps, n=n,
                         robust=robust, robust_acc=sum(robust) / n, n_attacked=n,
                         clean_acc=1.0, clean_correct=[1] * n, **over)

    cells = [
        cell("milp-linf", 0.01, [1, 0, 1, 1]),  # the verifier breaks point 1 at 0.01
        cell("pgd-linf", 0.02, [1, 1, 0, 1]),  # PGD misses it at 0.02 but breaks point 2
        cell("pgd-linf", 0.05, [0, 1, 1, 1, 1, 1], n=6),  # and misses both at 0.05 (6 points)
        cell("pgd-linf", 0.05, [0, 0, 1, 1], model="other", model_sha256="other"),
        cell("pgd-linf", 0.05, [1, 0, 1, 1], norm="l2"),  # another norm carries nothing over
        # another suite's cell of the same weights and test points: its break at 0.01 counts
        cell("milp-linf", 0.01, [1, 1, 1, 0, 1, 1], n=6, suite="oracle"),
    ]
    best = results.best_known(pd.DataFrame([to_dict(c) for c in cells]))
    rows = {(r.suite, r.model, r.norm, r.eps): r for r in best.itertuples()}
    assert rows[("s", "m", "linf", 0.01)].broken_by == ["", "milp-linf", "", ""]
    at_002 = rows[("s", "m", "linf", 0.02)]
    assert at_002.broken_by == ["", "milp-linf at ε=0.01", "pgd-linf",
                                "milp-linf at ε=0.01 in oracle"]
    assert at_002.best_known_acc == 0.25 and at_002.from_smaller_eps == 2
    at_005 = rows[("s", "m", "linf", 0.05)]
    assert at_005.broken_by == ["pgd-linf", "milp-linf at ε=0.01", "pgd-linf at ε=0.02",
                                "milp-linf at ε=0.01 in oracle", "", ""]
    assert at_005.best_known_acc == pytest.approx(2 / 6) and at_005.from_smaller_eps == 3
    assert rows[("s", "other", "linf", 0.05)].best_known_acc == 0.5  # other weights: untouched
    assert rows[("s", "m", "l2", 0.05)].broken_by == ["", "pgd-linf", "", ""]
    # the board of 0.05 says which cells of smaller ε it counts, also when asked for alone
    from results.board import board

    frame = pd.DataFrame([to_dict(c) for c in cells[:3]])
    row = board(frame, "linf", 0.05).rows[0]
    assert row.from_smaller_eps == {"milp-linf at ε=0.01": 1, "pgd-linf at ε=0.02": 1}
    assert row.best_known == pytest.approx(3 / 6)


def test_best_known_or_note_keeps_going_where_cells_saw_other_points():
    import pandas as pd

    from results.bestknown import best_known_or_note

    def cell(attack, inputs, robust):
        return make_cell(attack=attack, key=attack + inputs, inputs_sha256=inputs,
                         robust=robust, robust_acc=sum(robust) / 4, n_attacked=4,
                         clean_acc=1.0, clean_correct=[1] * 4)

    cells = pd.DataFrame([to_dict(c) for c in (
        cell("pgd-linf", "aa", [1, 0, 1, 1]), cell("fgsm", "aa", [1, 1, 0, 1]),
        cell("square", "bb", [0, 0, 0, 0]))])  # four points, but not the same four
    with pytest.raises(ValueError, match="inputs_sha256"):
        results.best_known(cells)
    notes: list[str] = []
    best = best_known_or_note(cells, notes)
    assert notes == ["suite s, L∞ ε = 0.1: its cells did not all see the same test points; "
                     "best-known values use the 2 of 3 cells on the most common ones (n = 4) "
                     "only"]
    (row,) = best.itertuples()
    assert row.best_known_acc == 0.5 and row.attacks == 2  # pgd and fgsm together; not square
