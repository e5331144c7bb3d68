"""The command line: listing, running, and one-line errors with exit code 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

import results
from bench.cli import main, parse_eps


def test_list_prints_one_name_per_line(capsys):
    assert main(["list", "models", "mnist5k-mlp*-bnn-waq"]) == 0
    assert capsys.readouterr().out.split() == ["mnist5k-mlp3x50-bnn-waq",
                                              "mnist5k-mlp3x512-bnn-waq",
                                              "mnist5k-mlp5x100-bnn-waq"]
    assert main(["list", "attacks"]) == 0
    names = capsys.readouterr().out.splitlines()
    assert {"fgsm", "pgd-linf", "pgd-l2"} <= set(names) and all("\t" not in n for n in names)


def test_parse_eps_accepts_paper_units_and_norms():
    assert parse_eps(["8/255"]) == {"linf": [8 / 255], "l2": [8 / 255]}
    assert parse_eps(["linf=0.1,0.3", "l2=1.5"]) == {"linf": [0.1, 0.3], "l2": [1.5]}


@pytest.mark.parametrize(("argv", "message"), [
    (["run", "--models", "mnist5k-mlp5x100-bnn-wqa", "--attacks", "fgsm"],
     "mnist5k-mlp5x100-bnn-waq"),
    (["run", "--models", "digits-mlp5x100-ref", "--attacks", "pgd-linff"], "pgd-linf"),
    (["run", "--models", "digits-mlp5x100-ref", "--attacks", "fgsm", "--eps", "-1"],
     "out of range for the linf norm"),
    (["run", "--models", "digits-mlp5x100-ref", "--attacks", "fgsm", "--eps", "nan"],
     "finite number"),
    (["run", "--models", "digits-mlp5x100-ref", "--attacks", "fgsm", "--eps", "abc"],
     "not a number"),
    (["run", "--models", "digits-mlp5x100-ref", "--attacks", "fgsm", "--eps", "l3=1"],
     "unknown norm"),
    (["run", "--suite", "digits", "--n", "100000"], "n must be between 1 and 300"),
    (["run", "--suite", "nope"], "unknown suite"),
    (["run", "--suite", "digits", "--device", "tpu"], "unknown device"),
    (["show", "cifar10-mlp"], "unknown model"),
])
def test_bad_input_exits_2_with_one_line(argv, message, capsys, tmp_path):
    code = main([*argv, "--results", str(tmp_path)] if argv[0] == "run" else argv)
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and err.startswith("error: ") and err.count("\n") == 1


def test_missing_data_without_network_is_one_line(tmp_path, capsys):
    code = main(["run", "--models", "mnist-mlp5x100-ref", "--attacks", "fgsm", "--eps", "0.1",
                 "--data-root", str(tmp_path / "none"), "--results", str(tmp_path)])
    err = capsys.readouterr().err
    if code == 0:
        pytest.skip("this machine can download MNIST")
    assert code == 2 and "'mnist'" in err and "--data-root" in err and err.count("\n") == 1


def test_run_then_rerun_skips(tmp_path, capsys, digits_models):
    argv = ["run", "--models", "digits-mlp5x100-ref", "--attacks", "fgsm", "--eps", "0.1",
            "--n", "40", "--results", str(tmp_path), "--no-progress"]
    assert main(argv) == 0
    assert "1 cells run, 0 already recorded" in capsys.readouterr().out
    assert main(argv) == 0
    assert "0 cells run, 1 already recorded" in capsys.readouterr().out
    assert len(results.load("custom", root=tmp_path)) == 1


@pytest.mark.slow
def test_help_explains():
    out = subprocess.run([sys.executable, "-m", "bench", "run", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for word in ("--models", "--attacks", "--eps", "8/255", "--force", "--device", "--seed"):
        assert word in out


def test_board_prints_the_recorded_numbers_and_best_known(tmp_path, capsys, digits_models):
    rec = str(tmp_path)
    assert main(["run", "--suite", "digits", "--models", "digits-mlp5x100-*", "--attacks",
                 "fgsm,pgd-linf", "--eps", "linf=0.1", "--n", "60", "--results", rec,
                 "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["board", "--suite", "digits", "--results", rec]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = [c.strip() for c in lines[1].strip("|").split("|")]
    assert header[:5] == ["model", "n", "clean", "pgd-linf", "fgsm"]  # board order: PGD first
    rows = {r[0]: dict(zip(header, r, strict=True)) for r in (
        [c.strip() for c in line.strip("|").split("|")] for line in lines[3:])}
    assert set(rows) == {f"digits-mlp5x100-{q}" for q in ("ref", "bnn-wq", "bnn-waq")}
    cells = results.load("digits", root=tmp_path)
    best = results.best_known(cells).set_index("model")
    for model, row in rows.items():
        mine = cells[(cells["model"] == model)].set_index("attack")["robust_acc"]
        assert row["fgsm"] == f"{100 * mine['fgsm']:.1f}"
        assert row["pgd-linf"] == f"{100 * mine['pgd-linf']:.1f}"
        assert row["best_known"] == f"{100 * best.loc[model, 'best_known_acc']:.1f}"
        assert float(row["best_known"]) <= min(float(row["fgsm"]), float(row["pgd-linf"]))
    ranked = [float(rows[m]["best_known"]) for m in rows]
    assert ranked == sorted(ranked, reverse=True)  # most robust first
    assert main(["board", "--suite", "digits", "--results", rec, "--costs"]) == 0
    assert "| pgd-linf | 3 |" in capsys.readouterr().out
    assert main(["board", "--suite", "digits", "--results", rec, "--norm", "l2"]) == 2
    assert "no cells at l2" in capsys.readouterr().err


def test_markdown_marks_values_measured_on_a_prefix():
    import pandas as pd

    from results.tables import to_markdown

    table = pd.DataFrame({"n": [200], "clean": [0.98], "square": [0.86], "pgd": [float("nan")]},
                         index=pd.Index(["m"], name="model"))
    table.attrs["n"] = pd.DataFrame({"square": [50.0], "pgd": [200.0]}, index=["m"])
    row = to_markdown(table, percent=("clean", "square", "pgd")).splitlines()[2]
    assert row == "| m | 200 | 98.0 | 86.0 [50] | — |"


def test_train_needs_models_or_a_suite(capsys):
    assert main(["train"]) == 2
    assert "--suite SUITE" in capsys.readouterr().err
    assert main(["train", "--suite", "no-such-suite"]) == 2
    assert "unknown suite" in capsys.readouterr().err


def test_board_of_cells_that_saw_other_test_points_is_one_line_and_exit_2(tmp_path, capsys):
    from factories import make_cell

    path = results.cells_path("s", tmp_path)
    for attack, inputs in (("pgd-linf", "aa"), ("fgsm", "bb")):  # same n, other test points
        results.append(path, make_cell(attack=attack, key=attack, inputs_sha256=inputs))
    assert main(["board", "--suite", "s", "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "did not see the same test points" in err
    assert len(err.splitlines()) == 1


def test_an_attack_that_applies_to_none_of_the_models_is_named(tmp_path, capsys, digits_models):
    argv = ["run", "--models", "digits-mlp5x100-ref", "--attacks", "iprop,fgsm", "--eps", "0.1",
            "--n", "5", "--results", str(tmp_path), "--no-progress"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "note: iprop applies to none of the selected models" in captured.err
    assert "1 cells run" in captured.out
