"""ChatGLM 2 and 3 (``ChatGLMModel`` / ``ChatGLMForConditionalGeneration``, model_type
``chatglm``), implemented from config.json and the weights: transformers ships no class
for them, and the repository's own modeling code is never run.

The decoder, as the checkpoints define it:

* names: ``transformer.embedding.word_embeddings``, ``transformer.encoder.layers.{i}``
  (``input_layernorm``, ``self_attention.query_key_value``, ``self_attention.dense``,
  ``post_attention_layernorm``, ``mlp.dense_h_to_4h``, ``mlp.dense_4h_to_h``),
  ``transformer.encoder.final_layernorm``, ``transformer.output_layer`` (the LM head);
* multi-query groups: ``query_key_value`` rows are ``[q; k; v]`` with q for
  ``num_attention_heads`` heads and k, v for ``multi_query_group_num`` heads of
  ``kv_channels`` each, with a bias (``add_qkv_bias``); no other linear has one;
* rotary on the first half of each head's channels (``kv_channels / 2``), channel pairs
  (0, 1), (2, 3) … rotated together (GPT-J style, TensorRT-LLM's ``rope_gptj``), base
  ``10000 · rope_ratio`` (ChatGLM3's meaning; a ChatGLM2 config with a ratio is refused,
  see models/chatglm_settings.py); the other half passes through;
* SwiGLU: ``dense_h_to_4h`` rows are ``[activated; linear]`` halves, split into
  TensorRT-LLM's ``mlp.fc`` (SiLU branch) and ``mlp.gate`` with ``row_block`` rules;
* RMSNorm everywhere (``layernorm_epsilon``), residuals around each block.

``apply_query_key_layer_scaling`` divides the scores by the layer number and multiplies
them back before the softmax, so it changes nothing and is ignored. Variants the
checkpoints switch on by config (ChatGLM-6B's 2-D positions, LayerNorm, biases on every
linear, no final norm, P-tuning prefixes, int4 weights) are refused by name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from trtllm_forge.models import gpt_common, tables
from trtllm_forge.models.base import TensorPlan, TensorRule
from trtllm_forge.models.chatglm_settings import chatglm_settings

CONVERTER_VERSION = 1

_LAYER_MODULES: tuple[tuple[str, str], ...] = (
    ("input_layernorm", "input_layernorm"),
    ("post_layernorm", "post_attention_layernorm"),
    ("attention.qkv", "self_attention.query_key_value"),
    ("attention.dense", "self_attention.dense"),
    ("mlp.proj", "mlp.dense_4h_to_h"),
)
# (TRT-LLM module, block of dense_h_to_4h's rows): the SiLU half first, then the linear one.
_SWIGLU_BLOCKS: tuple[tuple[str, int], ...] = (("mlp.fc", 0), ("mlp.gate", 1))
_IGNORED = (re.compile(r"transformer\.rotary_pos_emb\.inv_freq"),)


class ChatGLMFamily(gpt_common.GptStyleFamily):
    name = "chatglm"
    architectures = ("ChatGLMModel", "ChatGLMForConditionalGeneration")
    version = str(CONVERTER_VERSION)
    native = True

    def validate(self, hf_config: Mapping[str, Any]) -> None:
        super().validate(hf_config)
        chatglm_settings(hf_config)

    def trtllm_config(self, hf_config: Mapping[str, Any], *, dtype: str) -> dict[str, Any]:
        self.validate(hf_config)
        settings = chatglm_settings(hf_config)
        config = gpt_common.base_config(
            hf_config,
            family=self.name,
            trt_architecture="ChatGLMForCausalLM",
            dtype=dtype,
            converter_version=CONVERTER_VERSION,
            hidden_act="silu",
            norm_epsilon=settings.eps,
            position_embedding_type="rope_gptj",
            norm_type="rmsnorm",
            mlp_type="gated",
            parallel_residual=False,
            tied=False,
        )
        config.update(
            {
                "rotary_base": settings.rope_base,
                "rotary_scaling": None,
                "rotary_embedding_dim": settings.rotary_dim,
                "attn_bias": settings.qkv_bias,
                "mlp_bias": False,
                "add_qkv_bias": settings.qkv_bias,
                "add_bias_linear": False,
                "rmsnorm": True,
            }
        )
        config["forge"].update({"qkv_bias": settings.qkv_bias, "dense_bias": False})
        return config

    def tensor_plan(self, hf_config: Mapping[str, Any]) -> TensorPlan:
        settings = chatglm_settings(hf_config)
        rules = [
            *tables.embedding_rules(
                "transformer.embedding.word_embeddings.weight",
                tied=False,
                head="transformer.output_layer.weight",
            ),
            TensorRule("transformer.ln_f.weight", ("transformer.encoder.final_layernorm.weight",)),
        ]
        for dst, src in tables.layer_prefixes("transformer.encoder.layers", settings.layers):
            rules.extend(tables.module_rules(dst, src, _LAYER_MODULES, ("weight",)))
            if settings.qkv_bias:
                bias = f"{src}self_attention.query_key_value.bias"
                rules.append(TensorRule(f"{dst}attention.qkv.bias", (bias,)))
            fused = (f"{src}mlp.dense_h_to_4h.weight",)
            rules.extend(
                TensorRule(f"{dst}{module}.weight", fused, "row_block", block=block, blocks=2)
                for module, block in _SWIGLU_BLOCKS
            )
        return TensorPlan(rules=tuple(rules), ignored=_IGNORED)

    def native_model(self, hf_config: Mapping[str, Any]) -> Any:
        from trtllm_forge.models.chatglm_model import ChatGLMNative

        return ChatGLMNative(chatglm_settings(hf_config))
