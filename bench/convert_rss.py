"""Peak RSS of `forge build RECIPE --until convert` (default: the SmolLM2-135M recipe).

    python -m bench.convert_rss [RECIPE] [--home DIR]

Runs the real CLI in a fresh FORGE_HOME (so convert really runs), polls the
process tree's resident memory, and prints the peak next to the size of the
converted checkpoint, showing that conversion memory does not scale with the model.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from bench.lib import ROOT


def _anon_rss(pid: int) -> int:
    """Anonymous resident memory (heap, tensors) — unlike RSS it excludes the clean,
    reclaimable page-cache pages of memory-mapped input files."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


def peak_rss(
    cmd: list[str], env: dict[str, str]
) -> tuple[dict[str, int], float, subprocess.CompletedProcess[str]]:
    """Run ``cmd``; return ({rss, anon} peaks in bytes over it and its children, seconds, result)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ps = psutil.Process(proc.pid)
    peak = {"rss": 0, "anon": 0}
    while proc.poll() is None:
        try:
            procs = [ps, *ps.children(recursive=True)]
            peak["rss"] = max(peak["rss"], sum(p.memory_info().rss for p in procs))
            peak["anon"] = max(peak["anon"], sum(_anon_rss(p.pid) for p in procs))
        except (psutil.Error, OSError):
            pass
        time.sleep(0.02)
    out, err = proc.communicate()
    return (
        peak,
        time.perf_counter() - t0,
        subprocess.CompletedProcess(cmd, proc.returncode, out, err),
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", nargs="?", default=str(ROOT / "recipes" / "smollm2-135m.yaml"))
    parser.add_argument("--home", help="FORGE_HOME to use (default: a new temporary one)")
    args = parser.parse_args(argv)
    home = args.home or tempfile.mkdtemp(prefix="forge-rss-")
    env = {**os.environ, "FORGE_HOME": home, "OMP_NUM_THREADS": "1"}
    # fetch first (a GGUF source is dequantized there), so the measurement is convert alone
    fetch = subprocess.run(
        [
            sys.executable,
            "-m",
            "trtllm_forge",
            "build",
            args.recipe,
            "--until",
            "fetch",
            "--json",
            "-q",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    if fetch.returncode:
        sys.exit(f"fetch failed:\n{fetch.stderr}")
    cmd = [
        sys.executable,
        "-m",
        "trtllm_forge",
        "build",
        args.recipe,
        "--until",
        "convert",
        "--json",
        "-q",
    ]
    peak, seconds, result = peak_rss(cmd, env)
    if result.returncode:
        sys.exit(f"convert failed:\n{result.stderr}")
    stages = json.loads(result.stdout)["stages"]
    convert_dir = Path(stages[-1]["path"])
    ckpt_bytes = sum(p.stat().st_size for p in convert_dir.glob("rank*.safetensors"))
    baseline, _, _ = peak_rss([sys.executable, "-c", "import torch, safetensors"], env)
    mib = 2**20
    report = {
        "recipe": args.recipe,
        "convert_seconds": round(seconds, 2),
        "peak_rss_mib": round(peak["rss"] / mib, 1),
        "peak_anon_rss_mib": round(peak["anon"] / mib, 1),
        "baseline_python_torch_rss_mib": round(baseline["rss"] / mib, 1),
        "baseline_python_torch_anon_mib": round(baseline["anon"] / mib, 1),
        "checkpoint_mib": round(ckpt_bytes / mib, 1),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
