"""Baichuan 2 (``BaichuanForCausalLM``, model_type ``baichuan``), implemented from
config.json and the weights: transformers ships no class for it, and the repository's
own modeling code is never run.

The decoder is Llama's (RMSNorm, SiLU-gated MLP ``gate_proj``/``up_proj``/``down_proj``,
``o_proj``, no biases) with two differences:

* ``self_attn.W_pack`` is one linear whose rows are ``[q; k; v]`` (every head has its own
  K and V), which is TensorRT-LLM's ``attention.qkv`` as is;
* the LM head is a NormHead: every use divides each row of ``lm_head.weight`` by its L2
  norm, so the converter stores the rows normalized (``normalize_rows``).

Positions differ between the two sizes, and the checkpoints tell them apart only by
their config classes: the 7B one (rope, base 10 000, GPT-NeoX halves) defines
``max_position_embeddings``; the 13B one (ALiBi, slopes ``2^(-8i/n)``, no rope) has
``model_max_length`` and no ``max_position_embeddings``. forge reads that key. Baichuan 1
shares the architecture name but not the NormHead; its vocabulary (64 000 tokens)
identifies it and it is refused.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from trtllm_forge.models import gpt_common, tables
from trtllm_forge.models.baichuan_settings import baichuan_settings
from trtllm_forge.models.base import TensorPlan, TensorRule

CONVERTER_VERSION = 1

_LAYER_MODULES: tuple[tuple[str, str], ...] = (
    ("input_layernorm", "input_layernorm"),
    ("post_layernorm", "post_attention_layernorm"),
    ("attention.qkv", "self_attn.W_pack"),
    ("attention.dense", "self_attn.o_proj"),
    ("mlp.fc", "mlp.gate_proj"),
    ("mlp.gate", "mlp.up_proj"),
    ("mlp.proj", "mlp.down_proj"),
)
_IGNORED = (re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq"),)


class BaichuanFamily(gpt_common.GptStyleFamily):
    name = "baichuan"
    architectures = ("BaichuanForCausalLM",)
    version = str(CONVERTER_VERSION)
    native = True

    def validate(self, hf_config: Mapping[str, Any]) -> None:
        super().validate(hf_config)
        baichuan_settings(hf_config)

    def trtllm_config(self, hf_config: Mapping[str, Any], *, dtype: str) -> dict[str, Any]:
        self.validate(hf_config)
        settings = baichuan_settings(hf_config)
        config = gpt_common.base_config(
            hf_config,
            family=self.name,
            trt_architecture="BaichuanForCausalLM",
            dtype=dtype,
            converter_version=CONVERTER_VERSION,
            hidden_act="silu",
            norm_epsilon=settings.eps,
            position_embedding_type="alibi" if settings.alibi else "rope_gpt_neox",
            norm_type="rmsnorm",
            mlp_type="gated",
            parallel_residual=False,
            tied=False,
        )
        config.update(
            {
                "max_position_embeddings": settings.max_positions,
                "rotary_base": settings.rope_base,
                "rotary_scaling": None,
                "attn_bias": False,
                "mlp_bias": False,
            }
        )
        if settings.alibi:
            config["alibi_bias_max"] = 8.0
            config["forge"]["alibi_bias_max"] = 8.0
        return config

    def tensor_plan(self, hf_config: Mapping[str, Any]) -> TensorPlan:
        settings = baichuan_settings(hf_config)
        rules = [
            TensorRule("transformer.vocab_embedding.weight", ("model.embed_tokens.weight",)),
            TensorRule("lm_head.weight", ("lm_head.weight",), "normalize_rows"),
            TensorRule("transformer.ln_f.weight", ("model.norm.weight",)),
        ]
        for dst, src in tables.layer_prefixes("model.layers", settings.layers):
            rules.extend(tables.module_rules(dst, src, _LAYER_MODULES, ("weight",)))
        return TensorPlan(rules=tuple(rules), ignored=_IGNORED)

    def native_model(self, hf_config: Mapping[str, Any]) -> Any:
        from trtllm_forge.models.baichuan_model import BaichuanNative

        return BaichuanNative(baichuan_settings(hf_config))
