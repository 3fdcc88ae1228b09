"""``forge export triton``: pick the repository layout for what the recipe built."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trtllm_forge.errors import recipe_error
from trtllm_forge.exporters import ExportSource


def export(source: ExportSource, dest: Path) -> dict[str, Any]:
    if source.kind == "onnx-engine":
        from trtllm_forge_triton.python_model import write_python_model as write
    elif source.kind == "hf-checkpoint":
        from trtllm_forge_triton.llmapi import write_llmapi_model as write
    elif source.kind == "trtllm-checkpoint":
        from trtllm_forge_triton.ensemble import write_ensemble as write
    else:
        raise recipe_error(f"forge export triton cannot deploy a {source.kind} artifact")
    doc = write(source, dest)
    return {"dest": str(dest), **doc}
