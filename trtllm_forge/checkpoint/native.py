"""forge's own model of a Hugging Face folder whose architecture transformers does not
ship (Baichuan 2, ChatGLM 2/3; models/native.py says why and what for), weights loaded.

verify's reference (engine/verify.py) and calibration's model (quant/quantize.py) come
from here when the folder's family has one, and from transformers otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trtllm_forge.checkpoint.convert import hf_weight_files, load_hf_config


def native_model(hf_dir: Path) -> Any:
    """The family's own model of ``hf_dir`` (float32, eval mode), or None when transformers
    has a class for it (or forge has no family for it: transformers says what it can)."""
    from trtllm_forge.models.native import load_weights
    from trtllm_forge.models.registry import REGISTRY

    config = load_hf_config(Path(hf_dir))
    archs = config.get("architectures")
    if not isinstance(archs, list) or not archs or archs[0] not in REGISTRY.names():
        return None
    model = REGISTRY.get(str(archs[0])).native_model(config)
    if model is None:
        return None
    return load_weights(model, hf_weight_files(Path(hf_dir)))
