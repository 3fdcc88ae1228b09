"""The default backend: lower to ONNX and write engine.json; ONNX Runtime runs it.

"Building" is lowering plus metadata: ORT compiles each segment when a session is
created (runtime.py), so the engine directory is portable across CPUs.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from trtllm_forge.context import NullProgress, Progress
from trtllm_forge.engine.metadata import engine_metadata, write_metadata
from trtllm_forge.engine.onnx.lower import lower_checkpoint
from trtllm_forge.engine.spec import read_checkpoint

if TYPE_CHECKING:
    from trtllm_forge.engine.backends import BuildOptions

_NO_PROGRESS = NullProgress()

NAME = "onnxruntime"
TOOLS = ("onnx", "onnxruntime")


def unavailable_reason() -> str | None:
    try:
        import onnxruntime  # type: ignore[import-untyped,unused-ignore]  # noqa: F401
    except ImportError as exc:  # pragma: no cover - a declared dependency
        return f"onnxruntime is not importable: {exc}"
    return None


def build(
    checkpoint_dir: Path, out_dir: Path, options: BuildOptions, *, progress: Progress = _NO_PROGRESS
) -> dict[str, Any]:
    ckpt = read_checkpoint(checkpoint_dir)
    meta = engine_metadata(
        ckpt, backend=NAME, limits=options.limits(), plugins=dict(options.plugins), tools=TOOLS
    )
    meta["onnx"] = {"root": ".", **lower_checkpoint(checkpoint_dir, out_dir, progress=progress)}
    write_metadata(out_dir, meta)
    progress.log(f"onnxruntime engine: {len(ckpt.ranks)} rank graph(s) in {out_dir}")
    return meta
