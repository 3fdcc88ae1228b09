"""One record per quantization format: what it stores and where each output target puts it.

A *format* is what a quantized linear holds, independent of the method that
computed it: int4_wo and GPTQ both produce ``W4A16`` (packed int4, group scales),
AWQ adds a pre-quant scale (``W4A16_AWQ``). Each :class:`QuantFormat` says, as
data, its TensorRT-LLM ``quant_algo`` and tensors, its packing, and its mapping
into each Hugging Face output target — or :class:`NotCarried` with the reason,
which the plan-time check quotes when a recipe asks for the impossible.

Nothing here imports torch: ``forge plan`` refuses an uncarriable recipe from
these records alone. Each method declares its formats in its own module (listed once,
in quant/registry.py's ``METHOD_MODULES``), with the hooks the generic modules call;
the record types are quant/record_types.py's, the KV-cache formats quant/kv_formats.py's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# The record types and KV formats, re-exported: importers name them from here.
from trtllm_forge.quant.kv_formats import KV_FORMATS as KV_FORMATS
from trtllm_forge.quant.kv_formats import KvFormat as KvFormat
from trtllm_forge.quant.record_types import TARGETS as TARGETS
from trtllm_forge.quant.record_types import CompressedTensors as CompressedTensors
from trtllm_forge.quant.record_types import ModelOpt as ModelOpt
from trtllm_forge.quant.record_types import NotCarried as NotCarried
from trtllm_forge.quant.record_types import QuantFormat as QuantFormat
from trtllm_forge.quant.record_types import Target as Target
from trtllm_forge.quant.registry import declared_methods, get

FORMATS: dict[str, QuantFormat] = {
    fmt.name: fmt for method in declared_methods() for fmt in method.formats
}


def trtllm_algos(predicate: Callable[[QuantFormat], bool]) -> frozenset[str]:
    """The canonical checkpoint's quant_algo names of the formats ``predicate`` selects."""
    return frozenset(f.trtllm_algo for f in FORMATS.values() if predicate(f))


def format_name(method: str, quant: dict[str, Any]) -> str | None:
    """The format a recipe ``quantize`` section produces (None: weights stay unquantized)."""
    return get(method).record.format_name(quant)


def weight_bits(method: str, quant: dict[str, Any]) -> int | None:
    """Bits per stored linear weight value of a recipe's quantization (None: unquantized)."""
    name = format_name(method, quant)
    return None if name is None else FORMATS[name].weight_bits


def by_trtllm_algo(algo: str | None) -> QuantFormat | None:
    """The format record a canonical checkpoint's quant_algo names (None: unquantized or
    unknown). W4A16 and W4A16_AWQ share their algo and store the same tensors."""
    return next((f for f in FORMATS.values() if f.trtllm_algo == algo), None)


def why_not(target: Target, fmt: str | None, kv: str | None) -> str | None:
    """Why ``target`` cannot carry this format / KV combination (None: it can)."""
    if fmt is not None:
        mapping = FORMATS[fmt].target(target)
        if isinstance(mapping, NotCarried):
            return f"{fmt}: {mapping.reason}"
    if kv is not None:
        kv_mapping = getattr(KV_FORMATS[kv], target.replace("-", "_"))
        if isinstance(kv_mapping, NotCarried):
            return f"{kv} KV cache: {kv_mapping.reason}"
    return None


def why_not_onnx(fmt: str | None, kv: str | None = None) -> str | None:
    """Why an ONNX engine cannot run this format / KV combination exactly (None: it can)."""
    refusal = FORMATS[fmt].onnx if fmt is not None else None
    if refusal is not None:
        return f"{fmt}: {refusal.reason}"
    kv_refusal = KV_FORMATS[kv].onnx if kv is not None else None
    return f"{kv} KV cache: {kv_refusal.reason}" if kv_refusal is not None else None


def why_not_trtllm_build(fmt: str | None) -> str | None:
    """Why trtllm-build (TensorRT-LLM ≤ 1.2) cannot take this format (None: it can)."""
    refusal = FORMATS[fmt].trtllm_build if fmt is not None else None
    return f"{fmt}: {refusal.reason}" if refusal is not None else None


def carriers(fmt: str | None, kv: str | None) -> list[Target]:
    """The HF targets that can carry the combination."""
    return [t for t in TARGETS if why_not(t, fmt, kv) is None]


def method_table() -> list[tuple[str, str, str, str]]:
    """(method, format, modelopt, compressed-tensors) rows for the docs, from the records."""
    rows = []
    cases = [(m.name, quant) for m in declared_methods() for quant in m.doc_cases]
    for method, quant in cases:
        fmt = FORMATS[str(format_name(method, dict(quant)))]
        label = method + "".join(f" {v}" for v in quant.values())
        rows.append((label, fmt.name, _cell(fmt.modelopt), _cell(fmt.compressed_tensors)))
    for kv in KV_FORMATS.values():
        rows.append(
            (
                f"kv_cache: {kv.name}",
                kv.trtllm_algo,
                _cell(kv.modelopt),
                _cell(kv.compressed_tensors),
            )
        )
    return rows


def _cell(mapping: Any) -> str:
    if isinstance(mapping, NotCarried):
        return f"no — {mapping.reason}"
    if isinstance(mapping, ModelOpt):
        return f"yes (`{mapping.quant_algo}`)"
    if isinstance(mapping, CompressedTensors):
        return f"yes (`{mapping.format}`)"
    if isinstance(mapping, str):
        return f"yes (`{mapping}`)"
    return "yes (`kv_cache_scheme`)"
