"""constraints.txt pins every dependency at the version that made the committed records."""

from __future__ import annotations

import json
import re
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
#: entries of a record's ``versions`` that name no installable distribution
NOT_DISTRIBUTIONS = {"python", "qbench", "qbench_commit"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep, f"constraints.txt: {line!r} is not an exact pin (NAME==VERSION)"
            pins[_norm(name)] = version.strip()
    return pins


def _requirement_name(req: str) -> str:
    return _norm(re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0])


def test_every_dependency_and_extra_is_pinned() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"],
              *(r for extra in project["optional-dependencies"].values() for r in extra)]
    pins = _pins()
    missing = sorted({_requirement_name(r) for r in wanted} - set(pins))
    assert not missing, f"constraints.txt lacks {missing}: run `nox -s lock`"


def test_records_were_made_with_the_pinned_versions() -> None:
    pins = _pins()
    seen: dict[tuple[str, str], int] = {}
    for path in sorted((ROOT / "results" / "records").glob("*.cells.jsonl")):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            recorded = dict(record.get("versions") or {})
            config = record.get("attack_config") or {}
            recorded.update(config.get("library_versions") or {})
            for name, version in recorded.items():
                if name not in NOT_DISTRIBUTIONS:
                    seen[(_norm(name), version)] = seen.get((_norm(name), version), 0) + 1
    assert seen, "no committed records to check"
    differ = {k: n for k, n in seen.items() if pins.get(k[0]) != k[1]}
    assert not differ, (f"records made with other versions than constraints.txt pins "
                        f"((name, version): cells): {differ}")
