"""ONNX engines: one Python-backend model running the engine through forge's runtime.

<dest>/<name>/config.pbtxt       backend python, decoupled, text_input/max_tokens → text_output
<dest>/<name>/1/model.py         models/forge_engine.py
<dest>/<name>/1/engine/          the engine directory (ONNX, engine.json, tokenizer files)
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from trtllm_forge.exporters import ExportSource, materialize
from trtllm_forge_triton.pbtxt import Io, model_config, model_name, write_config

MODELS = Path(__file__).parent / "models"


def write_python_model(source: ExportSource, dest: Path) -> dict[str, Any]:
    name = model_name(source)
    version = dest / name / "1"
    materialize(source.files, version / "engine")
    shutil.copyfile(MODELS / "forge_engine.py", version / "model.py")
    text = model_config(
        name=name,
        backend="python",
        max_batch_size=0,  # one prompt per request; requests run one after another
        decoupled=True,
        inputs=[
            Io("text_input", "TYPE_STRING", (1,)),
            Io("max_tokens", "TYPE_INT32", (1,), optional=True),
        ],
        outputs=[Io("text_output", "TYPE_STRING", (1,))],
        instance_kind="KIND_CPU",
        parameters={
            "engine_dir": "engine",
            "default_max_tokens": str(min(64, int(source.build.get("max_seq_len") or 64))),
        },
    )
    write_config(dest / name, text)
    return {"layout": "python", "models": [name]}
