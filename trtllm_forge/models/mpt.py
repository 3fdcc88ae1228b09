"""MPT (``MptForCausalLM``): ALiBi, LayerNorm without bias, no linear biases, exact GELU.

transformers' MPT implements one configuration, and forge accepts exactly it:
ALiBi attention (``attn_config.alibi``, slopes capped by ``alibi_bias_max``),
an FFN of 4 × ``d_model``, no ``clip_qkv``/``qk_ln``/custom ``softmax_scale``,
``no_bias``. The fused ``Wqkv`` rows are already ``[q; k; v]``. TensorRT-LLM
builds MPT as a GPT model (``MPTForCausalLM``) with ``position_embedding_type: alibi``
and ``bias: false``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from trtllm_forge.models import gpt_common, tables
from trtllm_forge.models.base import TensorPlan, model_dims, text_config

CONVERTER_VERSION = 1

# (TRT-LLM module inside a layer, HF module inside transformer.blocks.{i}); Wqkv is
# already [q; k; v].
_LAYER_MODULES: tuple[tuple[str, str], ...] = (
    ("input_layernorm", "norm_1"),
    ("attention.qkv", "attn.Wqkv"),
    ("attention.dense", "attn.out_proj"),
    ("post_layernorm", "norm_2"),
    ("mlp.fc", "ffn.up_proj"),
    ("mlp.proj", "ffn.down_proj"),
)


def _attn_config(cfg: Mapping[str, Any]) -> Mapping[str, Any]:
    attn = cfg.get("attn_config") or {}
    return attn if isinstance(attn, Mapping) else {}


class MptFamily(gpt_common.GptStyleFamily):
    name = "mpt"
    architectures = ("MptForCausalLM",)
    version = str(CONVERTER_VERSION)

    def validate(self, hf_config: Mapping[str, Any]) -> None:
        super().validate(hf_config)
        cfg = text_config(hf_config)
        attn = _attn_config(cfg)
        problems = {
            "attn_config.alibi = false": attn.get("alibi", True) is False,
            "attn_config.clip_qkv": bool(attn.get("clip_qkv")),
            "attn_config.qk_ln": bool(attn.get("qk_ln")),
            "attn_config.softmax_scale": attn.get("softmax_scale") is not None,
            "attn_config.prefix_lm": bool(attn.get("prefix_lm")),
            "no_bias = false": cfg.get("no_bias", True) is False,
            "expansion_ratio != 4": cfg.get("expansion_ratio", 4) != 4,
            "logit_scale": cfg.get("logit_scale") is not None,
        }
        for what, present in problems.items():
            if present:
                raise gpt_common.unsupported(f"MPT {what} (transformers' MPT does not run it)")

    def trtllm_config(self, hf_config: Mapping[str, Any], *, dtype: str) -> dict[str, Any]:
        self.validate(hf_config)
        cfg = text_config(hf_config)
        config = gpt_common.base_config(
            hf_config,
            family=self.name,
            trt_architecture="MPTForCausalLM",
            dtype=dtype,
            converter_version=CONVERTER_VERSION,
            hidden_act="gelu",
            norm_epsilon=float(cfg.get("layer_norm_epsilon", 1e-5)),
            position_embedding_type="alibi",
            norm_type="layernorm",
            mlp_type="plain",
            parallel_residual=False,
            tied=True,
        )
        bias_max = float(_attn_config(cfg).get("alibi_bias_max", 8))
        config.update({"bias": False, "attn_bias": False, "mlp_bias": False})
        config["alibi_bias_max"] = bias_max
        config["forge"]["alibi_bias_max"] = bias_max
        return config

    def tensor_plan(self, hf_config: Mapping[str, Any]) -> TensorPlan:
        cfg = text_config(hf_config)
        weight = ("weight",)  # MPT has no biases at all (LayerNorms included)
        rules = [
            # transformers' MPT always ties the head to wte.
            *tables.embedding_rules("transformer.wte.weight", tied=True),
            *tables.module_rules("transformer.", "transformer.", [("ln_f", "norm_f")], weight),
        ]
        layers = model_dims(cfg)["num_hidden_layers"]
        for dst, src in tables.layer_prefixes("transformer.blocks", layers):
            rules.extend(tables.module_rules(dst, src, _LAYER_MODULES, weight))
        return TensorPlan(rules=tuple(rules), ignored=tables.ignore_tied_head((), tied=True))
