"""The format records agree with every place that still keys per-quant_algo behaviour by
name (TensorRT-LLM builders, ONNX lowering, TensorRT strong typing), cover every method,
and import without torch (``forge plan`` reads them)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from trtllm_forge.quant import records
from trtllm_forge.quant.registry import names


def test_every_method_has_a_format_record() -> None:
    for method in names():
        fmt = records.format_name(method, {})
        assert fmt is None if method == "none" else fmt in records.FORMATS


@pytest.mark.parametrize("name", sorted(records.FORMATS))
def test_record_matches_builders_lowering_and_typing(name: str) -> None:
    from trtllm_forge.engine.backends.tensorrt import FP8_ALGOS
    from trtllm_forge.engine.onnx import quant_lowering as onnx_lowering
    from trtllm_forge.quant import formats

    fmt = records.FORMATS[name]
    assert fmt.trtllm_algo in formats.BUILDERS
    # Lowered exactly, or refused at plan time with the record's reason — never both.
    assert (fmt.trtllm_algo in onnx_lowering.LINEAR) == (fmt.onnx is None)
    assert fmt.strongly_typed == (fmt.trtllm_algo in FP8_ALGOS)


@pytest.mark.parametrize("kv", sorted(records.KV_FORMATS))
def test_kv_records_match_the_canonical_algos(kv: str) -> None:
    from trtllm_forge.quant.params import KV_CACHE_ALGOS

    assert records.KV_FORMATS[kv].trtllm_algo == KV_CACHE_ALGOS[kv]


def test_uncarriable_names_the_formats_that_can() -> None:
    assert records.why_not("compressed-tensors", "W4A16_AWQ", None)
    assert records.carriers("W4A16_AWQ", None) == ["modelopt"]
    assert records.carriers("W8A16", "int8") == ["compressed-tensors"]
    assert records.carriers("W8A8_SQ_PER_CHANNEL_PER_TOKEN_PLUGIN", None) == []
    assert records.carriers("FP8", "fp8") == ["modelopt", "compressed-tensors"]


def test_records_import_without_torch() -> None:
    code = "import sys, trtllm_forge.quant.records; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
