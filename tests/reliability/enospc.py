"""Run inside ``unshare --user --map-root-user --mount``: a real full disk.

    python -m tests.reliability.enospc RECIPE STAGE PREVIOUS WORKDIR

Mounts a tmpfs at WORKDIR/home (private to this mount namespace, gone when the
process exits), builds up to PREVIOUS, shrinks the tmpfs to what is used plus
a few KiB, builds up to STAGE (which must fail with exit 6), audits the store,
grows the tmpfs and builds again. Prints one JSON document with what it saw;
the test asserts on it (tests/reliability/test_disk.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.reliability.harness import audit_store, build_results, forge, staging_leftovers

MARGIN = 0  # not one more page: the next data write of the stage fails


def mount(home: Path, size: int, remount: bool = False) -> None:
    options = f"size={size}" + (",remount" if remount else "")
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(home)], check=True)


def used(home: Path) -> int:
    st = os.statvfs(home)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def main(recipe: str, stage: str, previous: str, workdir: str) -> None:
    home = Path(workdir) / "home"
    home.mkdir(parents=True, exist_ok=True)
    mount(home, 256 << 20)
    first = forge(home, "build", recipe, "--until", previous)
    assert first.code == 0, first.text
    limit = used(home) + MARGIN
    mount(home, limit, remount=True)
    full = forge(home, "build", recipe, "--until", stage, "--json")
    seen = {
        "limit": limit,
        "code": full.code,
        "stderr": full.err[-3000:],
        "stdout": full.out[-3000:],
        "audit": audit_store(home),
        "leftovers": staging_leftovers(home),
        "stage_dirs": [p.name for p in (home / "artifacts" / stage).glob("*")]
        if (home / "artifacts" / stage).exists()
        else [],
    }
    mount(home, 256 << 20, remount=True)
    again = forge(home, "build", recipe, "--until", stage, "--json")
    seen["rerun_code"] = again.code
    seen["rerun"] = (
        {k: list(v) for k, v in build_results(again).items()} if again.code == 0 else again.text
    )
    print(json.dumps(seen))


if __name__ == "__main__":
    main(*sys.argv[1:5])
