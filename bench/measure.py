"""Measuring tools: timed child processes with peak RSS, page-cache eviction, machine facts."""

from __future__ import annotations

import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.lib import ROOT

GB = 1e9


@dataclass
class Run:
    """One timed child process."""

    argv: list[str]
    seconds: float
    returncode: int
    max_rss_bytes: int  # the child's peak resident set (see _child_peak)
    peak_anon_bytes: int  # sampled: the largest resident non-file-backed memory seen
    cpu_seconds: float
    stdout: str = ""
    stderr: str = ""

    @property
    def command(self) -> str:
        return shlex.join(self.argv)


def run(
    argv: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    check: bool = True,
) -> Run:
    """Run ``argv`` to completion; wall time, CPU time and peak memory of the child."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        list(argv), env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    sampler = _AnonSampler(proc.pid)
    sampler.start()
    out, err = _drain(proc)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    sampler.stop()
    proc.returncode = os.waitstatus_to_exitcode(status)
    result = Run(
        list(argv),
        seconds,
        proc.returncode,
        _child_peak(usage.ru_maxrss * 1024, sampler.peak_hwm),
        sampler.peak,
        usage.ru_utime + usage.ru_stime,
        out,
        err,
    )
    if check and result.returncode != 0:
        said = (err or out)[-4000:]  # a --json command puts its refusal on stdout
        raise RuntimeError(f"{result.command} exited {result.returncode}:\n{said}")
    return result


def _child_peak(ru_maxrss: int, sampled_hwm: int) -> int:
    """The child's peak RSS. Linux keeps the high-water mark of the memory a process had
    before ``exec`` (this process's, shared by vfork or copied by fork) in its ru_maxrss,
    so a child of a big parent reports the parent's memory: a harness that had built a
    2 GB model in-process saw 3.76 GiB for a verify whose own peak was 3.15 GiB. Where
    ru_maxrss may be that inherited figure (not above this process's own peak), the
    child's own mark sampled from /proc (VmHWM, reset at exec) is taken instead; a child
    too short to be sampled keeps ru_maxrss, an upper bound."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return ru_maxrss if ru_maxrss > own or not sampled_hwm else sampled_hwm


def _drain(proc: subprocess.Popen[str]) -> tuple[str, str]:
    """Read both pipes without reaping the child (wait4 must collect its rusage)."""
    chunks: dict[str, list[str]] = {"out": [], "err": []}

    def pump(stream: object, key: str) -> None:
        assert stream is not None
        for line in stream:  # type: ignore[attr-defined]
            chunks[key].append(line)

    threads = [
        threading.Thread(target=pump, args=(proc.stdout, "out")),
        threading.Thread(target=pump, args=(proc.stderr, "err")),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return "".join(chunks["out"]), "".join(chunks["err"])


class _AnonSampler(threading.Thread):
    """Polls /proc/PID/status for RssAnon (memory the process owns, as opposed to file
    pages it has mapped, which the kernel can drop at any time) and VmHWM (its peak
    resident set since exec; growth in the last interval before it exits is missed)."""

    def __init__(self, pid: int, interval_s: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval_s, self.peak, self.peak_hwm = pid, interval_s, 0, 0
        self._done = threading.Event()

    def run(self) -> None:
        path = f"/proc/{self.pid}/status"
        while not self._done.is_set():
            try:
                with open(path) as fh:
                    for line in fh:
                        if line.startswith("RssAnon:"):
                            self.peak = max(self.peak, int(line.split()[1]) * 1024)
                        elif line.startswith("VmHWM:"):
                            self.peak_hwm = max(self.peak_hwm, int(line.split()[1]) * 1024)
            except OSError:
                return
            self._done.wait(self.interval_s)

    def stop(self) -> None:
        self._done.set()
        self.join()


@dataclass
class Repeated:
    """Wall times of one command run several times (min and median reported)."""

    command: str
    seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)  # user + system of the child

    @property
    def best(self) -> float:
        return min(self.seconds)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def repeat(
    argv: Sequence[str],
    times: int,
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    warmup: int = 1,
) -> Repeated:
    for _ in range(warmup):
        run(argv, env=env, cwd=cwd)
    rep = Repeated(shlex.join(argv))
    for _ in range(times):
        result = run(argv, env=env, cwd=cwd)
        rep.seconds.append(result.seconds)
        rep.cpu_seconds.append(result.cpu_seconds)
    return rep


# -- page cache -------------------------------------------------------------
def evict(paths: Iterable[Path]) -> None:
    """Drop the files' pages from the page cache so the next read comes from disk.

    posix_fadvise(DONTNEED) needs no privileges, but only drops clean pages, so
    each file is flushed first.
    """
    for path in _files(paths):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def cached_fraction(paths: Iterable[Path]) -> float:
    """Share of the files' bytes currently in the page cache (mincore)."""
    import mmap

    total = cached = 0
    for path in _files(paths):
        size = path.stat().st_size
        if size == 0:
            continue
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY) as mm:
            cached += _resident(mm, size)
        total += size
    return cached / total if total else 1.0


def _resident(mm: object, size: int) -> int:
    import ctypes
    import ctypes.util

    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    page = os.sysconf("SC_PAGE_SIZE")
    pages = (size + page - 1) // page
    vec = (ctypes.c_ubyte * pages)()
    # A private (copy-on-write) mapping: ctypes needs a writable buffer for the address,
    # and untouched private pages report the page cache's residency.
    buf = ctypes.c_char.from_buffer(mm)  # type: ignore[arg-type]
    try:
        if libc.mincore(ctypes.c_void_p(ctypes.addressof(buf)), ctypes.c_size_t(size), vec) != 0:
            return 0
    finally:
        del buf
    return sum(1 for v in vec if v & 1) * page


def _files(paths: Iterable[Path]) -> list[Path]:
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out.extend(sorted(p for p in path.rglob("*") if p.is_file()))
        elif path.is_file():
            out.append(path)
    return out


def tree_bytes(paths: Iterable[Path]) -> int:
    return sum(p.stat().st_size for p in _files(paths))


# -- machine facts ----------------------------------------------------------
def machine() -> dict[str, str]:
    info = {
        "cpu": _cpu_model(),
        "cores": str(os.cpu_count()),
        "ram": f"{_meminfo_gb('MemTotal'):.1f} GB",
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "torch": _version("torch"),
        "safetensors": _version("safetensors"),
        "blake3": _version("blake3"),
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    info["disk"] = _disk_description(ROOT / "bench")
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _meminfo_gb(key: str) -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024 / GB
    return 0.0


def _version(package: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "absent"


def _disk_description(path: Path) -> str:
    st = os.statvfs(path)
    free = st.f_bavail * st.f_frsize / GB
    size = st.f_blocks * st.f_frsize / GB
    out = subprocess.run(
        ["df", "--output=source,fstype", str(path)], capture_output=True, text=True
    )
    source = " ".join(out.stdout.split()[2:]) if out.returncode == 0 else "?"
    rotational = "?"
    dev = source.split()[0].rsplit("/", 1)[-1] if source != "?" else ""
    rot = Path(f"/sys/block/{dev}/queue/rotational")
    if rot.exists():
        rotational = "rotational" if rot.read_text().strip() == "1" else "non-rotational"
    return f"{source} ({rotational} as reported by the kernel), {size:.0f} GB, {free:.0f} GB free"


def self_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def python() -> str:
    return sys.executable
