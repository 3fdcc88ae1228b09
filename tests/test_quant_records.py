"""The format records drive every per-format job (TensorRT-LLM builders, ONNX lowering,
TensorRT strong typing, the HF targets, fake quant), cover every method, and import
without torch (``forge plan`` reads them)."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest

from trtllm_forge.quant import records
from trtllm_forge.quant.registry import names


def test_every_method_has_a_format_record() -> None:
    for method in names():
        fmt = records.format_name(method, {})
        assert fmt is None if method == "none" else fmt in records.FORMATS


@pytest.mark.parametrize("name", sorted(records.FORMATS))
def test_record_matches_builders_lowering_and_typing(name: str) -> None:
    from trtllm_forge.engine.backends.options import BuildOptions
    from trtllm_forge.engine.backends.tensorrt import wants_strongly_typed
    from trtllm_forge.engine.onnx import (
        hooks,
        quant_lowering,  # noqa: F401  (registers them)
    )
    from trtllm_forge.quant import formats

    fmt = records.FORMATS[name]
    assert formats.builder(fmt.trtllm_algo) is not None
    # Lowered exactly, or refused at plan time with the record's reason — never both.
    assert (fmt.trtllm_algo in hooks.LINEAR_LOWERINGS) == (fmt.onnx is None)
    model = SimpleNamespace(quant_algo=fmt.trtllm_algo, kv_cache_quant_algo=None)
    assert wants_strongly_typed(model, BuildOptions()) == fmt.strongly_typed  # type: ignore[arg-type]


def test_every_method_record_carries_every_hook() -> None:
    """A method module's record brings each hook a target that carries it calls."""
    from trtllm_forge.quant.registry import declared_methods

    for method in declared_methods():
        for fmt in method.formats:
            assert fmt.trtllm_writer is not None and fmt.fake_weight is not None, fmt.name
            assert (fmt.onnx_lowering is None) == (fmt.onnx is not None), fmt.name
            for mapping in (fmt.modelopt, fmt.compressed_tensors):
                if not isinstance(mapping, records.NotCarried):
                    assert mapping.linear_tensors is not None, (fmt.name, mapping)


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


def test_weight_bits_come_from_the_records() -> None:
    from trtllm_forge.pipeline.estimate import WEIGHT_BITS

    assert records.weight_bits("none", {}) is None
    # The plan-time size estimate's table agrees with the formats' records.
    for method in names():
        if method != "none":
            assert records.weight_bits(method, {}) == WEIGHT_BITS[method], method
