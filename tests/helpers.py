"""Shared test helpers: run the real `forge` CLI, write recipes from dicts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

FORGE = [sys.executable, "-m", "trtllm_forge"]


@dataclass
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def forge(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 600
) -> Run:
    """Run the real CLI in a subprocess (inherits the test's FORGE_HOME etc.)."""
    proc = subprocess.run(
        [*FORGE, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    return Run(proc.returncode, proc.stdout, proc.stderr)


def write_recipe(path: Path, **sections: Any) -> Path:
    doc: dict[str, Any] = {"schema_version": 1, "name": "t"}
    doc.update(sections)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def assert_clean_error(run: Run, code: int, *fragments: str) -> None:
    """A user error: the documented exit code, the fragments, and no traceback."""
    text = run.err + run.out
    assert run.code == code, f"exit {run.code} != {code}\n{text}"
    assert "Traceback" not in text, text
    for fragment in fragments:
        assert fragment in text, f"{fragment!r} not in:\n{text}"


def hub_cache(cache: Path, repo: str, files: dict[str, bytes]) -> str:
    """A real huggingface_hub cache layout (blobs, refs/main, snapshot symlinks) holding one
    commit of ``repo`` with ``files``; returns the commit sha."""
    import hashlib

    storage = cache / f"models--{repo.replace('/', '--')}"
    sha = hashlib.sha1(repo.encode()).hexdigest()
    (storage / "refs").mkdir(parents=True)
    (storage / "refs" / "main").write_text(sha)
    snap = storage / "snapshots" / sha
    snap.mkdir(parents=True)
    (storage / "blobs").mkdir()
    for name, data in files.items():
        blob = storage / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snap / name).symlink_to(Path("../../blobs") / blob.name)
    return sha
