"""GPT-J (``GPTJForCausalLM``): one LayerNorm per layer feeding attention and MLP in
parallel, GPT-J-style (interleaved pairs) rope on the first ``rotary_dim`` channels,
separate q/k/v without biases, and an LM head with a bias.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from trtllm_forge.models import gpt_common
from trtllm_forge.models.base import Family, TensorPlan, TensorRule, model_dims, text_config

CONVERTER_VERSION = 1

# (TRT-LLM tensor inside a layer, HF tensor inside transformer.h.{i})
_LAYER_TABLE: tuple[tuple[str, str], ...] = (
    ("input_layernorm.weight", "ln_1.weight"),
    ("input_layernorm.bias", "ln_1.bias"),
    ("attention.dense.weight", "attn.out_proj.weight"),
    ("mlp.fc.weight", "mlp.fc_in.weight"),
    ("mlp.fc.bias", "mlp.fc_in.bias"),
    ("mlp.proj.weight", "mlp.fc_out.weight"),
    ("mlp.proj.bias", "mlp.fc_out.bias"),
)
# Buffers (causal mask, sinusoid table) older transformers versions saved.
_IGNORED = (re.compile(r"transformer\.h\.\d+\.attn\.(masked_bias|bias|embed_positions)"),)


def rotary_dim(hf_config: Mapping[str, Any]) -> int:
    cfg = text_config(hf_config)
    return int(cfg.get("rotary_dim") or model_dims(cfg)["head_size"])


class GptjFamily(Family):
    name = "gptj"
    architectures = ("GPTJForCausalLM",)
    version = str(CONVERTER_VERSION)

    def validate(self, hf_config: Mapping[str, Any]) -> None:
        super().validate(hf_config)
        cfg = text_config(hf_config)
        gpt_common.reject_prequantized(cfg)
        gpt_common.activation(cfg, "activation_function", default="gelu_new")
        dim = rotary_dim(cfg)
        if dim <= 0 or dim % 2 or dim > model_dims(cfg)["head_size"]:
            raise gpt_common.unsupported(f"rotary_dim {dim} (must be even and <= head size)")

    def trtllm_config(self, hf_config: Mapping[str, Any], *, dtype: str) -> dict[str, Any]:
        self.validate(hf_config)
        cfg = text_config(hf_config)
        config = gpt_common.base_config(
            hf_config,
            family=self.name,
            trt_architecture="GPTJForCausalLM",
            dtype=dtype,
            converter_version=CONVERTER_VERSION,
            hidden_act=gpt_common.activation(cfg, "activation_function", default="gelu_new"),
            norm_epsilon=float(cfg.get("layer_norm_epsilon", 1e-5)),
            position_embedding_type="rope_gptj",
            norm_type="layernorm",
            mlp_type="plain",
            parallel_residual=True,
            tied=bool(cfg.get("tie_word_embeddings", False)),
        )
        config.update(
            {
                "rotary_dim": rotary_dim(cfg),
                "rotary_embedding_dim": rotary_dim(cfg),
                "rotary_base": 10000.0,
                "rotary_scaling": None,
                "attn_bias": False,
                "mlp_bias": True,
            }
        )
        return config

    def tensor_plan(self, hf_config: Mapping[str, Any]) -> TensorPlan:
        cfg = text_config(hf_config)
        tied = bool(cfg.get("tie_word_embeddings", False))
        rules = [
            TensorRule("transformer.vocab_embedding.weight", ("transformer.wte.weight",)),
            TensorRule("transformer.ln_f.weight", ("transformer.ln_f.weight",)),
            TensorRule("transformer.ln_f.bias", ("transformer.ln_f.bias",)),
            TensorRule("lm_head.weight", ("transformer.wte.weight" if tied else "lm_head.weight",)),
            TensorRule("lm_head.bias", ("lm_head.bias",)),  # GPT-J's head always has one
        ]
        for i in range(model_dims(cfg)["num_hidden_layers"]):
            dst, src = f"transformer.layers.{i}.", f"transformer.h.{i}."
            qkv = tuple(f"{src}attn.{p}_proj.weight" for p in "qkv")
            rules.append(TensorRule(f"{dst}attention.qkv.weight", qkv, "concat_rows"))
            rules.extend(TensorRule(dst + t, (src + s,)) for t, s in _LAYER_TABLE)
        ignored: tuple[re.Pattern[str], ...] = _IGNORED
        if tied:
            ignored = (*ignored, re.compile(r"lm_head\.weight"))
        return TensorPlan(rules=tuple(rules), ignored=ignored)
