"""Which paths a process tree writes, seen from the kernel's side (strace).

Python audit hooks would miss writes made by native code (safetensors, blake3,
onnxruntime, torch); ``strace -f`` sees every one. Used to prove a build
writes nothing outside ``$FORGE_HOME`` (and the output dir it was given).
When strace is not installed the caller gets ``None`` and says so.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

from tests.reliability.harness import FORGE, Run, base_env, code_root

_SYSCALLS = ("open,openat,creat,mkdir,mkdirat,rename,renameat,renameat2,unlink,unlinkat,rmdir,"
             "link,linkat,symlink,symlinkat,truncate,chmod,fchmodat,utimensat")
_WRITE_FLAGS = ("O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC", "O_APPEND")
_CALL = re.compile(r'^\d+\s+(\w+)\((.*)\)\s+=\s+(-?\d+)')
_PATH = re.compile(r'(?:(\d+)<([^>]*)>, )?"((?:[^"\\]|\\.)*)"')
# Places any process may write that are not files: terminals, /dev/null, proc knobs.
_HARMLESS = ("/dev/", "/proc/", "/sys/")


def available() -> bool:
    return shutil.which("strace") is not None


def traced_forge(home: Path, *args: str, env: dict[str, str] | None = None,
                 timeout: float = 600) -> tuple[Run, set[str]]:
    """Run the real CLI under ``strace -f``; returns its result and every path it wrote."""
    log = home.parent / f"strace-{time.monotonic_ns()}.txt"
    cmd = ["strace", "-f", "-qq", "-y", "-s", "4096", "-o", str(log), "-e", f"trace={_SYSCALLS}", *FORGE, *args]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=code_root(),
                          env={**base_env(home), **(env or {})})
    run = Run(proc.returncode, proc.stdout, proc.stderr, time.perf_counter() - t0)
    return run, written_paths(log.read_text(errors="replace"))


def written_paths(trace: str) -> set[str]:
    out: set[str] = set()
    for line in trace.splitlines():
        match = _CALL.match(line)
        if not match or int(match.group(3)) < 0:
            continue  # failed calls changed nothing
        name, argv = match.group(1), match.group(2)
        if name in ("open", "openat") and not any(flag in argv for flag in _WRITE_FLAGS):
            continue
        for dir_fd, dir_path, rel in _PATH.findall(argv):
            path = rel if rel.startswith("/") or not dir_fd else f"{dir_path}/{rel}"
            out.add(path)
    return out


def outside(paths: set[str], *allowed: Path) -> list[str]:
    roots = [str(Path(a).resolve()) for a in allowed]
    return sorted(p for p in paths
                  if not p.startswith(_HARMLESS)
                  and not any(p == r or p.startswith(r + "/") for r in roots))
