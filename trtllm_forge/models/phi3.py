"""Phi-3 / Phi-3.5 / Phi-4 (``Phi3ForCausalLM``): the Llama decoder with fused linears.

* ``self_attn.qkv_proj`` is one linear whose rows are already ``[q; k; v]`` (q:
  ``heads · head_dim`` rows, k and v: ``kv_heads · head_dim`` each), which is
  TensorRT-LLM's ``attention.qkv`` as is.
* ``mlp.gate_up_proj`` rows are ``[gate; up]``; the converter splits them into
  ``mlp.fc`` (the SiLU-activated gate half, docs/trtllm-checkpoint.md §3.1) and ``mlp.gate`` (the up
  half) with ``row_block`` rules, and quantization slices its calibrated rows the same
  way (``LinearTarget.row_order``).
* Partial rotary (Phi-4-mini: ``partial_rotary_factor`` 0.75) rotates the first
  ``rotary_embedding_dim`` channels of each head, as for GPT-NeoX.
* ``sliding_window``, when set, applies to every layer (as Mistral's).

``longrope`` (HF ``su`` / ``yarn`` in Phi-3 configs) picks its short or long factors
by the running sequence length; no forge lowering implements that, so it is refused
at plan time (exit 2), before anything is downloaded or converted.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from trtllm_forge.errors import recipe_error
from trtllm_forge.models import gpt_common, tables
from trtllm_forge.models.base import TensorPlan, TensorRule, model_dims, text_config
from trtllm_forge.models.llama import rope_settings

CONVERTER_VERSION = 1

_LAYER_MODULES: tuple[tuple[str, str], ...] = (
    ("attention.qkv", "self_attn.qkv_proj"),
    ("attention.dense", "self_attn.o_proj"),
    ("mlp.proj", "mlp.down_proj"),
    ("input_layernorm", "input_layernorm"),
    ("post_layernorm", "post_attention_layernorm"),
)
# (TRT-LLM module, block of HF gate_up_proj's rows): gate first, then up.
_GATE_UP_BLOCKS: tuple[tuple[str, int], ...] = (("mlp.fc", 0), ("mlp.gate", 1))
_IGNORED = (re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq"),)
# Phi-3 configs name longrope by its older names too (transformers maps them).
_LONGROPE = ("longrope", "su", "yarn")


def rotary_factor(hf_config: Mapping[str, Any]) -> float:
    """``partial_rotary_factor`` from ``rope_parameters`` (transformers 5) or the top level."""
    cfg = text_config(hf_config)
    params = cfg.get("rope_parameters") or {}
    value = params.get("partial_rotary_factor", cfg.get("partial_rotary_factor"))
    return 1.0 if value is None else float(value)


def _refuse_longrope(cfg: Mapping[str, Any]) -> None:
    scaling = cfg.get("rope_scaling") or cfg.get("rope_parameters") or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind in _LONGROPE:
        raise recipe_error(
            f"Phi-3 rope scaling {kind!r} (LongRoPE: short or long factors chosen by the "
            "sequence length) is not supported by forge",
            hint="use a Phi-3 checkpoint with the default rope (e.g. the 4k-context models)",
        )


class Phi3Family(gpt_common.GptStyleFamily):
    name = "phi3"
    architectures = ("Phi3ForCausalLM",)
    version = str(CONVERTER_VERSION)

    def validate(self, hf_config: Mapping[str, Any]) -> None:
        super().validate(hf_config)
        cfg = text_config(hf_config)
        _refuse_longrope(cfg)
        rope_settings(cfg)
        gpt_common.activation(cfg, "hidden_act", default="silu")
        dim = self._rotary_dim(cfg)
        if dim <= 0 or dim % 2:
            raise gpt_common.unsupported(f"rotary dimension {dim} (must be even and positive)")

    def _rotary_dim(self, cfg: Mapping[str, Any]) -> int:
        return int(model_dims(cfg)["head_size"] * rotary_factor(cfg))

    def trtllm_config(self, hf_config: Mapping[str, Any], *, dtype: str) -> dict[str, Any]:
        self.validate(hf_config)
        cfg = text_config(hf_config)
        theta, scaling = rope_settings(cfg)
        config = gpt_common.base_config(
            hf_config,
            family=self.name,
            trt_architecture="Phi3ForCausalLM",
            dtype=dtype,
            converter_version=CONVERTER_VERSION,
            hidden_act=gpt_common.activation(cfg, "hidden_act", default="silu"),
            norm_epsilon=float(cfg.get("rms_norm_eps", 1e-5)),
            position_embedding_type="rope_gpt_neox",
            norm_type="rmsnorm",
            mlp_type="gated",
            parallel_residual=False,
            tied=bool(cfg.get("tie_word_embeddings", False)),
        )
        window = cfg.get("sliding_window")
        config.update(
            {
                "rotary_base": theta,
                "rotary_scaling": scaling,
                "rotary_embedding_dim": self._rotary_dim(cfg),
                "attn_bias": False,
                "mlp_bias": False,
            }
        )
        config["forge"]["sliding_window"] = int(window) if window else None
        return config

    def tensor_plan(self, hf_config: Mapping[str, Any]) -> TensorPlan:
        cfg = text_config(hf_config)
        tied = bool(cfg.get("tie_word_embeddings", False))
        rules = [
            *tables.embedding_rules("model.embed_tokens.weight", tied=tied),
            TensorRule("transformer.ln_f.weight", ("model.norm.weight",)),
        ]
        layers = model_dims(cfg)["num_hidden_layers"]
        for dst, src in tables.layer_prefixes("model.layers", layers):
            rules.extend(tables.module_rules(dst, src, _LAYER_MODULES, ("weight",)))
            fused = (f"{src}mlp.gate_up_proj.weight",)
            rules.extend(
                TensorRule(f"{dst}{module}.weight", fused, "row_block", block=block, blocks=2)
                for module, block in _GATE_UP_BLOCKS
            )
        ignored = tables.ignore_tied_head(_IGNORED, tied=tied)
        return TensorPlan(rules=tuple(rules), ignored=ignored)
