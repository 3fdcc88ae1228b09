"""Disk errors: a stage that cannot write its artifact fails with exit 6 and a
clear message, leaves no partial artifact and no staging dir, and the next
build (with space again) produces the same artifacts as an undisturbed one.

Two ways to run out of room:

- ``RLIMIT_FSIZE`` (always available): the kernel refuses to grow any file of
  the build process past 512 bytes — every stage's manifest is bigger — and,
  with SIGXFSZ ignored, ``write()`` fails with EFBIG, which the product treats
  like ENOSPC/EDQUOT. Every stage is run that way.
- a real full disk: a tiny tmpfs in a private user+mount namespace
  (``unshare -rm``), skipped where the kernel does not allow that.
"""

from __future__ import annotations

import json
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.reliability.conftest import Reference
from tests.reliability.harness import (
    STAGES,
    audit_store,
    base_env,
    build_results,
    code_root,
    forge,
    record,
    staging_leftovers,
)

pytestmark = pytest.mark.reliability
FILE_LIMIT = 512
_SEEN: dict[str, list[str]] = {"rlimit": [], "tmpfs": []}


def _small_files_only() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG from write() instead of a kill
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_LIMIT, FILE_LIMIT))


def big_writers(ref: Reference) -> list[str]:
    """Stages of the reference build that write more than 64 KiB of files of their own."""
    out = []
    for stage in ref.stages:
        key = ref.results[stage][0].split(":", 1)[1]
        manifest = json.loads((ref.home / "artifacts" / stage / key / "manifest.json").read_text())
        if sum(meta["size"] for meta in manifest["files"].values()) > 64 << 10:
            out.append(stage)
    return out


def clean_failure(text: str, code: int) -> None:
    assert code == 6, f"exit {code}:\n{text}"
    assert "Traceback" not in text and "internal error" not in text, text
    assert "out of disk space" in text, text


@pytest.fixture(scope="module", autouse=True)
def _record() -> object:
    yield
    record("disk", {"rlimit_stages": _SEEN["rlimit"], "tmpfs_stages": _SEEN["tmpfs"]})


def test_file_size_limit_in_every_stage(reference: Reference, tmp_path: Path) -> None:
    for stage in reference.stages:
        home = tmp_path / stage
        if stage != STAGES[0]:
            previous = STAGES[STAGES.index(stage) - 1]
            assert forge(home, "build", str(reference.recipe), "--until", previous).code == 0
        full = forge(
            home, "build", str(reference.recipe), "--until", stage, preexec_fn=_small_files_only
        )
        clean_failure(full.text, full.code)
        assert audit_store(home) == [] and staging_leftovers(home) == []
        assert not (home / "artifacts" / stage).exists() or not any(
            (home / "artifacts" / stage).iterdir()
        )
        again = build_results(
            forge(home, "build", str(reference.recipe), "--until", stage, "--json")
        )
        want = {s: reference.results[s] for s in again}
        assert reference.stable_results(again) == reference.stable_results(want)
        _SEEN["rlimit"].append(stage)


def _can_mount_tmpfs(tmp_path: Path) -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = tmp_path / "probe"
    probe.mkdir()
    cmd = ["unshare", "-rm", "mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)]
    return subprocess.run(cmd, capture_output=True).returncode == 0


def test_real_full_disk_on_a_tiny_tmpfs(reference: Reference, tmp_path: Path) -> None:
    if not _can_mount_tmpfs(tmp_path):
        pytest.skip("unprivileged user+mount namespaces are not available here")
    stages = big_writers(reference)
    assert "convert" in stages
    for stage in stages:
        previous = STAGES[STAGES.index(stage) - 1]
        work = tmp_path / stage
        cmd = [
            "unshare",
            "-rm",
            sys.executable,
            "-m",
            "tests.reliability.enospc",
            str(reference.recipe),
            stage,
            previous,
            str(work),
        ]
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            cwd=code_root(),
            env=base_env(work / "unused"),
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        seen = json.loads(proc.stdout.strip().splitlines()[-1])
        clean_failure(seen["stderr"] + seen["stdout"], seen["code"])
        assert seen["audit"] == [] and seen["leftovers"] == [] and seen["stage_dirs"] == []
        assert seen["rerun_code"] == 0, seen["rerun"]
        rerun = {s: tuple(v) for s, v in seen["rerun"].items()}
        want = {s: reference.results[s] for s in rerun}
        assert reference.stable_results(rerun) == reference.stable_results(want)
        _SEEN["tmpfs"].append(stage)
