"""Facts about TensorRT-LLM tensor names for Llama-like decoders (docs/trtllm-checkpoint.md §3).

One place answers: which module does a tensor belong to, is that module
column- or row-parallel, what are its logical ``(out, in)`` sizes, and on which
pipeline stage does it live. The converter uses it to check shapes before
writing; the sharder uses it to split.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

Parallel = Literal["column", "row", "none"]
Placement = Literal["first", "last", "layer"]

_LAYER = re.compile(r"transformer\.layers\.(\d+)\.(.+)")

# module suffix (inside a layer) -> how tensor parallelism splits it.
LAYER_MODULES: dict[str, Parallel] = {
    "attention.qkv": "column",
    "attention.dense": "row",
    "mlp.fc": "column",
    "mlp.gate": "column",
    "mlp.proj": "row",
    "input_layernorm": "none",
    "post_layernorm": "none",
    "mlp_layernorm": "none",  # Falcon new decoder: the MLP's own norm (HF ln_mlp)
    "pre_feedforward_layernorm": "none",  # Gemma 2 sandwich norms around the MLP
    "post_feedforward_layernorm": "none",
    "attention.q_layernorm": "none",  # Qwen3 / Gemma 3: RMSNorm of each query head
    "attention.k_layernorm": "none",  # ... and of each key head ([head_size], replicated)
    "attention": "none",  # kv_cache_scaling_factor and friends live on the attention module
    "mlp.router": "none",  # Mixtral: [experts, hidden] gate logits, on every rank
    "mlp.shared_expert_gate": "none",  # Qwen2-MoE: [1, hidden] sigmoid gate of the shared expert
}
# Mixture-of-experts: expert e's MLP linears are mlp.experts.{e}.{fc,gate,proj} (Qwen2-MoE's
# shared expert: mlp.shared_expert.{fc,gate,proj}); each splits for TP like the dense
# mlp.{fc,gate,proj} (along the expert's intermediate size).
_EXPERT = re.compile(r"mlp\.(?:experts\.\d+|shared_expert)\.(fc|gate|proj)")


def module_kind(module: str) -> str:
    """The dense module an expert module shards like (``mlp.experts.3.fc`` -> ``mlp.fc``)."""
    match = _EXPERT.fullmatch(module)
    return f"mlp.{match.group(1)}" if match else module


GLOBAL_MODULES: dict[str, tuple[Parallel, Placement]] = {
    "transformer.vocab_embedding": ("none", "first"),
    "transformer.position_embedding": ("none", "first"),  # learned absolute positions (GPT-2)
    "transformer.ln_embed": ("none", "first"),  # BLOOM: LayerNorm of the token embedding
    "transformer.ln_f": ("none", "last"),
    "lm_head": ("column", "last"),
}


@dataclass(frozen=True)
class TensorName:
    """A parsed tensor name: ``transformer.layers.3.attention.qkv.weight`` ->
    layer 3, module ``attention.qkv``, param ``weight``."""

    layer: int | None
    module: str
    param: str

    def render(self, layer: int | None = None) -> str:
        idx = self.layer if layer is None else layer
        head = f"transformer.layers.{idx}.{self.module}" if idx is not None else self.module
        return f"{head}.{self.param}"

    @property
    def parallel(self) -> Parallel:
        if self.layer is None:
            return GLOBAL_MODULES[self.module][0]
        return LAYER_MODULES[module_kind(self.module)]

    @property
    def placement(self) -> Placement:
        if self.layer is not None:
            return "layer"
        return GLOBAL_MODULES[self.module][1]


def parse_name(name: str) -> TensorName | None:
    """Split a tensor name into layer/module/param, or None when the module is unknown."""
    match = _LAYER.fullmatch(name)
    if match:
        layer, rest = int(match.group(1)), match.group(2)
        for module in sorted(LAYER_MODULES, key=len, reverse=True):
            if rest.startswith(module + ".") and "." not in rest[len(module) + 1 :]:
                return TensorName(layer, module, rest[len(module) + 1 :])
        module, _, param = rest.rpartition(".")
        return TensorName(layer, module, param) if _EXPERT.fullmatch(module) else None
    for module in GLOBAL_MODULES:
        if name.startswith(module + ".") and "." not in name[len(module) + 1 :]:
            return TensorName(None, module, name[len(module) + 1 :])
    return None


def module_dims(module: str, config: Mapping[str, Any]) -> tuple[int, int]:
    """Logical ``(out_features, in_features)`` of a linear module (or ``(rows, cols)``)."""
    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    kv = int(config.get("num_key_value_heads") or heads)
    head = int(config.get("head_size") or hidden // heads)
    inter = int(config["intermediate_size"])
    vocab = int(config["vocab_size"])
    if module.startswith("mlp.shared_expert."):
        inter = int(config["moe"]["shared_expert_intermediate_size"])
    module = module_kind(module)
    dims = {
        "attention.qkv": ((heads + 2 * kv) * head, hidden),
        "attention.dense": (hidden, heads * head),
        "mlp.fc": (inter, hidden),
        "mlp.gate": (inter, hidden),
        "mlp.proj": (hidden, inter),
        "lm_head": (vocab, hidden),
        "transformer.vocab_embedding": (vocab, hidden),
    }
    return dims[module]


def unquantized_shape(name: str, config: Mapping[str, Any]) -> tuple[int, ...] | None:
    """Expected shape of an unquantized weight/bias/norm tensor, None if unknown."""
    parsed = parse_name(name)
    if parsed is None or parsed.param not in ("weight", "bias"):
        return None
    norms: tuple[str, ...] = ("input_layernorm", "post_layernorm", "mlp_layernorm")
    norms += ("transformer.ln_embed",)
    norms += ("pre_feedforward_layernorm", "post_feedforward_layernorm")  # Gemma 2
    if parsed.module in (*norms, "transformer.ln_f"):
        # LayerNorm families also carry a bias of the same size.
        return (int(config["hidden_size"]),) if parsed.param in ("weight", "bias") else None
    if parsed.module in ("attention.q_layernorm", "attention.k_layernorm"):
        return (
            int(config.get("head_size") or config["hidden_size"] // config["num_attention_heads"]),
        )
    if parsed.module == "mlp.shared_expert_gate":
        return (1, int(config["hidden_size"]))
    if parsed.module == "mlp.router":
        return (int(config["moe"]["num_experts"]), int(config["hidden_size"]))
    if parsed.module == "transformer.position_embedding":
        rows = int(config.get("max_position_embeddings") or 0)
        return (rows, int(config["hidden_size"])) if parsed.param == "weight" and rows else None
    if parsed.module == "attention":
        return None
    out, inp = module_dims(parsed.module, config)
    return (out, inp) if parsed.param == "weight" else (out,)
