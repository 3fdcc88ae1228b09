"""BLOOM (``BloomForCausalLM``): ALiBi, LayerNorm everywhere, an embedding LayerNorm.

* No position table: attention scores get ``slope_h · (key - query)`` (ALiBi,
  ``position_embedding_type: alibi``; slopes are computed, never stored).
* The token embedding is normalized (``word_embeddings_layernorm``) before the
  first layer: TRT-LLM's ``transformer.ln_embed``, held by the first PP rank.
* The fused ``query_key_value`` rows are ``[heads, 3, d]`` (q, k, v per head) and
  are re-ordered to contiguous q, k, v blocks (docs/trtllm-checkpoint.md §3.2).
* GELU is the tanh approximation; every linear has a bias; the head is tied.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from trtllm_forge.models import gpt_common, tables
from trtllm_forge.models.base import TensorPlan, model_dims, text_config

CONVERTER_VERSION = 1

# (TRT-LLM module, HF module) outside the layers: the embedding LayerNorm and the final one.
_TOP_NORMS: tuple[tuple[str, str], ...] = (
    ("ln_embed", "word_embeddings_layernorm"),
    ("ln_f", "ln_f"),
)
_LAYER_MODULES: tuple[tuple[str, str], ...] = (
    ("input_layernorm", "input_layernorm"),
    ("attention.dense", "self_attention.dense"),
    ("post_layernorm", "post_attention_layernorm"),
    ("mlp.fc", "mlp.dense_h_to_4h"),
    ("mlp.proj", "mlp.dense_4h_to_h"),
)


class BloomFamily(gpt_common.GptStyleFamily):
    name = "bloom"
    architectures = ("BloomForCausalLM",)
    version = str(CONVERTER_VERSION)

    def validate(self, hf_config: Mapping[str, Any]) -> None:
        super().validate(hf_config)
        if text_config(hf_config).get("apply_residual_connection_post_layernorm"):
            raise gpt_common.unsupported("apply_residual_connection_post_layernorm")

    def trtllm_config(self, hf_config: Mapping[str, Any], *, dtype: str) -> dict[str, Any]:
        self.validate(hf_config)
        cfg = text_config(hf_config)
        config = gpt_common.base_config(
            hf_config,
            family=self.name,
            trt_architecture="BloomForCausalLM",
            dtype=dtype,
            converter_version=CONVERTER_VERSION,
            hidden_act="gelu_pytorch_tanh",
            norm_epsilon=float(cfg.get("layer_norm_epsilon", 1e-5)),
            position_embedding_type="alibi",
            norm_type="layernorm",
            mlp_type="plain",
            parallel_residual=False,
            tied=bool(cfg.get("tie_word_embeddings", True)),
        )
        config.update({"bias": True, "attn_bias": True, "mlp_bias": True})
        config["forge"]["embedding_layernorm"] = True
        return config

    def tensor_plan(self, hf_config: Mapping[str, Any]) -> TensorPlan:
        cfg = text_config(hf_config)
        dims = model_dims(cfg)
        tied = bool(cfg.get("tie_word_embeddings", True))
        rules = [
            *tables.embedding_rules("transformer.word_embeddings.weight", tied=tied),
            *tables.module_rules("transformer.", "transformer.", _TOP_NORMS),
        ]
        heads = dims["num_attention_heads"]
        for dst, src in tables.layer_prefixes("transformer.h", dims["num_hidden_layers"]):
            qkv = f"{src}self_attention.query_key_value"
            rules.extend(tables.interleaved_qkv_rules(dst, qkv, heads))
            rules.extend(tables.module_rules(dst, src, _LAYER_MODULES))
        return TensorPlan(rules=tuple(rules), ignored=tables.ignore_tied_head((), tied=tied))
