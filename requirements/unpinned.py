"""The dependency names of pyproject.toml without their ranges, for `make test-latest`.

    python requirements/unpinned.py                 # names to install at their newest release
    python requirements/unpinned.py --drift PYTHON  # what moved from the lock in PYTHON's venv

torch is left out: only the CPU build on this machine's disk may be installed (any other
release pulls a multi-GB CUDA build), so it stays at the locked version.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
KEPT = {"torch"}
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._\-]*)(\[[^\]]*\])?")
# Installers and the stubs installed beside the lock: not part of the tested set's drift.
_TOOLING = {"pip", "setuptools", "wheel", "tensorrt-stubs"}


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def names() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    found = {_normal(m.group(1)): m.group(2) or "" for spec in specs if (m := _NAME.match(spec))}
    skipped = KEPT | {_normal(project["name"])}
    return sorted(name + extras for name, extras in found.items() if name not in skipped)


def _pins(lines: list[str]) -> dict[str, str]:
    pins = {}
    for line in lines:
        if "==" in line and not line.startswith((" ", "#")):
            name, version = line.split("==", 1)
            pins[_normal(name)] = version.split()[0].rstrip("\\")
    return pins


def drift(python: str) -> list[str]:
    locked = _pins((ROOT / "requirements" / "lock.txt").read_text().splitlines())
    frozen = subprocess.run(
        [python, "-m", "pip", "freeze", "--exclude-editable", "--all"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    installed = _pins(frozen)
    rows = []
    direct = {_NAME.match(name).group(1) for name in names()}  # type: ignore[union-attr]
    for name in sorted((set(locked) | set(installed)) - _TOOLING):
        old, new = locked.get(name, "-"), installed.get(name, "-")
        if old != new:
            mark = " (direct)" if name in direct else ""
            rows.append(f"{name}: locked {old} -> newest {new}{mark}")
    return rows or ["no drift: the newest releases are the locked ones"]


if __name__ == "__main__":
    if sys.argv[1:2] == ["--drift"]:
        print("\n".join(drift(sys.argv[2])))
    else:
        print(" ".join(names()))
