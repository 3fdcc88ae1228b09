"""What the ``ort`` lowering profile can lower, decided from the recipe and the HF config.

Torch- and onnx-free: ``forge plan`` calls it before any stage runs, so a recipe the
profile cannot lower fails at plan time (exit 2, at the recipe field) rather than
after an hour of calibration.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

PROFILE = "ort"
# HF architectures whose decoder the ort lowering builds (the Llama graph: RMSNorm, gated
# SiLU MLP, GPT-NeoX rope, grouped-query attention; Qwen2 adds the qkv bias, Mistral a window,
# Qwen3 q/k norms, Phi-3 partial rotary and a window on every layer; Mixtral, Qwen2-MoE and
# Qwen3-MoE route their MLP through ORT's MoE operator, ort/moe.py).
ARCHITECTURES = (
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
    "Phi3ForCausalLM",
    "MixtralForCausalLM",
    "Qwen2MoeForCausalLM",
    "Qwen3MoeForCausalLM",
)
MOE_ARCHITECTURES = ("MixtralForCausalLM", "Qwen2MoeForCausalLM", "Qwen3MoeForCausalLM")
# Families the ort lowering refuses for a reason more precise than "not the Llama graph".
_REASONS = {
    "Gemma3ForCausalLM": (
        "its sandwich norms, 1 + w q/k norms and two rope bases are not in the ort lowering"
    ),
}
# quantize.method -> what MatMulNBits carries it as (None: float MatMul).
METHODS = {"none": None, "int8_wo": 8, "int4_wo": 4, "awq": 4, "gptq": 4}
ACTIVATIONS = ("silu",)


@dataclass(frozen=True)
class Refusal:
    """One reason the ort profile cannot lower a recipe: the field to point at and why."""

    field: str
    message: str
    hint: str


def recipe_refusals(recipe: Any) -> list[Refusal]:
    """Reasons knowable from the recipe alone (method, KV cache, parallelism, backend)."""
    out = []
    method = recipe.quantize.method
    if method not in METHODS:
        out.append(
            Refusal(
                "quantize.method",
                f"build.profile ort has no lowering for quantize.method {method!r}",
                f"use one of {', '.join(METHODS)} or build.profile: portable",
            )
        )
    if recipe.quantize.kv_cache != "none":
        out.append(
            Refusal(
                "quantize.kv_cache",
                f"build.profile ort keeps the KV cache in the compute dtype; "
                f"kv_cache {recipe.quantize.kv_cache!r} is not lowered",
                "set quantize.kv_cache: none or build.profile: portable",
            )
        )
    for field in ("tp", "pp"):
        if getattr(recipe.parallel, field) != 1:
            out.append(
                Refusal(
                    f"parallel.{field}",
                    f"build.profile ort builds single-rank engines; parallel.{field} = "
                    f"{getattr(recipe.parallel, field)} needs the portable graph's collectives",
                    f"set parallel.{field}: 1 or build.profile: portable",
                )
            )
    if recipe.build.backend != "onnxruntime":
        out.append(
            Refusal(
                "build.backend",
                f"build.profile ort emits ONNX Runtime contrib ops that backend "
                f"{recipe.build.backend!r} cannot run",
                "use build.backend: onnxruntime, or build.profile: portable",
            )
        )
    return out


def model_refusal(hf_config: Mapping[str, Any], method: str = "none") -> str | None:
    """Why the ort profile cannot lower this model quantized by ``method`` (None: it can)."""
    archs = hf_config.get("architectures") or []
    arch = archs[0] if archs else None
    if arch in _REASONS:
        return f"build.profile ort has no lowering for {arch}: {_REASONS[arch]}"
    if arch in MOE_ARCHITECTURES and method == "awq":
        return (
            f"build.profile ort cannot lower {arch}'s AWQ experts: each expert's pre-quant "
            "scale multiplies its own copy of the input, and ORT's QMoE operator feeds every "
            "expert the same input (int8_wo, int4_wo and gptq experts are lowered)"
        )
    if arch not in ARCHITECTURES:
        return (
            f"build.profile ort has no lowering for {arch or 'this model'} "
            f"(it lowers {', '.join(ARCHITECTURES)})"
        )
    act = hf_config.get("hidden_act", "silu")
    if act not in ACTIVATIONS:
        return f"build.profile ort lowers the SiLU-gated MLP only, not hidden_act {act!r}"
    return _rotary_refusal(hf_config, arch)


def _rotary_refusal(hf_config: Mapping[str, Any], arch: str) -> str | None:
    """GroupQueryAttention rotates with one cos/sin cache whose width (half the rotary
    channels) its CPU kernel takes only as a multiple of 8 (onnxruntime 1.31.1:
    "cos_cache dimension 1 must be <= head_size / 2 and a multiple of 8")."""
    rope = hf_config.get("rope_scaling") or hf_config.get("rope_parameters") or {}
    kind = rope.get("rope_type") or rope.get("type") or "default"
    if arch == "Phi3ForCausalLM" and kind in ("longrope", "su", "yarn"):
        return (
            "build.profile ort has no LongRoPE: it picks short or long factors per "
            "sequence, and GroupQueryAttention reads one cos/sin cache for the whole batch "
            "(build.profile: portable implements it)"
        )
    if kind not in ("default", "linear", "llama3", "yarn"):
        return f"build.profile ort has no rotary scaling {kind!r} (default, linear, llama3, yarn)"
    params = hf_config.get("rope_parameters") or {}
    partial = params.get("partial_rotary_factor", hf_config.get("partial_rotary_factor")) or 1.0
    heads = int(hf_config.get("num_attention_heads") or 1)
    head = int(hf_config.get("head_dim") or int(hf_config.get("hidden_size") or 0) // heads)
    half = int(head * float(partial)) // 2
    if half % 8:
        return (
            f"build.profile ort rotates {half * 2} channels per head here, and "
            "GroupQueryAttention's CPU kernel takes a rotary width that is a multiple of 16"
        )
    return None
