"""trtllm backend: run TensorRT-LLM's own ``trtllm-build`` on the per-rank checkpoint.

Needs a TensorRT-LLM release that still ships the TensorRT engine path (≤ 1.2,
see docs/trtllm-checkpoint.md). Forge only assembles the command line from the recipe's limits and
plugin switches (validated in plugins.py) and records what it ran.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trtllm_forge.context import NullProgress, Progress
from trtllm_forge.engine.backends.plugins import effective_switches
from trtllm_forge.engine.metadata import engine_metadata, write_metadata
from trtllm_forge.engine.spec import read_checkpoint
from trtllm_forge.errors import ExitCode, ForgeError, dependency_error

if TYPE_CHECKING:
    from trtllm_forge.engine.backends.options import BuildOptions

NAME = "trtllm"
EXECUTABLE = "trtllm-build"
TOOLS = ("tensorrt-llm", "tensorrt")
INSTALL_HINT = (
    "install a TensorRT-LLM release that still ships trtllm-build (<= 1.2, e.g. "
    "pip install 'tensorrt-llm<1.3' on a CUDA machine), or use backend onnxruntime"
)
_NO_PROGRESS = NullProgress()


def unavailable_reason() -> str | None:
    if shutil.which(EXECUTABLE) is None:
        return (
            f"{EXECUTABLE} is not on PATH (TensorRT-LLM with its TensorRT backend is not installed)"
        )
    return None


def trtllm_build_argv(
    checkpoint_dir: Path, out_dir: Path, options: BuildOptions, *, executable: str = EXECUTABLE
) -> list[str]:
    """The full trtllm-build command: limits plus every plugin/feature switch, made explicit.

    Switches the recipe leaves out are passed with trtllm-build's own defaults, so the
    command in engine.json says exactly what was built whatever the release's defaults.
    """
    argv = [
        executable,
        "--checkpoint_dir", str(checkpoint_dir),
        "--output_dir", str(out_dir),
        "--max_batch_size", str(options.max_batch_size),
        "--max_input_len", str(options.max_input_len),
        "--max_seq_len", str(options.max_seq_len),
    ]  # fmt: skip
    for name, value in sorted(effective_switches(options.plugins).items()):
        argv += [f"--{name}", value]
    return argv


def build(
    checkpoint_dir: Path, out_dir: Path, options: BuildOptions, *, progress: Progress = _NO_PROGRESS
) -> dict[str, Any]:
    ckpt = read_checkpoint(checkpoint_dir)
    executable = shutil.which(EXECUTABLE)
    if executable is None:
        raise dependency_error(f"trtllm backend: {unavailable_reason()}", hint=INSTALL_HINT)
    argv = trtllm_build_argv(checkpoint_dir, out_dir, options, executable=executable)
    progress.log(f"running {' '.join(argv)}")
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    (out_dir / "trtllm-build.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise ForgeError(
            ExitCode.INTERNAL,
            f"trtllm-build exited with {done.returncode}: {' | '.join(tail)}",
            hint=f"full log: {out_dir / 'trtllm-build.log'}",
        )
    meta = engine_metadata(
        ckpt, backend=NAME, limits=options.limits(), plugins=dict(options.plugins), tools=TOOLS
    )
    meta["engines"] = [
        {
            "rank": r.rank,
            "file": f"rank{r.rank}.engine",
            "bytes": _size(out_dir / f"rank{r.rank}.engine"),
        }
        for r in ckpt.ranks
    ]
    meta["trtllm"] = {"argv": [EXECUTABLE, *argv[1:]]}
    write_metadata(out_dir, meta)
    return meta


def _size(path: Path) -> int | None:
    return path.stat().st_size if path.is_file() else None
