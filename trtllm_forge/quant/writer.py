"""Write a quantized canonical checkpoint: the unquantized one with its linears replaced.

Every tensor of the canonical checkpoint is copied as is (embedding, norms,
lm_head, biases, excluded linears), except each quantized linear's ``weight``,
which becomes the format's tensors (:mod:`trtllm_forge.quant.formats`), and,
for formats that fold smoothing into norms, those norms. KV-cache scales are
added per attention layer. ``config.json`` is the canonical one with its
``quantization`` block filled in (docs/trtllm-checkpoint.md §1.3) and ``forge.quantization``
recording how it was made.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from trtllm_forge.checkpoint.io import CheckpointReader, rank_file, write_config
from trtllm_forge.checkpoint.layout import parse_name
from trtllm_forge.checkpoint.safetensors_stream import ST_TO_TORCH, StreamingWriter, TensorSpec
from trtllm_forge.context import NullProgress, Progress
from trtllm_forge.quant import formats
from trtllm_forge.quant.params import KV_CACHE_ALGOS, MethodParams
from trtllm_forge.quant.result import LinearQuant, QuantResult, concat, share_input
from trtllm_forge.quant.targets import HEAD, SHARED_INPUT_GROUPS, LinearTarget, TargetPlan

_NO_PROGRESS = NullProgress()
EMBEDDING = "transformer.vocab_embedding.weight"


@dataclass(frozen=True)
class QuantSpec:
    """What was asked: method name, validated params, KV-cache format (or None)."""

    method: str
    params: MethodParams
    kv_cache: str | None = None

    @property
    def quant_algo(self) -> str | None:
        return self.params.quant_algo()

    @property
    def kv_algo(self) -> str | None:
        return KV_CACHE_ALGOS[self.kv_cache] if self.kv_cache else None


def quantization_block(spec: QuantSpec, plan: TargetPlan) -> dict[str, Any]:
    """config.json ``quantization``: only fields TensorRT-LLM's QuantConfig knows."""
    block: dict[str, Any] = {
        "quant_algo": spec.quant_algo,
        "kv_cache_quant_algo": spec.kv_algo,
        "group_size": 128,
        "has_zero_point": False,
        "pre_quant_scale": False,
        "exclude_modules": plan.exclude_modules() if spec.quant_algo else None,
    }
    block.update(spec.params.quantization_fields())
    return block


def _fused_linears(
    spec: QuantSpec, plan: TargetPlan, result: QuantResult
) -> dict[str, LinearQuant]:
    """TensorRT-LLM module → its fused record, with input groups reconciled."""
    fused = {
        t.module: reorder_rows(concat(share_input([result.linears[s] for s in t.sources])), t)
        for t in plan.quantized
    }
    if plan.quantize_head:
        assert result.head is not None, "quantize_head without a head record"
        fused[HEAD] = result.head
    if spec.quant_algo in formats.SHARE_INPUT_GROUPS:
        for group in _input_groups(plan):
            for module, lq in zip(group, share_input([fused[m] for m in group]), strict=True):
                fused[module] = lq
    return fused


def reorder_rows(lq: LinearQuant, target: LinearTarget) -> LinearQuant:
    """Apply the family rule's row order (e.g. NeoX [heads, 3, d] QKV) to a fused record."""
    order = target.row_order(int(lq.weight.shape[0]))
    if order is None:
        return lq
    index = torch.tensor(order, device=lq.weight.device)  # rows packed where they are
    amax = lq.weight_amax if lq.weight_amax.dim() == 0 else lq.weight_amax[index]
    return replace(lq, weight=lq.weight[index], weight_amax=amax)


def _input_groups(plan: TargetPlan) -> list[list[str]]:
    """Quantized modules of one layer that read the same activation (e.g. fc + gate)."""
    by_layer_kind = {(t.layer, t.kind): t.module for t in plan.quantized}
    groups = []
    for kinds in SHARED_INPUT_GROUPS:
        for layer in sorted({t.layer for t in plan.quantized}):
            members = [by_layer_kind[(layer, k)] for k in kinds if (layer, k) in by_layer_kind]
            if len(members) > 1:
                groups.append(members)
    return groups


def _is_row(module: str) -> bool:
    parsed = parse_name(module + ".weight")
    return parsed is not None and parsed.parallel == "row"


def quantized_tensors(
    spec: QuantSpec, fused: Mapping[str, LinearQuant], dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """Full tensor name → tensor for every quantized linear."""
    algo = spec.quant_algo
    if algo is None:
        return {}
    build = formats.builder(algo)
    out: dict[str, torch.Tensor] = {}
    for module, lq in fused.items():
        for param, tensor in build(lq, _is_row(module), dtype).items():
            out[f"{module}.{param}"] = tensor.contiguous()
    return out


def folded_norms(
    spec: QuantSpec,
    plan: TargetPlan,
    fused: Mapping[str, LinearQuant],
    reader: CheckpointReader,
    dtype: torch.dtype,
) -> dict[str, torch.Tensor]:
    """Norm weights carrying the column layers' smoothing (SmoothQuant plugin layout)."""
    if spec.quant_algo not in formats.FOLDS_SMOOTHING_INTO_NORM:
        return {}
    out: dict[str, torch.Tensor] = {}
    for target in plan.quantized:
        if _is_row(target.module):
            continue  # row-parallel inputs are smoothed by their own `smoother`
        if target.input_norm is None:
            raise AssertionError(f"{target.module}: no norm of its own (check_smoothing_fold)")
        prefix = f"transformer.layers.{target.layer}.{target.input_norm}"
        pqs = fused[target.module].pre_quant_scale
        assert pqs is not None
        # norm(x) * w + b, scaled per channel: both the weight and the bias carry it.
        for param in ("weight", "bias"):
            name = f"{prefix}.{param}"
            if param == "weight" or reader.has(name):
                out[name] = (reader.get(name).float() * pqs).to(dtype)
        # Per-token scaling computes the int8 scale at run time; the plugin still reads this.
        out[f"{prefix}.scale_to_int"] = torch.ones(1, dtype=dtype)
    return out


def kv_tensors(spec: QuantSpec, result: QuantResult) -> dict[str, torch.Tensor]:
    if spec.kv_algo is None:
        return {}
    out = {}
    for layer, (k_amax, v_amax) in sorted(result.kv_amax.items()):
        for param, tensor in formats.kv_cache_scales(k_amax, v_amax, spec.kv_algo).items():
            out[f"transformer.layers.{layer}.attention.{param}"] = tensor
    return out


def shares_embedding(plan: TargetPlan, spec: QuantSpec, config: Mapping[str, Any]) -> bool:
    """A tied model's int4 head is its embedding too: the float table is not written, and
    the ort lowering gathers the head's int4 rows (GatherBlockQuantized), as
    onnxruntime-genai's builder shares one int4 table. That op reads 4-bit tables only, so
    an int8 head leaves the embedding in the checkpoint dtype."""
    tied = bool(config.get("tie_word_embeddings"))
    return plan.quantize_head and tied and spec.quant_algo == "W4A16_AWQ"


def _replaced_weights(plan: TargetPlan, spec: QuantSpec) -> set[str]:
    if not spec.quant_algo:
        return set()
    head = [HEAD] if plan.quantize_head else []
    return {f"{module}.weight" for module in [*(t.module for t in plan.quantized), *head]}


def write_checkpoint(
    canonical_dir: Path,
    out_dir: Path,
    *,
    spec: QuantSpec,
    plan: TargetPlan,
    result: QuantResult,
    forge_info: Mapping[str, Any],
    progress: Progress = _NO_PROGRESS,
) -> dict[str, Any]:
    """Write ``config.json`` + ``rank0.safetensors`` into ``out_dir``; return a summary."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with CheckpointReader(Path(canonical_dir)) as reader:
        dtype = ST_TO_TORCH[_dtype_name(reader.config)]
        fused = _fused_linears(spec, plan, result) if spec.quant_algo else {}
        new = quantized_tensors(spec, fused, dtype)
        new.update(folded_norms(spec, plan, fused, reader, dtype))
        new.update(kv_tensors(spec, result))
        dropped = _replaced_weights(plan, spec)
        shared = shares_embedding(plan, spec, reader.config)
        if shared:
            dropped.add(EMBEDDING)
        kept = [n for n in reader.names() if n not in dropped and n not in new]
        specs = [
            TensorSpec(n, ST_TO_TORCH[str(reader.get_slice(n).get_dtype())], reader.shape(n))
            for n in kept
        ]
        specs += [TensorSpec(n, t.dtype, tuple(t.shape)) for n, t in new.items()]
        with (
            progress.task("writing quantized checkpoint", total=len(specs)) as task,
            StreamingWriter(out_dir / rank_file(0), specs) as writer,
        ):
            for name in writer.order:
                writer.write(name, new[name] if name in new else reader.get(name))
                task.advance()
        config = dict(reader.config)
    config["quantization"] = quantization_block(spec, plan)
    info = {**forge_info, **({"embedding": "the int4 lm_head (tied)"} if shared else {})}
    config["forge"] = {**(config.get("forge") or {}), "quantization": info}
    write_config(out_dir, config)
    return {
        "tensors": len(specs),
        "quantized_modules": list(fused),
        "excluded_modules": [t.module for t in plan.excluded],
        "quantization": config["quantization"],
        "files": ["config.json", rank_file(0)],
    }


def _dtype_name(config: Mapping[str, Any]) -> str:
    return {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}[str(config["dtype"])]


__all__ = ["QuantSpec", "quantization_block", "write_checkpoint"]
