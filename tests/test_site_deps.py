"""Rendering the site needs no torch: the renderer imports only what the ``[site]`` extra lists
(and their own dependencies), which is all the Pages workflow installs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]

#: Render the committed records with torch (and the attack libraries) made unimportable, then
#: report the distributions of every third-party module the renderer imported.
SCRIPT = r"""
import json, sys
for blocked in ("torch", "torchvision", "foolbox", "pyautoattack", "eagerpy", "numba"):
    sys.modules[blocked] = None  # `import torch` now raises ImportError
from importlib import metadata
from leaderboard import build_site
build_site(sys.argv[2], sys.argv[1])
dists = metadata.packages_distributions()
used = sorted({d for name, mod in list(sys.modules.items()) if mod is not None
            for d in dists.get(name.split(".")[0], [])})
print(json.dumps(used))
"""


def _name(requirement: str) -> str:
    return re.split(r"[ ;<>=!~\[]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _closure(names: set[str]) -> set[str]:
    """The distributions ``names`` need, transitively (installed ones only; no extras)."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            reqs = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        todo.extend(_name(r) for r in reqs if "extra ==" not in r)
    return seen


def test_the_site_renders_without_torch_from_the_site_extra_alone(tmp_path):
    records = tmp_path / "records"  # a slice of the committed records: quick to render
    records.mkdir()
    src = ROOT / "results" / "records"
    lines = (src / "mnist5k.cells.jsonl").read_text(encoding="utf-8").splitlines(True)
    (records / "mnist5k.cells.jsonl").write_text("".join(lines[-80:]), encoding="utf-8")
    (records / "mnist5k.models.jsonl").write_bytes((src / "mnist5k.models.jsonl").read_bytes())
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "public"),
                           str(records)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "public" / "index.html").exists()
    assert (tmp_path / "public" / "paper.html").exists()
    # setuptools: its start-up hook (_distutils_hack) is loaded in every virtualenv
    used = {_name(d) for d in json.loads(proc.stdout.strip().splitlines()[-1])} - {
        "qbench", "setuptools", "pip"}
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]["site"]
    allowed = _closure({_name(r) for r in extra})
    assert "torch" not in used
    assert used <= allowed, f"the renderer imports {sorted(used - allowed)}, not in [site]"
    workflow = (ROOT / ".github" / "workflows" / "pages.yml").read_text()
    assert "pip install --no-deps ." in workflow and "['site']" in workflow
