"""The KV-cache formats: recipe name, TensorRT-LLM algo, and each HF target's spelling.

Apart from the weight formats (quant/records.py) so that the method parameters
(quant/params.py) read the KV algos without importing the method registry. A KV format
whose numbers the generic code does not know (INT8 and FP8 it does) brings them as hooks
in its record, declared in its method's module (NVFP4's: quant/nvfp4.py).
"""

from __future__ import annotations

from trtllm_forge.quant import nvfp4

# The record type, re-exported: importers name it from here.
from trtllm_forge.quant.record_types import KvFormat as KvFormat
from trtllm_forge.quant.record_types import NotCarried

KV_FORMATS: dict[str, KvFormat] = {
    "int8": KvFormat(
        "int8",
        "INT8",
        127.0,
        NotCarried(
            "ModelOpt's HF exporter writes only FP8 (and NVFP4) KV-cache scales; 0.47 refuses "
            "an INT8 KV cache ('Invalid KV cache quantization format')"
        ),
        {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "tensor", "dynamic": False},
    ),
    "fp8": KvFormat(
        "fp8",
        "FP8",
        448.0,
        "FP8",
        {
            "num_bits": 8,
            "type": "float",
            "symmetric": True,
            "strategy": "tensor",
            "dynamic": False,
        },
    ),
    "nvfp4": nvfp4.KV_FORMAT,
}


def by_trtllm_algo(algo: str | None) -> KvFormat | None:
    """The KV format a canonical checkpoint's kv_cache_quant_algo names."""
    return next((kv for kv in KV_FORMATS.values() if kv.trtllm_algo == algo), None)


# The recipe's kv_cache names and their TensorRT-LLM algos.
KV_CACHE_ALGOS: dict[str, str] = {name: kv.trtllm_algo for name, kv in KV_FORMATS.items()}
