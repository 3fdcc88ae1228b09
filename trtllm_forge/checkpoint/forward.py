"""A float32 torch forward pass computed straight from a canonical checkpoint.

This is forge's "torch reference": the numbers every engine is checked
against. It reads TensorRT-LLM tensor names and config fields only (never the
HF model), so it also proves the converted checkpoint means what we think.

Hooks let the quantization code reuse it: ``weight_provider(name)`` may return
a dequantized float weight (or None for "read it from the checkpoint"), and
``activation_hook(module, x)`` sees (and may fake-quantize) the input of every
linear layer, named like ``transformer.layers.0.attention.qkv`` or ``lm_head``.
``kv_hook(layer, k, v) -> (k, v)`` sees what the KV cache would store (keys after
RoPE, values; [batch, kv_heads, seq, head_size]) for layer
``transformer.layers.{i}``, e.g. to fake-quantize an FP8/INT8 KV cache.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from trtllm_forge.checkpoint.config import model_spec
from trtllm_forge.checkpoint.io import CheckpointReader
from trtllm_forge.errors import ExitCode, ForgeError

WeightProvider = Callable[[str], "torch.Tensor | None"]
ActivationHook = Callable[[str, torch.Tensor], torch.Tensor]
KvHook = Callable[[str, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    variance = x.pow(2).mean(-1, keepdim=True)
    return weight * (x * torch.rsqrt(variance + eps))


def layer_norm(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float
) -> torch.Tensor:
    return torch.nn.functional.layer_norm(x, (x.shape[-1],), weight, bias, eps)


def rotary_dim(config: Mapping[str, Any]) -> int:
    """How many leading channels of each head rope rotates (partial rotary: < head_size)."""
    return int(config.get("rotary_embedding_dim") or config["head_size"])


def rope_inv_freq(config: Mapping[str, Any], seq_len: int) -> torch.Tensor:
    """Inverse frequencies for rope_gpt_neox, with the config's rotary scaling applied."""
    dim = rotary_dim(config)
    base = float(config.get("rotary_base", 10000.0))
    scaling = config.get("rotary_scaling") or {}
    kind = scaling.get("type", scaling.get("rope_type", "none"))
    factor = float(scaling.get("factor", 1.0))
    if kind == "dynamic":
        # NTK-aware: stretch the base only once the sequence outgrows the trained length.
        trained = int(config["max_position_embeddings"])
        length = max(seq_len, trained)
        base = base * ((factor * length / trained) - (factor - 1)) ** (dim / (dim - 2))
    exponents = torch.arange(0, dim, 2, dtype=torch.int64).to(torch.float32) / dim
    if kind == "longrope":
        return longrope_inv_freq(base, exponents, scaling, long=seq_len > longrope_length(scaling))
    inv_freq = 1.0 / (base**exponents)
    if kind == "linear":
        return inv_freq / factor
    if kind == "llama3":
        return _llama3_inv_freq(inv_freq, scaling, factor)
    if kind not in ("none", "dynamic"):
        raise ForgeError(
            ExitCode.SOURCE,
            f"the reference forward does not implement rotary scaling {kind!r}",
            hint="supported: linear, dynamic, llama3, longrope",
        )
    return inv_freq


def longrope_length(scaling: Mapping[str, Any]) -> int:
    """LongRoPE's pretraining length: longer sequences take the long factors."""
    return int(scaling["original_max_position_embeddings"])


def longrope_inv_freq(
    base: float, exponents: torch.Tensor, scaling: Mapping[str, Any], *, long: bool
) -> torch.Tensor:
    """LongRoPE (Phi-3): each frequency divided by its short or long factor, in the
    order transformers computes it (``1 / (factor · base^e)``) so float32 results agree."""
    factors = scaling["long_factor" if long else "short_factor"]
    return 1.0 / (torch.tensor(factors, dtype=torch.float32) * base**exponents)


def rope_attention_factor(config: Mapping[str, Any]) -> float:
    """What cos and sin are multiplied by: LongRoPE's attention factor, else 1."""
    scaling = config.get("rotary_scaling") or {}
    if scaling.get("type", scaling.get("rope_type")) != "longrope":
        return 1.0
    return float(scaling["attention_factor"])


def _llama3_inv_freq(
    inv_freq: torch.Tensor, scaling: Mapping[str, Any], factor: float
) -> torch.Tensor:
    low = float(scaling["low_freq_factor"])
    high = float(scaling["high_freq_factor"])
    trained = float(scaling["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv_freq
    # Long wavelengths are stretched by `factor`, short ones kept; in between, blend.
    scaled = torch.where(wavelen > trained / low, inv_freq / factor, inv_freq)
    smooth = (trained / wavelen - low) / (high - low)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    middle = ~(wavelen < trained / high) & ~(wavelen > trained / low)
    return torch.where(middle, blended, scaled)


def rope_cos_sin(config: Mapping[str, Any], seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``cos, sin`` of shape [seq, rotary_dim]: the half-frequency table repeated twice
    (rope_gpt_neox), or each frequency repeated for its channel pair (rope_gptj)."""
    inv_freq = rope_inv_freq(config, seq_len)
    positions = torch.arange(seq_len, dtype=torch.float32)
    freqs = torch.outer(positions, inv_freq)
    if config.get("position_embedding_type") == "rope_gptj":
        table = freqs.repeat_interleave(2, dim=-1)
    else:
        table = torch.cat([freqs, freqs], dim=-1)
    scale = rope_attention_factor(config)
    if scale != 1.0:
        return table.cos() * scale, table.sin() * scale
    return table.cos(), table.sin()


def apply_rope_gptj(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """GPT-J rope: rotate channel pairs (0,1), (2,3) ... instead of the two halves."""
    pairs = x.unflatten(-1, (-1, 2))
    rotated = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)
    return x * cos + rotated * sin


def apply_position_rope(
    config: Mapping[str, Any], x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> torch.Tensor:
    """Rope on the first ``rotary_dim`` channels of each head (all of them unless partial)."""
    kind = config.get("position_embedding_type", "rope_gpt_neox")
    if kind not in ("rope_gpt_neox", "rope_gptj"):
        return x
    dim = cos.shape[-1]
    rotate = apply_rope_gptj if kind == "rope_gptj" else apply_rope
    if dim == x.shape[-1]:
        return rotate(x, cos, sin)
    return torch.cat([rotate(x[..., :dim], cos, sin), x[..., dim:]], dim=-1)


ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": torch.nn.functional.silu,
    "relu": torch.relu,
    "gelu": torch.nn.functional.gelu,
    "gelu_new": lambda x: torch.nn.functional.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: torch.nn.functional.gelu(x, approximate="tanh"),
    "gelu_fast": lambda x: torch.nn.functional.gelu(x, approximate="tanh"),
}


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` [batch, heads, seq, head_size] in GPT-NeoX style (halves, not pairs)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def alibi_slopes(heads: int, bias_max: float = 8.0) -> torch.Tensor:
    """ALiBi slope of each head [heads] (Press et al.; BLOOM, MPT, TensorRT-LLM agree).

    For a power of two ``n``: ``2^(-bias_max·i/n)``, i = 1..n. Otherwise the slopes of
    the next lower power of two, then every other slope of the next higher one.
    """
    low = 2 ** math.floor(math.log2(heads))
    slopes = [2.0 ** (-bias_max * i / low) for i in range(1, low + 1)]
    extra = [2.0 ** (-bias_max * i / (2 * low)) for i in range(1, 2 * low + 1, 2)]
    return torch.tensor(slopes + extra[: heads - low], dtype=torch.float32)


def alibi_bias(slopes: torch.Tensor, seq: int) -> torch.Tensor:
    """[heads, seq, seq] additive scores ``slope_h · (key - query)`` (≤ 0 where causal)."""
    distance = torch.arange(seq)[None, :] - torch.arange(seq)[:, None]
    return slopes[:, None, None] * distance.to(torch.float32)


def causal_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    sliding_window: int | None = None,
    bias: torch.Tensor | None = None,
    scale: float | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """Softmax attention for q [b, hq, s, d] over k, v [b, hkv, s, d] (GQA when hkv < hq).

    Query head h reads KV head ``h // (hq // hkv)``. Scores are ``q·k · scale`` (default
    ``1/sqrt(d)``), then soft-capped to ``softcap · tanh(x / softcap)`` when ``softcap``
    is set (Gemma 2). ``bias`` [hq, s, s] is added to them (ALiBi). Returns [b, s, hq * d].
    """
    group = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(group, dim=1)
    v = v.repeat_interleave(group, dim=1)
    seq = q.shape[2]
    scores = (q @ k.transpose(-1, -2)) * (scale or 1.0 / math.sqrt(q.shape[-1]))
    if softcap:
        scores = soft_cap(scores, softcap)
    if bias is not None:
        scores = scores + bias
    query_pos = torch.arange(seq)[:, None]
    key_pos = torch.arange(seq)[None, :]
    allowed = key_pos <= query_pos
    if sliding_window is not None:
        allowed &= key_pos > query_pos - sliding_window
    scores = scores.masked_fill(~allowed, float("-inf"))
    out = torch.softmax(scores, dim=-1) @ v
    return out.transpose(1, 2).reshape(q.shape[0], seq, -1)


def soft_cap(x: torch.Tensor, cap: float) -> torch.Tensor:
    """``cap · tanh(x / cap)``: smoothly bounds ``x`` to (-cap, cap) (Gemma 2)."""
    return torch.tanh(x / cap) * cap


def local_rope_config(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """The rope of the sliding-window layers: Gemma 3 gives them their own base
    (``rope_local_base_freq``) and no scaling; other models use one rope everywhere."""
    local = config.get("rope_local_base_freq")
    if not local:
        return config
    return {**config, "rotary_base": float(local), "rotary_scaling": None}


def split_heads(x: torch.Tensor, heads: int, head_size: int) -> torch.Tensor:
    """[b, s, heads * d] -> [b, heads, s, d]."""
    return x.view(x.shape[0], x.shape[1], heads, head_size).transpose(1, 2)


class CheckpointForward:
    """Float32 logits from an unsharded TensorRT-LLM checkpoint (tp = pp = 1).

    Args:
        ckpt_dir: directory with config.json and rank0.safetensors.
        weight_provider: ``name -> float tensor or None``; None falls back to the
            checkpoint tensor (cast to float32).
        activation_hook: ``(module_name, x) -> x`` applied to every linear input; also
            settable later as the ``activation_hook`` attribute (a wrapper of the one set).
        kv_hook: ``(layer, k, v) -> (k, v)`` applied to what the KV cache stores; also
            settable later as the ``kv_hook`` attribute.
    """

    def __init__(
        self,
        ckpt_dir: Path,
        weight_provider: WeightProvider | None = None,
        activation_hook: ActivationHook | None = None,
        kv_hook: KvHook | None = None,
    ) -> None:
        self.reader = CheckpointReader(Path(ckpt_dir))
        self.config = self.reader.config
        # The attention scale and each layer's window, as the lowering reads them.
        self.spec = model_spec(self.config)
        if self.reader.world_size != 1:
            raise ForgeError(
                ExitCode.INTERNAL,
                f"CheckpointForward needs an unsharded checkpoint, got world size "
                f"{self.reader.world_size}",
            )
        self._provider = weight_provider
        self.activation_hook = activation_hook
        self.kv_hook = kv_hook
        self._cache: dict[str, torch.Tensor | None] = {}

    def close(self) -> None:
        self.reader.close()

    def weight(self, name: str) -> torch.Tensor | None:
        """Float32 tensor ``name`` (provider first, then the checkpoint), None if absent."""
        if name not in self._cache:
            provided = self._provider(name) if self._provider is not None else None
            if provided is not None:
                self._cache[name] = provided.to(torch.float32)
            elif self.reader.has(name):
                self._cache[name] = self.reader.get(name).to(torch.float32)
            else:
                self._cache[name] = None
        return self._cache[name]

    def _required(self, name: str) -> torch.Tensor:
        tensor = self.weight(name)
        if tensor is None:
            raise ForgeError(
                ExitCode.STORE,
                f"checkpoint {self.reader.dir} has no tensor {name}",
                hint="the checkpoint is incomplete; rebuild it",
            )
        return tensor

    def linear(self, module: str, x: torch.Tensor) -> torch.Tensor:
        if self.activation_hook is not None:
            x = self.activation_hook(module, x)
        out = x @ self._required(f"{module}.weight").T
        bias = self.weight(f"{module}.bias")
        return out if bias is None else out + bias

    def norm(self, prefix: str, x: torch.Tensor) -> torch.Tensor:
        """RMSNorm, or LayerNorm (weight + bias) when ``forge.norm_type`` says so."""
        eps = self.spec.norm_epsilon
        weight = self._required(f"{prefix}.weight")
        if self.spec.norm_type == "layernorm":
            return layer_norm(x, weight, self.weight(f"{prefix}.bias"), eps)
        return rms_norm(x, weight, eps)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token embedding (× ``embedding_multiplier``) + learned positions if the model has them."""
        h = self._required("transformer.vocab_embedding.weight")[input_ids]
        if self.spec.embedding_multiplier != 1.0:
            h = h * self.spec.embedding_multiplier
        if self.spec.position_embedding_type == "learned_absolute":
            positions = torch.arange(input_ids.shape[1])
            h = h + self._required("transformer.position_embedding.weight")[positions]
        if self.weight("transformer.ln_embed.weight") is not None:
            h = self.norm("transformer.ln_embed", h)  # BLOOM's word_embeddings_layernorm
        return h

    @torch.no_grad()
    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[batch, seq] token ids -> [batch, seq, vocab_size] float32 logits."""
        cfg = self.config
        h = self.embed(input_ids)
        cos, sin = rope_cos_sin(cfg, input_ids.shape[1])
        local_rope = rope_cos_sin(local_rope_config(cfg), input_ids.shape[1])
        spec = self.spec
        for i in range(spec.num_layers):
            prefix = f"transformer.layers.{i}."
            x = self.norm(prefix + "input_layernorm", h)
            window = self.spec.layer_window(i)
            if window is not None and spec.rope_local_base_freq:
                attn = self._attention(prefix, x, *local_rope, window=window)  # Gemma 3
            else:
                attn = self._attention(prefix, x, cos, sin, window=window)
            if spec.inter_layernorms:
                h = self._sandwich_layer(prefix, h, attn)
                continue
            if spec.parallel_residual:
                # NeoX: the MLP reads its own norm of h; GPT-J (no post_layernorm): the same x.
                if self.weight(prefix + "post_layernorm.weight") is not None:
                    x = self.norm(prefix + "post_layernorm", h)
                elif self.weight(prefix + "mlp_layernorm.weight") is not None:
                    x = self.norm(prefix + "mlp_layernorm", h)  # Falcon new decoder (ln_mlp)
                h = h + attn + self._mlp(prefix, x)
                continue
            h = h + attn
            x = self.norm(prefix + "post_layernorm", h)
            h = h + self._mlp(prefix, x)
        h = self.norm("transformer.ln_f", h)
        logits = self.linear("lm_head", h)[..., : spec.vocab_size]
        cap = spec.final_logit_softcapping
        return soft_cap(logits, cap) if cap else logits

    def _sandwich_layer(self, prefix: str, h: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """Gemma 2 (``inter_layernorms``): each branch output is normalized before its
        residual add; ``post_layernorm`` normalizes the attention output and the MLP
        reads ``pre_feedforward_layernorm``."""
        h = h + self.norm(prefix + "post_layernorm", attn)
        mlp = self._mlp(prefix, self.norm(prefix + "pre_feedforward_layernorm", h))
        return h + self.norm(prefix + "post_feedforward_layernorm", mlp)

    def _attention(
        self,
        prefix: str,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        *,
        window: int | None,
    ) -> torch.Tensor:
        cfg, spec = self.config, self.spec
        heads, kv_heads, size = spec.num_heads, spec.num_kv_heads, spec.head_size
        qkv = self.linear(prefix + "attention.qkv", x)
        q, k, v = torch.split(qkv, [heads * size, kv_heads * size, kv_heads * size], dim=-1)
        q, k = split_heads(q, heads, size), split_heads(k, kv_heads, size)
        if spec.qk_layernorm:  # Qwen3, Gemma 3: per head, pre-rope
            q = self.norm(prefix + "attention.q_layernorm", q)
            k = self.norm(prefix + "attention.k_layernorm", k)
        q = apply_position_rope(cfg, q, cos, sin)
        k = apply_position_rope(cfg, k, cos, sin)
        v = split_heads(v, kv_heads, size)
        if self.kv_hook is not None:
            k, v = self.kv_hook(prefix.rstrip("."), k, v)
        cap = spec.attn_logit_softcapping
        out = causal_attention(
            q,
            k,
            v,
            sliding_window=window,
            bias=self._alibi(q.shape[2]),
            scale=self.spec.attention_scale,
            softcap=cap,
        )
        return self.linear(prefix + "attention.dense", out)

    def _alibi(self, seq: int) -> torch.Tensor | None:
        """ALiBi scores bias [heads, seq, seq] when ``position_embedding_type`` is alibi."""
        if self.spec.position_embedding_type != "alibi":
            return None
        slopes = alibi_slopes(self.spec.num_heads, self.spec.alibi_bias_max)
        return alibi_bias(slopes, seq)

    def _moe(self, prefix: str, x: torch.Tensor, moe: Mapping[str, Any]) -> torch.Tensor:
        """Mixtral: softmax over the router's logits, keep the top-k, renormalize them to
        sum to one, and add those experts' gated MLPs weighted by them (every expert is
        computed; unrouted ones get weight 0)."""
        probs = torch.softmax(self.linear(prefix + "mlp.router", x), dim=-1)
        top, chosen = torch.topk(probs, int(moe["top_k"]), dim=-1)
        if int(moe.get("normalization_mode", 1)):
            top = top / top.sum(dim=-1, keepdim=True)
        weights = torch.zeros_like(probs).scatter(-1, chosen, top)
        out = torch.zeros_like(x)
        for e in range(int(moe["num_experts"])):
            expert = self._gated_mlp(f"{prefix}mlp.experts.{e}.", x)
            out = out + weights[..., e : e + 1] * expert
        if moe.get("shared_expert_intermediate_size"):  # Qwen2-MoE: every token, gated
            gate = torch.sigmoid(self.linear(prefix + "mlp.shared_expert_gate", x))
            out = out + gate * self._gated_mlp(prefix + "mlp.shared_expert.", x)
        return out

    def _gated_mlp(self, prefix: str, x: torch.Tensor) -> torch.Tensor:
        act = ACTIVATIONS[self.spec.hidden_act]
        activated = act(self.linear(prefix + "fc", x))
        return self.linear(prefix + "proj", activated * self.linear(prefix + "gate", x))

    def _mlp(self, prefix: str, x: torch.Tensor) -> torch.Tensor:
        moe = self.config.get("moe")
        if moe and moe.get("num_experts"):
            return self._moe(prefix, x, moe)
        # TensorRT-LLM GatedMLP: proj(act(fc(x)) * gate(x)); fc = HF gate_proj.
        # Plain MLP (forge.mlp_type "plain"): proj(act(fc(x))).
        act = ACTIVATIONS[self.spec.hidden_act]
        activated = act(self.linear(prefix + "mlp.fc", x))
        if self.spec.mlp_type == "plain":
            return self.linear(prefix + "mlp.proj", activated)
        return self.linear(prefix + "mlp.proj", activated * self.linear(prefix + "mlp.gate", x))
