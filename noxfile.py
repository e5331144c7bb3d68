"""Sessions: ``nox -s tests`` (default), ``benchmark``, ``oracle``, ``fashion``, ``cifar10``,
``fliprate``, ``site``, ``perf``, ``lint``, ``lock``.

Every session installs the project (and everything it needs) into its own virtualenv, at the
exact versions of ``constraints.txt`` (the environment that made the committed records;
``nox -s lock`` regenerates it); virtualenvs are reused between runs (pass ``--reuse-venv=no``
for a fresh one), and the project is installed again only when pyproject.toml or
constraints.txt changes (see :func:`install`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_venv = "yes"

PERF_STORAGE = "file://benchmarks/.baselines"


#: written into a session's virtualenv once the project is installed there: which
#: pyproject.toml and constraints.txt (their sha256) and which extras
INSTALL_STAMP = "qbench-installed.txt"
#: the exact versions every session installs (see its header)
CONSTRAINTS = "constraints.txt"
#: the extras ``nox -s lock`` resolves: every one, so that the constraints cover them all
ALL_EXTRAS = "test,ray,site"


def constraints_args() -> list[str]:
    """``-c constraints.txt`` when the file exists (a probe project may have none)."""
    return ["-c", CONSTRAINTS] if Path(CONSTRAINTS).is_file() else []


def install(session: nox.Session, extras: str = "test") -> None:
    """Install the project (editable) with ``extras`` into the session's virtualenv.

    Every package at its version in ``constraints.txt``. Skipped when the virtualenv already
    holds an install of this very pyproject.toml and constraints.txt with these extras: pip
    spends 20-30 s resolving and building an editable wheel even when nothing changed, and an
    editable install sees code changes without it. A changed pyproject.toml (dependencies,
    entry points) or constraints.txt installs again; ``--reuse-venv=no`` starts from a fresh
    virtualenv. The stamp is written by an install command, so ``--no-install`` writes none
    either.
    """
    h = hashlib.sha256(Path("pyproject.toml").read_bytes())
    if Path(CONSTRAINTS).is_file():
        h.update(Path(CONSTRAINTS).read_bytes())
    stamp = f"{h.hexdigest()} [{extras}]"
    stamp_file = Path(session.virtualenv.location) / INSTALL_STAMP
    if stamp_file.is_file() and stamp_file.read_text() == stamp:
        session.log(f"qbench[{extras}] is installed from this pyproject.toml and constraints: "
                    "pip skipped")
        return
    session.install(*constraints_args(), "-e", f".[{extras}]")
    session.run_install("python", "-c", "import pathlib, sys; "
                        "pathlib.Path(sys.argv[1]).write_text(sys.argv[2])",
                        str(stamp_file), stamp, silent=True)


def apt_install(session: nox.Session, package: str, hint: str) -> None:
    """Install a Debian package when running as root with apt-get, else warn with ``hint``."""
    if shutil.which("apt-get") and hasattr(os, "geteuid") and os.geteuid() == 0:
        env = {"DEBIAN_FRONTEND": "noninteractive"}
        session.run("apt-get", "update", "-qq", external=True, env=env)
        session.run("apt-get", "install", "-y", "-qq", "--no-install-recommends", package,
                    external=True, env=env)
    else:
        session.warn(hint)


def ensure_chromium(session: nox.Session) -> None:
    """The site tests drive a real headless Chromium (Debian's package)."""
    if not shutil.which("chromium"):
        apt_install(session, "chromium", "chromium is not installed and cannot be installed "
                    "here: the browser tests will be skipped (apt-get install chromium)")


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite (about 8 minutes on a 2-core CPU); with Ray, for the Ray executor's
    tests. One pytest-xdist worker per core (up to 4), each with its share of the torch
    threads; a worker that runs out of tests takes some of another's (``worksteal``: the
    long tests of one file no longer keep one worker busy while the other waits)."""
    install(session, "test,ray")
    ensure_chromium(session)
    session.run("pytest", "-n", JOBS, "--dist", "worksteal", *session.posargs)


#: local processes for the suites (``bench run --jobs``) and the tests (pytest-xdist workers):
#: one per core, up to 4; each gets an equal share of the torch threads (one each on 2 cores)
JOBS = str(max(1, min(4, os.cpu_count() or 1)))


@nox.session
def benchmark(session: nox.Session) -> None:
    """Train the zoo, run the default suite in one process per core (up to 4), then render the
    leaderboard into public/."""
    install(session)
    session.run("python", "-m", "bench", "run", "--suite", "mnist5k", "--jobs", JOBS,
                *session.posargs)
    session.run("python", "-m", "leaderboard", "--out", "public")


@nox.session
def oracle(session: nox.Session) -> None:
    """Exact ground truth (HiGHS) for the BNN-WAQ MLPs and every attack's gap to it: the
    mnist5k-oracle suite in one process per core (under 30 minutes on 2 cores), then the
    leaderboard into public/."""
    install(session)
    session.run("python", "-m", "bench", "run", "--suite", "mnist5k-oracle", "--jobs", JOBS,
                *session.posargs)
    session.run("python", "-m", "leaderboard", "--out", "public")


def ensure_fashion_mnist(session: nox.Session) -> None:
    """Fashion-MNIST ships offline as Debian's dataset-fashion-mnist package (the folder is
    zoo.data.DEBIAN_FASHION_MNIST; the project is not importable from here)."""
    if os.path.isdir("/usr/share/datasets/fashion-mnist") or "--data-root" in session.posargs:
        return
    apt_install(session, "dataset-fashion-mnist", "Fashion-MNIST not found: apt-get install "
                "dataset-fashion-mnist, or pass -- --data-root DIR with the four IDX files")


@nox.session
def fashion(session: nox.Session) -> None:
    """Train the Fashion-MNIST zoo, run the fashion-mnist suite, render the site."""
    install(session)
    ensure_fashion_mnist(session)
    session.run("python", "-m", "bench", "run", "--suite", "fashion-mnist", *session.posargs)
    session.run("python", "-m", "leaderboard", "--out", "public")


@nox.session
def cifar10(session: nox.Session) -> None:
    """The paper's CIFAR-10 suite (needs a GPU and the CIFAR-10 files under --data-root);
    ``-- --executor ray --ray-address auto`` spreads it over a Ray cluster."""
    install(session, "test,ray")
    session.run("python", "-m", "bench", "run", "--suite", "cifar10", "--device", "cuda",
                *session.posargs)
    session.run("python", "-m", "leaderboard", "--out", "public")


@nox.session
def fliprate(session: nox.Session) -> None:
    """IPROP vs PGD / PGD++ and the exact verifier: flip rate over L∞ ε on the BNN-WAQ MLPs
    (about 30 CPU minutes)."""
    install(session)
    session.run(
        "python", "-m", "bench.fliprate", "--models",
        "mnist5k-mlp5x100-bnn-waq,mnist5k-mlp3x512-bnn-waq", "--n", "500", "--threads", "1",
        "--out", "results/records", *session.posargs,
    )


@nox.session
def site(session: nox.Session) -> None:
    """Render the leaderboard from the committed records into public/."""
    install(session)
    session.run("python", "-m", "leaderboard", "--out", "public", *session.posargs)


@nox.session
def perf(session: nox.Session) -> None:
    """Attack timings against the committed baseline and against the peers (pytest-benchmark).

    torchattacks is a peer here only: it pins an old ``requests``, so it is installed without
    its dependencies, in this session's virtualenv alone.
    """
    install(session)
    session.install("--no-deps", "torchattacks==3.5.1")
    session.run(
        "pytest", "benchmarks", "--benchmark-enable", f"--benchmark-storage={PERF_STORAGE}",
        "--benchmark-compare", "--benchmark-compare-fail=median:25%",
        "--benchmark-columns=min,median,mean,rounds", *session.posargs,
    )


@nox.session
def lint(session: nox.Session) -> None:
    session.install(*constraints_args(), "ruff")
    session.run("ruff", "check", ".")


@nox.session(reuse_venv=False)
def lock(session: nox.Session) -> None:
    """Regenerate constraints.txt: resolve the project with every extra, unconstrained, in a
    fresh virtualenv, and pin what pip chose (the file's header comment is kept)."""
    session.install("-e", f".[{ALL_EXTRAS}]")
    frozen = session.run("python", "-m", "pip", "freeze", "--exclude-editable", silent=True)
    path = Path(CONSTRAINTS)
    header = [line for line in path.read_text().splitlines() if line.startswith("#")] \
        if path.is_file() else []
    pins = sorted((line for line in frozen.splitlines() if "==" in line), key=str.lower)
    path.write_text("\n".join(header + pins) + "\n")
    session.log(f"{CONSTRAINTS}: {len(pins)} pins")
