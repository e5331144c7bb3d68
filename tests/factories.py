"""Record factories shared by the tests (imported as ``factories``: pytest puts ``tests/`` on
the path)."""

from __future__ import annotations

from results.schema import CellRecord


def make_cell(**over) -> CellRecord:
    """A valid cell record: 4 points, 3 clean-correct, 1 robust; ``over`` replaces fields."""
    base = dict(
        key="k1", suite="s", dataset="digits", model="m", model_sha256="ab", attack="pgd-linf",
        attack_config={"steps": 20}, norm="linf", eps=0.1, n=4, n_attacked=3, clean_acc=0.75,
        robust_acc=0.25, seconds=1.0, seconds_per_sample=0.33, device="cpu", seed=0,
        robust=[1, 0, 0, 0], clean_correct=[1, 1, 1, 0], inputs_sha256="cd",
    )
    base.update(over)
    return CellRecord(**base)


def evaluate_attacks(model, *, dataset, attacks: list[str], eps: dict[str, list[float]], n: int,
                     **kw):
    """The engine on ``attacks`` × their norm's ε on the first ``n`` test points (the cells of
    a grid with no limits): an iterator of records, as :func:`bench.engine.evaluate_cells`."""
    from attacks import attack_spec
    from bench.engine import evaluate_cells
    from bench.grid import plan_cells

    cells = plan_cells(dataset, [(a, eps.get(attack_spec(a).norm, []), n) for a in attacks])
    return evaluate_cells(model, cells, dataset=dataset, n=n, **kw)


def set_up(name: str, model, dataset, **overrides):
    """A registered attack set up on ``model`` as the engine sets it up (NJS β1 on the
    dataset's first 101 test images, …): ready to be called directly."""
    from attacks import create_attack
    from bench.calibrate import attack_context

    attack = create_attack(name, **overrides)
    attack.setup(model, attack_context(dataset, "cpu"))
    return attack
