"""The default backend: lower to ONNX and write engine.json; ONNX Runtime runs it.

"Building" is lowering plus metadata: ORT compiles each segment when a session is
created (runtime.py), so the engine directory is portable across CPUs.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trtllm_forge.context import NullProgress, Progress

if TYPE_CHECKING:
    from trtllm_forge.engine.backends.options import BuildOptions

_NO_PROGRESS = NullProgress()

NAME = "onnxruntime"
TOOLS = ("onnx", "onnxruntime")


def unavailable_reason() -> str | None:
    # find_spec, not import: this runs on every build's key computation, cached or not,
    # and importing onnxruntime (or the lowering, which pulls in torch) costs seconds.
    if importlib.util.find_spec("onnxruntime") is None:  # pragma: no cover - a declared dependency
        return "onnxruntime is not installed (pip install onnxruntime)"
    return None


def build(
    checkpoint_dir: Path, out_dir: Path, options: BuildOptions, *, progress: Progress = _NO_PROGRESS
) -> dict[str, Any]:
    # Imported here, like the lowering: every build's key computation imports this module
    # (unavailable_reason), and a no-op build writes no engine.
    from trtllm_forge.engine.metadata import engine_metadata, write_metadata
    from trtllm_forge.engine.onnx.lower import OrtProfile, lower_checkpoint
    from trtllm_forge.engine.onnx.ort.matmul import ACCURACY_INT8
    from trtllm_forge.engine.spec import read_checkpoint

    ckpt = read_checkpoint(checkpoint_dir)
    meta = engine_metadata(
        ckpt, backend=NAME, limits=options.limits(), plugins=dict(options.plugins), tools=TOOLS
    )
    # The ort profile's rope tables cover exactly the positions the limits allow.
    ort = (
        OrtProfile(
            options.max_seq_len,
            ACCURACY_INT8 if options.int8_activations else 0,
            options.compute_dtype,
        )
        if options.profile == "ort"
        else None
    )
    meta["onnx"] = {
        "root": ".",
        # share: an engine built from the store's (read-only) shard references its bytes
        # instead of holding a second copy (engine/onnx/shared.py; issue 19).
        **lower_checkpoint(checkpoint_dir, out_dir, progress=progress, ort=ort, share=True),
    }
    write_metadata(out_dir, meta)
    progress.log(f"onnxruntime engine: {len(ckpt.ranks)} rank graph(s) in {out_dir}")
    return meta
