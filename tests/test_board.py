"""One board for the CLI and the site, read from recorded facts: attack versions and traits in
every configuration, family order, "not applicable" cells, legacy cells without traits."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from leaderboard import plots

import attacks
from results import board as rb
from results.schema import CellRecord, to_dict
from results.tables import board_frame as table_board
from results.vocabulary import FAMILIES, traits_from_config


def test_every_attack_config_carries_version_traits_and_library_versions():
    import foolbox

    for name in attacks.list_attacks():
        cfg = attacks.create_attack(name).config()
        assert isinstance(cfg["version"], int) and cfg["version"] >= 1, name
        traits = cfg["traits"]
        assert traits["family"] in FAMILIES and traits["base"], name
        assert traits["uses_gradients"] == attacks.create_attack(name).uses_gradients
        assert "l2_direction" not in cfg  # one-off fields are replaced by the version
        # the torch-free reader of legacy cells agrees with the registry on every attack
        legacy = {k: v for k, v in cfg.items() if k != "traits"}
        assert traits_from_config(legacy) == (traits, "config"), name
    assert attacks.create_attack("bba-linf").config()["library_versions"] == {
        "foolbox": foolbox.__version__}
    assert set(attacks.create_attack("apgd-ce").config()["library_versions"]) == {"pyautoattack"}
    assert "library_versions" not in attacks.create_attack("pgd-linf").config()
    # every family has a board label and a plot colour
    assert set(FAMILIES) <= set(rb.FAMILY_LABEL) and set(FAMILIES) == set(plots.KIND_COLOUR)
    t = attacks.create_attack("pgd-l2-njs").config()["traits"]
    assert (t["family"], t["base"], t["scaler"]) == ("gradient-temperature", "pgd-l2", "njs")
    assert attacks.create_attack("iprop").config()["traits"]["applies_to"] == {
        "arch": "mlp*", "quant": "bnn-waq"}


def test_a_version_bump_changes_the_config_and_so_the_cell_key(monkeypatch):
    from attacks.gradient import GradientAttack

    before = attacks.create_attack("pgd-linf").config()
    monkeypatch.setattr(GradientAttack, "version", GradientAttack.version + 1)
    assert attacks.create_attack("pgd-linf").config() != before


def _cell(model: str, attack: str, robust: list[int], clean: list[int], **over) -> dict:
    n = len(robust)
    kw = dict(key=f"k-{model}-{attack}", suite="s", dataset="d", model=model,
              model_sha256="0" * 64, attack=attack,
              attack_config=attacks.create_attack(attack).config(), norm="linf", eps=0.1,
              n=n, n_attacked=sum(clean), clean_acc=sum(clean) / n,
              robust_acc=sum(robust) / n, seconds=1.0, seconds_per_sample=0.01, device="cpu",
              seed=0, robust=robust, clean_correct=clean, inputs_sha256="x",
              created="2026-01-01T00:00:00Z")
    kw.update(over)
    return to_dict(CellRecord(**kw).validate())


def _records():
    clean = [1, 1, 1, 1, 0]
    names = ["square", "iprop", "bba-linf", "pgd-linf-hns", "fgsm", "pgd-linf-njs", "pgd-linf",
             "apgd-dlr", "pgd-linf-beta0.1", "deepfool-linf"]
    rows = []
    for i, a in enumerate(names):
        vec = [int(c and (j + i) % 3 != 0) for j, c in enumerate(clean)]
        for m in ("waq", "ref"):
            if a == "iprop" and m == "ref":
                rows.append(_cell(m, a, [0] * 5, clean, status="error", robust_acc=None,
                                  error="UnsupportedModelError: only bnn-waq MLPs"))
            else:
                rows.append(_cell(m, a, vec, clean))
    cells = pd.DataFrame(rows)
    models = pd.DataFrame([
        {"suite": "s", "model": "waq", "card": {"arch": "mlp5x100", "quant": "bnn-waq"}},
        {"suite": "s", "model": "ref", "card": {"arch": "mlp5x100", "quant": "ref"}},
        {"suite": "s", "model": "other", "card": {"arch": "convnet", "quant": "ref"}},
    ])
    return cells, models


def test_columns_are_grouped_by_family_with_pgd_njs_hns_first_and_na_is_not_an_error():
    cells, models = _records()
    b = rb.board(cells, "linf", 0.1, models)
    assert [c.name for c in b.columns] == [
        "pgd-linf", "pgd-linf-njs", "pgd-linf-hns", "pgd-linf-beta0.1", "fgsm", "apgd-dlr",
        "bba-linf", "deepfool-linf", "square", "iprop"]
    ref = next(r for r in b.rows if r.model == "ref")
    assert ref.cells["iprop"].status == "n/a"  # an error cell where it does not apply
    waq = next(r for r in b.rows if r.model == "waq")
    assert waq.cells["iprop"].status == "ok"
    assert b.not_run == ["other"]


def test_cli_table_and_site_board_show_the_same_numbers(tmp_path):
    from leaderboard import data

    cells, models = _records()
    table = table_board(cells, "linf", 0.1, models)
    assert table.loc["ref", "iprop"] == "n/a"
    rec = data.Records(cells, models.assign(diagnostics=[{}] * 3), pd.DataFrame())
    (site,) = data.boards(rec)
    names = [a["name"] for a in site["attacks"]]
    assert names == [c for c in table.columns if c in names]
    for row in site["rows"]:
        assert row["best"] == table.loc[row["model"], "best_known"]
        for a, c in zip(names, row["cells"], strict=True):
            v = table.loc[row["model"], a]
            if c["status"] == "ok":
                assert c["acc"] == v
            else:
                assert c["status"] == v == "n/a"
        assert not any(b["kind"] == "error" for b in row["badges"])


def test_legacy_cells_without_traits_read_them_from_their_recorded_config():
    cells, models = _records()
    cfg = dict(cells.loc[cells["attack"] == "pgd-linf-njs", "attack_config"].iloc[0])
    cfg.pop("traits")
    cfg.pop("version")
    cells["attack_config"] = [cfg if a == "pgd-linf-njs" else c
                              for a, c in zip(cells["attack"], cells["attack_config"],
                                              strict=True)]
    col = rb.attack_columns(cells)["pgd-linf-njs"]
    assert (col.family, col.base, col.scaler, col.traits_source, col.version) == (
        "gradient-temperature", "pgd-linf", "njs", "config", None)
    assert traits_from_config({"class": "Mystery"})[1] == "unknown"
    assert not math.isnan(table_board(cells, "linf", 0.1, models).loc["waq", "pgd-linf-njs"])


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_board_of_a_threat_model_without_cells_is_none(norm):
    cells, models = _records()
    assert rb.board(cells, norm, 0.3, models) is None
