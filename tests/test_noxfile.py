"""The noxfile's install step, with the real nox and pip on a tiny probe project: pip runs
once per pyproject.toml, constraints and extras, a rerun skips it, and the constraints' pins
are what gets installed."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOX = shutil.which("nox")

PROBE_NOXFILE = """
import importlib.util

import nox

spec = importlib.util.spec_from_file_location("qbench_noxfile", {noxfile!r})
qbench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(qbench)


@nox.session(venv_backend="venv")
def probe(session):
    qbench.install(session, "extra")
    session.run("python", "-c", "import stamp_probe")


@nox.session(venv_backend="venv")
def pinned(session):
    qbench.install(session, "extra")
    session.run("python", "-c", "import importlib.metadata as m; "
                "print('six is', m.version('six'))")
"""

PROBE_PYPROJECT = """
[build-system]
requires = ["setuptools"]
build-backend = "setuptools.build_meta"

[project]
name = "stamp-probe"
version = "0"

[project.optional-dependencies]
extra = []
"""


def _nox(cwd: Path, session: str = "probe") -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "NOX"))}
    done = subprocess.run([NOX, "-s", session], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def _probe(root: Path, pyproject: str = PROBE_PYPROJECT) -> None:
    (root / "noxfile.py").write_text(PROBE_NOXFILE.format(noxfile=str(ROOT / "noxfile.py")))
    (root / "pyproject.toml").write_text(pyproject)
    (root / "stamp_probe").mkdir()
    (root / "stamp_probe" / "__init__.py").write_text("")


@pytest.mark.slow
@pytest.mark.skipif(NOX is None, reason="nox is not on PATH (CI runs the tests through nox)")
def test_install_runs_pip_once_per_pyproject(tmp_path: Path) -> None:
    _probe(tmp_path)

    first = _nox(tmp_path)
    assert "pip install -e '.[extra]'" in first
    stamp = next((tmp_path / ".nox").glob("probe/qbench-installed.txt")).read_text()
    assert stamp.endswith(" [extra]")

    again = _nox(tmp_path)  # nothing changed: no pip run, the project still imports
    assert "pip install" not in again
    assert "pip skipped" in again

    with (tmp_path / "pyproject.toml").open("a") as f:  # a changed pyproject installs anew
        f.write("# changed\n")
    changed = _nox(tmp_path)
    assert "pip install -e '.[extra]'" in changed
    assert next((tmp_path / ".nox").glob("probe/qbench-installed.txt")).read_text() != stamp


@pytest.mark.slow
@pytest.mark.skipif(NOX is None, reason="nox is not on PATH (CI runs the tests through nox)")
def test_install_takes_the_versions_of_constraints_txt(tmp_path: Path) -> None:
    # the extra asks for any six; the constraints pin an old one, and a changed pin reinstalls
    _probe(tmp_path, PROBE_PYPROJECT.replace("extra = []", 'extra = ["six"]'))
    (tmp_path / "constraints.txt").write_text("# pins\nsix==1.15.0\n")
    first = _nox(tmp_path, "pinned")
    assert "pip install -c constraints.txt -e '.[extra]'" in first
    assert "six is 1.15.0" in first

    (tmp_path / "constraints.txt").write_text("# pins\nsix==1.16.0\n")
    changed = _nox(tmp_path, "pinned")
    assert "pip skipped" not in changed
    assert "six is 1.16.0" in changed
