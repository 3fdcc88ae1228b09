"""Write trtllm_forge/data/tested_versions.json from requirements/lock.txt.

forge names the tested version of a library when that library fails inside a stage
(trtllm_forge/thirdparty.py); `make lock` runs this after pip-compile so the two agree.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s\\;]+)")


def pins(lock: Path) -> dict[str, str]:
    found = {}
    for line in lock.read_text().splitlines():
        match = PIN.match(line)
        if match:
            found[match.group(1).lower().replace("_", "-")] = match.group(2)
    return dict(sorted(found.items()))


def main(
    lock: str = "requirements/lock.txt", out: str = "trtllm_forge/data/tested_versions.json"
) -> None:
    doc = {"source": lock, "versions": pins(Path(lock))}
    Path(out).write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:])
