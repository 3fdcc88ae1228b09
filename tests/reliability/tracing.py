"""Which paths a process tree writes, seen from the kernel's side (strace).

Python audit hooks would miss writes made by native code (safetensors, blake3,
onnxruntime, torch); ``strace -f`` sees every one. Used to prove a build
writes nothing outside ``$FORGE_HOME`` (and the output dir it was given).
When strace is not installed the caller gets ``None`` and says so.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.reliability.harness import FORGE, Run, base_env, code_root

_SYSCALLS = (
    "open,openat,creat,mkdir,mkdirat,rename,renameat,renameat2,unlink,unlinkat,rmdir,"
    "link,linkat,symlink,symlinkat,truncate,chmod,fchmodat,utimensat"
)
_WRITE_FLAGS = ("O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC", "O_APPEND")
_CALL = re.compile(r"^\d+\s+(\w+)\((.*)\)\s+=\s+(-?\d+)")
_PATH = re.compile(r'(?:(\d+)<([^>]*)>, )?"((?:[^"\\]|\\.)*)"')
# Places any process may write that are not files: terminals, /dev/null, proc knobs.
_HARMLESS = ("/dev/", "/proc/", "/sys/")


def available() -> bool:
    return shutil.which("strace") is not None


def traced_forge(
    home: Path,
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 600,
    cwd: Path | None = None,
    **popen: Any,
) -> tuple[Run, set[str]]:
    """Run the real CLI under ``strace -f``; returns its result and every path it wrote."""
    return traced(home, [*FORGE, *args], env=env, timeout=timeout, cwd=cwd, **popen)


def traced(
    home: Path,
    argv: list[str],
    env: dict[str, str] | None = None,
    timeout: float = 600,
    cwd: Path | None = None,
    **popen: Any,
) -> tuple[Run, set[str]]:
    """Run ``argv`` (FORGE_HOME=home) under ``strace -f``: its result and every path it wrote."""
    log = home.parent / f"strace-{time.monotonic_ns()}.txt"
    cmd = [
        "strace",
        "-f",
        "-qq",
        "-y",
        "-s",
        "4096",
        "-o",
        str(log),
        "-e",
        f"trace={_SYSCALLS}",
        *argv,
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd or code_root(),
        env={**base_env(home), **(env or {})},
        **popen,
    )
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
    return sorted(
        p
        for p in paths
        if not p.startswith(_HARMLESS) and not any(p == r or p.startswith(r + "/") for r in roots)
    )


# -- in-process writes (Python audit hooks) ------------------------------------------
_WRITE_EVENTS = {
    "os.mkdir",
    "os.rename",
    "os.remove",
    "os.rmdir",
    "os.symlink",
    "os.link",
    "os.truncate",
    "os.chmod",
    "os.utime",
    "shutil.rmtree",
    "shutil.copyfile",
}
_FLAGS_THAT_WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_recording: list[set[str]] = []
_hooked: list[bool] = []


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if not _recording:
        return
    if event == "open" and isinstance(args[2], int) and args[2] & _FLAGS_THAT_WRITE:
        paths = [args[0]]
    elif event in _WRITE_EVENTS:
        paths = [a for a in args[:2] if isinstance(a, (str, bytes, os.PathLike))]
    else:
        return
    for path in paths:
        if not isinstance(path, int):
            _recording[-1].add(os.path.abspath(os.fsdecode(path)))


@contextmanager
def python_writes() -> Iterator[set[str]]:
    """Paths this process writes through Python (open for writing, mkdir, rename, ...)
    while the block runs. In-process code only: native writes need ``traced``."""
    if not _hooked:
        sys.addaudithook(_audit)
        _hooked.append(True)
    seen: set[str] = set()
    _recording.append(seen)
    try:
        yield seen
    finally:
        _recording.pop()
