"""Command line: ``python -m bench {list,run,board,show,train,reproduce} …``.

Run with ``--help`` for details."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.inputs import one_eps, parse_eps
from results.vocabulary import NORMS

EPILOG = """\
examples:
  python -m bench list models '*bnn-waq'     # one name per line; wildcards allowed
  python -m bench list attacks
  python -m bench run                        # the default suite (mnist5k)
  python -m bench run --models 'mnist5k-mlp5x100-*' --attacks pgd-linf --eps 0.1 8/255
  python -m bench run --suite mnist5k --attacks 'pgd-*' --eps linf=0.1,0.3 l2=1.5 --n 200
  python -m bench board --norm l2 --eps 1.5          # one leaderboard as a Markdown table
  python -m bench show mnist5k-mlp5x100-bnn-waq
  python -m bench reproduce --sample 20      # recompute 20 published cells and compare

ε is in input units (inputs live in [0, 1]); fractions such as 8/255 are accepted.
A finished cell is never recomputed unless --force; an interrupted run loses nothing.
"""

DETERMINISTIC_HELP = ("deterministic CUDA kernels (torch.use_deterministic_algorithms and "
                      "CUBLAS_WORKSPACE_CONFIG=:4096:8): slower, for bit-identical GPU results; "
                      "no effect on the CPU")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark adversarial attacks on quantized (binarized) neural networks: "
        "cross a model zoo with an attack registry, verify every adversarial example, record "
        "robust accuracy and cost, and render a leaderboard.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("list", help="list models, attacks, datasets or suites (one per line)")
    p.add_argument("what", choices=["models", "attacks", "datasets", "suites"])
    p.add_argument("pattern", nargs="?", default="*", help="wildcard filter, e.g. '*bnn*'")
    p.add_argument("--long", action="store_true", help="add a description column")

    p = sub.add_parser("run", help="run a suite or a custom grid and record every cell",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", default=None,
                   help="suite to run (default: mnist5k); --models/--attacks/--eps/--n "
                   "override its parts")
    p.add_argument("--models", help="model names or wildcards, comma-separated")
    p.add_argument("--attacks", help="attack names or wildcards, comma-separated")
    p.add_argument("--eps", nargs="+", metavar="EPS",
                   help="ε values: '0.1 8/255' for every norm, or 'linf=0.1,0.3 l2=1.5'")
    p.add_argument("--n", type=int, help="number of test points (the first n of the split)")
    p.add_argument("--device", default="auto", help="auto (cuda if present), cpu, cuda")
    p.add_argument("--seed", type=int, default=0, help="run seed (default 0)")
    p.add_argument("--force", action="store_true", help="recompute cells already recorded")
    p.add_argument("--retrain", action="store_true",
                   help="train the models here and attack those weights instead of the shipped "
                   "ones (other weights, other cells; needs --results, so that they stay out "
                   "of the project's records)")
    p.add_argument("--results", default=None,
                   help="records folder (default: results/records of the project)")
    p.add_argument("--data-root", default=None,
                   help="folder with dataset files (default: $QBENCH_DATA or .cache/qbench/data)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--deterministic", action="store_true", help=DETERMINISTIC_HELP)
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="local processes that share the grid, each with an equal share of the "
                   "torch threads (default 1; nox -s benchmark uses one per core, up to 4). "
                   "Models are trained first, in the first process")
    p.add_argument("--executor", default="local", choices=["local", "ray"],
                   help="local (default): every cell in this process; ray: one task per "
                   "(model, attack) on a Ray cluster, records written here")
    p.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="with --executor ray: 'auto' (the cluster this machine joined), "
                   "HOST:PORT, or unset: $RAY_ADDRESS, else a local Ray started for the run")
    p.add_argument("--gpus-per-task", type=float, default=0.0, metavar="G",
                   help="with --executor ray: GPUs per task, fractions allowed (0.25: four "
                   "tasks share a GPU); 0 (default) runs tasks on CPUs")
    p.add_argument("--threads-per-task", type=int, default=1, metavar="T",
                   help="with --executor ray: CPU threads (and Ray CPUs) per task (default 1)")
    p.add_argument("--max-train-steps", type=int, default=None, metavar="N",
                   help="smoke run: train models that are not cached for at most N optimizer "
                   "steps (kept apart from the real weights; needs --results, so that such "
                   "cells never reach the published records)")

    p = sub.add_parser(
        "board", help="print one leaderboard of the records as a Markdown table",
        description="Robust accuracy (%) of every model of a suite under every attack at one "
        "threat model, the best-known accuracy (per-sample minimum over the attacks), the "
        "single best attack and its cost (ms and forward/backward passes per attacked "
        "sample). --costs prints the cost of each attack instead.")
    p.add_argument("--suite", default=None, help="suite (default: mnist5k)")
    p.add_argument("--norm", default="linf", choices=NORMS, help="default: linf")
    p.add_argument("--eps", default=None, help="ε of the board (default: 0.1 for linf, 1.5 "
                   "for l2); fractions such as 8/255 are accepted")
    p.add_argument("--attacks", default=None,
                   help="attack columns to show (wildcards, comma-separated; default: all; "
                   "the best-known value always combines every attack)")
    p.add_argument("--costs", action="store_true", help="per-attack cost table instead")
    p.add_argument("--results", default=None,
                   help="records folder (default: results/records of the project)")

    p = sub.add_parser(
        "reproduce", help="recompute a sample of the committed cells and compare them",
        description="Recompute K committed cells of a suite from the shipped weights (with "
        "their seed, test points and attack configuration) and compare every result field "
        "with the record: per-sample vectors, accuracies, counts, passes per sample, the "
        "attack's info. Timings and provenance are left out. The sample is stratified over "
        "models and attack families. Exit 1 when any cell differs.")
    p.add_argument("--suite", default="mnist5k", help="suite whose records to check "
                   "(default: mnist5k)")
    p.add_argument("--sample", type=int, default=20, metavar="K",
                   help="number of cells to recompute (default 20)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample (default 0)")
    p.add_argument("--models", default=None, help="only cells of these models (wildcards)")
    p.add_argument("--attacks", default=None, help="only cells of these attacks (wildcards)")
    p.add_argument("--device", default="cpu", help="cpu (default; the records were made on "
                   "it), cuda, auto")

    p = sub.add_parser("show", help="print a model's card (JSON; never trains)")
    p.add_argument("model")

    p = sub.add_parser(
        "train", help="load (verifying sha256) or train models; --check retrains and compares",
        description="Without options: load each model's shipped weights (verified by sha256) "
        "or, for a model without shipped weights, train it here (seeded) and cache it. "
        "The same recipe gives other weights on another CPU type or thread count, so the "
        "published records are about the shipped weights.")
    p.add_argument("models", nargs="?", default=None,
                   help="model names or wildcards, comma-separated (default: the models of "
                   "--suite)")
    p.add_argument("--suite", default=None, help="train the models of this suite")
    p.add_argument("--device", default="auto")
    p.add_argument("--retrain", action="store_true",
                   help="train again here, into the cache (a new weights version with its own "
                   "sha256; the shipped weights are not touched)")
    p.add_argument("--check", action="store_true",
                   help="retrain each model into a scratch folder and report how far it is "
                   "from the shipped weights (sha256, clean accuracy); exit 1 when the clean "
                   "accuracy moves by more than the spread other CPUs give")
    p.add_argument("--ship", action="store_true",
                   help="maintainers: copy the weights trained here into zoo/weights (then "
                   "recompute the models' records)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--deterministic", action="store_true", help=DETERMINISTIC_HELP)
    return parser


def cmd_list(args: argparse.Namespace) -> int:
    import fnmatch

    from attacks import attack_spec, list_attacks
    from bench.suites import SUITES
    from zoo import list_datasets, list_models, model_spec
    from zoo.data import dataset_info

    if args.what == "models":
        names = list_models(args.pattern)
        describe = lambda n: model_spec(n).description  # noqa: E731
    elif args.what == "attacks":
        names = list_attacks(args.pattern)
        describe = lambda n: attack_spec(n).description  # noqa: E731
    elif args.what == "datasets":
        names = fnmatch.filter(list_datasets(), args.pattern)
        describe = lambda n: dataset_info(n).description  # noqa: E731
    else:
        names = fnmatch.filter(sorted(SUITES), args.pattern)
        describe = lambda n: SUITES[n].description  # noqa: E731
    for name in names:
        print(f"{name}\t{describe(name)}" if args.long else name)
    return 0


def check_common(args: argparse.Namespace) -> None:
    """Options that several commands share, checked (and ``--results`` made a Path) before
    anything loads; each refusal names the value and what is allowed."""
    from results.errors import QBenchError

    if getattr(args, "results", None) is not None:
        if not args.results.strip():
            raise QBenchError(f"--results {args.results!r} names no folder; give the records "
                              "folder (new or existing), or leave the option out for the "
                              "project's results/records")
        args.results = Path(args.results)
    if getattr(args, "executor", "ray") == "local":
        given = [f"{flag} {value}" for flag, value, default in (
            ("--ray-address", args.ray_address, None), ("--gpus-per-task", args.gpus_per_task, 0),
            ("--threads-per-task", args.threads_per_task, 1)) if value != default]
        if given:
            raise QBenchError(f"{', '.join(given)} sizes Ray tasks and takes effect with "
                              "--executor ray only; add --executor ray, or leave it out")
    elif hasattr(args, "executor"):
        from bench.executors.ray_cluster import check_task_size, probe

        check_task_size(args.gpus_per_task, args.threads_per_task)
        if args.ray_address not in (None, "auto"):
            probe(args.ray_address)  # a cluster that cannot be there: refused before anything


def pick_executor(args: argparse.Namespace):  # noqa: ANN201 - an Executor
    """The executor ``--executor``, ``--jobs`` and the Ray options ask for."""
    from bench.executors import Local, Processes, RayCluster
    from results.errors import QBenchError

    if args.executor == "ray":
        if args.jobs != 1:
            raise QBenchError(f"--jobs {args.jobs} runs local processes; with --executor ray "
                              "use --threads-per-task to size the tasks")
        return RayCluster(args.ray_address, args.gpus_per_task, args.threads_per_task)
    return Local() if args.jobs == 1 else Processes(args.jobs)


def cmd_run(args: argparse.Namespace) -> int:
    from bench.determinism import enable_deterministic
    from bench.engine import resolve_device
    from bench.grid import build_grid
    from bench.runner import run_grid
    from bench.suites import DEFAULT_SUITE, get_suite
    from results.errors import QBenchError

    resolve_device(args.device)  # an unknown device is refused before anything loads
    executor = pick_executor(args)

    if args.max_train_steps is not None and args.results is None:
        raise QBenchError("--max-train-steps trains smoke models: give --results DIR so that "
                          "their cells stay out of the project's records")
    if args.retrain and args.results is None:
        raise QBenchError("--retrain attacks weights trained here, not the shipped weights the "
                          "project's records describe: give --results DIR for their cells")
    if args.max_train_steps is not None and args.max_train_steps < 1:
        raise QBenchError(f"--max-train-steps must be a positive step count, got "
                          f"{args.max_train_steps}")
    custom = args.suite is None and args.models is not None
    suite = get_suite(args.suite or DEFAULT_SUITE)
    if custom:
        from results.vocabulary import match_names
        from zoo import model_spec
        from zoo.registry import list_models

        first = match_names(args.models, list_models(), "model")[0]
        dataset, name = model_spec(first).dataset, "custom"
    else:
        dataset, name = suite.dataset, suite.name
    grid = build_grid(
        suite=name, dataset=dataset,
        models=args.models if args.models is not None else suite.models,
        attacks=args.attacks if args.attacks is not None else suite.attacks,
        eps=parse_eps(args.eps) if args.eps else suite.eps,
        n=args.n if args.n is not None else suite.n, seed=args.seed, data_root=args.data_root,
    )
    from bench.grid import inapplicable

    for attack in inapplicable(grid.attacks, grid.models):
        print(f"note: {attack} applies to none of the selected models; it runs on no cell",
              file=sys.stderr)
    if args.deterministic:
        enable_deterministic()
    summary = run_grid(grid, executor, results_root=args.results, force=args.force,
                       device=args.device, retrain=args.retrain, progress=not args.no_progress,
                       weights="trained" if args.retrain else "shipped",
                       data_root=args.data_root, max_train_steps=args.max_train_steps)
    from results import cells_path

    shared = f", {summary.shared} computed by another process" if summary.shared else ""
    if len(summary.by_process) > 1:
        shared += (f" (cells run per process: {summary.by_process[0]} in this one, "
                   f"{', '.join(map(str, summary.by_process[1:]))} in its helpers)")
    print(f"suite {grid.suite}: {summary.ran} cells run, {summary.skipped} already recorded"
          f"{shared}, {summary.errors} errors -> {cells_path(grid.suite, args.results)}")
    for r in summary.records:
        acc = "error" if r.robust_acc is None else f"{r.robust_acc:.3f}"
        clean = "-" if r.clean_acc is None else f"{r.clean_acc:.3f}"
        print(f"  {r.model:32s} {r.attack:16s} {r.norm:4s} ε={r.eps:<8g} clean={clean}"
              f" robust={acc} ({r.seconds_per_sample * 1e3:.2f} ms/sample)")
    if summary.ok:
        return 0
    for failure in summary.failures:
        print(f"failed: {failure}", file=sys.stderr)
    for r in summary.records:
        if r.status == "error":
            print(f"error cell: {r.model} {r.attack} {r.norm} ε={r.eps:g}: {r.error}",
                  file=sys.stderr)
    print(f"{len(summary.failures)} model stages failed and {summary.errors} cells ended in an "
          "error; they are recorded as error cells and the next run retries them",
          file=sys.stderr)
    return 1


def cmd_board(args: argparse.Namespace) -> int:
    from bench.suites import DEFAULT_SUITE
    from results import load, load_models
    from results.errors import QBenchError
    from results.store import check_records_folder
    from results.tables import attack_costs, board_frame, to_markdown
    from results.vocabulary import match_names

    suite = args.suite or DEFAULT_SUITE
    check_records_folder(suite, args.results, write=False)
    cells = load(suite, root=args.results)
    if cells.empty:
        raise QBenchError(f"no records for suite {suite!r} (run `python -m bench run --suite "
                          f"{suite}` first, or give --results DIR)")
    if args.costs:
        print(to_markdown(attack_costs(cells)))
        return 0
    norm = args.norm
    eps = one_eps(args.eps if args.eps is not None else "0.1" if norm == "linf" else "1.5",
                  norm)
    table = board_frame(cells, norm, eps, load_models(suite, root=args.results))
    if table.empty:
        have = sorted({(r.norm, float(r.eps)) for r in cells.itertuples()})
        raise QBenchError(f"suite {suite!r} has no cells at {norm} ε={eps:g}; recorded: "
                          + ", ".join(f"{n} {e:g}" for n, e in have))
    if args.attacks:
        import fnmatch

        meta = {"n", "clean", "best_known", "proved", "exact", "best_attack", "best_ms",
                "best_passes"}
        # every pattern must match a column of this board (a typo shows nothing otherwise)
        pats = match_names(args.attacks, [c for c in table.columns if c not in meta],
                           "attack")
        kept = table[[c for c in table.columns if c in meta
                      or any(fnmatch.fnmatchcase(c, p) for p in pats)]]
        kept.attrs = table.attrs
        table = kept
    pct = tuple(c for c in table.columns
                if c not in ("n", "best_attack", "best_ms", "best_passes"))
    print(f"suite {suite}, {norm} ε={eps:g}: robust accuracy (%; [k]: on the first k test "
          f"points only), best attack cost in ms and forward/backward passes per attacked "
          f"sample")
    print(to_markdown(table, percent=pct))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from zoo.registry import model_card

    print(json.dumps(model_card(args.model), indent=2, sort_keys=True))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from bench.determinism import enable_deterministic
    from bench.engine import resolve_device
    from bench.suites import get_suite
    from results.errors import QBenchError
    from results.vocabulary import match_names
    from zoo import get_model, list_models
    from zoo.registry import ship

    if args.models is None and args.suite is None:
        raise QBenchError("name the models to train (names or wildcards) or --suite SUITE")
    if args.check and (args.retrain or args.ship):
        raise QBenchError("--check retrains into a scratch folder and compares; it cannot be "
                          "combined with --retrain or --ship")
    pattern = args.models if args.models is not None else get_suite(args.suite).models
    device = resolve_device(args.device)
    if args.deterministic:
        enable_deterministic()
    names = match_names(pattern, list_models(), "model")
    if args.check:
        from bench.retrain_check import check_all

        return check_all(names, device=device, data_root=args.data_root)
    for name in names:
        _, card = get_model(name, device=device, retrain=args.retrain,
                            weights="trained" if args.ship else "shipped",
                            data_root=args.data_root)
        source = card["weights_source"]
        if args.ship:
            card, source = {**ship(name), "weights_source": "shipped"}, "shipped now"
        trained = f"\ttrain_seconds={card['train_seconds']}" if "train_seconds" in card else ""
        print(f"{name}\tclean_acc={card['clean_acc']:.4f}{trained}"
              f"\tsha256={card['weights_sha256'][:12]}\t{source}")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from bench.reproduce import main as reproduce

    return reproduce(args.suite, sample=args.sample, seed=args.seed, models=args.models,
                     attacks=args.attacks, device=args.device)


def main(argv: Sequence[str] | None = None) -> int:
    from results import RecordError
    from results.errors import QBenchError
    from results.store import RecordWriteError

    args = build_parser().parse_args(argv)
    handler = {"list": cmd_list, "run": cmd_run, "board": cmd_board, "show": cmd_show,
               "train": cmd_train, "reproduce": cmd_reproduce}
    try:
        check_common(args)
        return handler[args.command](args)
    except QBenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RecordWriteError as exc:  # the environment failed during a run: finished cells kept
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except RecordError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: every finished cell is already recorded", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: not an error
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
