"""Load a ModelOpt unified HF checkpoint into a float transformers model (forge's own
loader; nothing in transformers reads this format).

Per quantized linear, from the format's tensors alone:

* weight: int8 × ``weight_scale`` [out]; uint8 holding two int4 output rows per byte
  (low nibble = even row, two's complement) × ``weight_scale`` [out, in/g]; float8
  × ``weight_scale`` (0-d or [out]); NVFP4: uint8 holding two e2m1 inputs per byte ×
  fp8 ``weight_scale`` [out, in/16] × ``weight_scale_2``;
* input: × ``pre_quant_scale``, then Q/DQ with ``input_scale`` (INT8 for W8A8 SmoothQuant,
  FP8 for FP8) or, for FP8_PER_CHANNEL_PER_TOKEN, with a scale per token; NVFP4 inputs
  to e2m1 per 16 channels under the static ``input_scale``;
* KV cache: keys (after RoPE) and values Q/DQ with ``k_proj.k_scale`` / ``v_proj.v_scale``,
  through an attention function registered with transformers that wraps SDPA (Q/DQ with
  a fixed scale is idempotent, so quantizing the whole cache at every step equals
  quantizing each entry once, as a quantized cache stores it). ModelOpt writes amax / 448
  for FP8 and NVFP4 caches alike; an NVFP4 cache is E2M1 per 16 channels of each head
  under the per-tensor scale amax / (6 · 448) = ``k_scale`` / 6, the NVFP4 quantizer's.

This module deliberately re-derives the unpacking instead of importing the writer's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from trtllm_forge.hf.reader import describe
from trtllm_forge.sources.policy import read_config

_FP8_MAX = 448.0


def _unpack_uint4_rows(packed: torch.Tensor) -> torch.Tensor:
    low = (packed & 0x0F).to(torch.int16)
    high = (packed >> 4).to(torch.int16)
    rows = torch.stack([low, high], dim=1).reshape(packed.shape[0] * 2, packed.shape[1])
    return torch.where(rows >= 8, rows - 16, rows).float()


# E2M1 magnitudes by 3-bit code; bit 3 of a code is the sign.
_E2M1 = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])


def _nvfp4_weight(weight: torch.Tensor, scale: torch.Tensor, scale_2: torch.Tensor) -> torch.Tensor:
    """uint8 [out, in/2] (input 2j in the low nibble, 2j+1 in the high one) × fp8 block
    scale [out, in/16] × fp32 ``weight_scale_2``."""
    codes = torch.empty(weight.shape[0], weight.shape[1] * 2, dtype=torch.uint8)
    codes[:, 0::2], codes[:, 1::2] = weight & 0x0F, weight >> 4
    values = _E2M1[(codes & 7).long()] * (1 - 2 * (codes >> 3).float())
    block = values.shape[1] // scale.shape[1]
    return values * (scale.float() * scale_2.float()).repeat_interleave(block, dim=1)


def _nvfp4_input(x: torch.Tensor, global_scale: torch.Tensor) -> torch.Tensor:
    """Activations Q/DQ'd to E2M1 per 16 channels; each block's scale (relative to the
    static ``input_scale``) is itself rounded to FP8 E4M3, as the GEMM kernels compute it."""
    blocks = x.unflatten(-1, (-1, 16))
    local = blocks.abs().amax(dim=-1, keepdim=True) / (6.0 * global_scale)
    local = torch.where(local == 0, torch.ones_like(local), local)
    step = local.clamp(2.0**-9, _FP8_MAX).to(torch.float8_e4m3fn).float() * global_scale
    scaled = blocks / step
    # Nearest E2M1 magnitude; ties go to the even code (round half to even).
    gaps = (scaled.abs().unsqueeze(-1) - _E2M1).abs()
    best = gaps.min(dim=-1, keepdim=True).values
    code = torch.where(gaps == best, 8 - torch.arange(8) % 2 * 4, 0).argmax(dim=-1)
    return (torch.sign(scaled) * _E2M1[code] * step).flatten(-2)


def dequantize(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Float32 ``[out, in]`` from one linear's stored weight and ``weight_scale``."""
    scale = scale.float()
    if weight.dtype == torch.uint8:
        values = _unpack_uint4_rows(weight)
        group = values.shape[1] // scale.shape[1]
        return values * scale.repeat_interleave(group, dim=1)
    values = weight.float()
    if scale.dim() == 0 or scale.numel() == 1:
        return values * scale.reshape(())
    return values * scale.reshape(-1, 1)


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            out.update({name: handle.get_tensor(name) for name in handle.keys()})
    return out


def _input_hook(algo: str, pqs: torch.Tensor | None, scale: torch.Tensor | None) -> Any:
    def hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x = args[0].float()
        if pqs is not None:
            x = x * pqs
        if algo == "W8A8_SQ_PER_CHANNEL" and scale is not None:
            x = (x / scale).round().clamp(-128, 127) * scale
        elif algo in ("FP8", "W4A8_AWQ") and scale is not None:
            x = (x / scale).clamp(-_FP8_MAX, _FP8_MAX).to(torch.float8_e4m3fn).float() * scale
        elif algo == "NVFP4" and scale is not None:
            x = _nvfp4_input(x, scale)
        elif algo == "FP8_PER_CHANNEL_PER_TOKEN":
            per_token = (x.abs().amax(dim=-1, keepdim=True) / _FP8_MAX).clamp(min=1e-12)
            x = (x / per_token).to(torch.float8_e4m3fn).float() * per_token
        return (x.to(args[0].dtype), *args[1:])

    return hook


KV_ATTENTION = "forge_kv_fake_quant"


def _fake_quant(x: torch.Tensor, scale: torch.Tensor, kind: str) -> torch.Tensor:
    xf = x.float()
    if kind == "NVFP4":
        q = _nvfp4_input(xf, scale / 6.0)
    elif kind == "FP8":
        q = (xf / scale).clamp(-_FP8_MAX, _FP8_MAX).to(torch.float8_e4m3fn).float() * scale
    else:
        q = (xf / scale).round().clamp(-128, 127) * scale
    return q.to(x.dtype)


def _kv_attention(
    module: nn.Module, query: Any, key: Any, value: Any, *args: Any, **kwargs: Any
) -> Any:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    scales = getattr(module, "_forge_kv_scales", None)
    if scales is not None:
        k_scale, v_scale, kind = scales
        key, value = _fake_quant(key, k_scale, kind), _fake_quant(value, v_scale, kind)
    return sdpa_attention_forward(module, query, key, value, *args, **kwargs)


def _use_kv_scales(model: nn.Module, tensors: dict[str, torch.Tensor], kind: str) -> None:
    """Attach each attention's K/V scales and route attention through :func:`_kv_attention`."""
    from transformers import AttentionInterface

    modules = dict(model.named_modules())
    found = 0
    for name, tensor in tensors.items():
        if name.endswith(".k_proj.k_scale"):
            attention = name.removesuffix(".k_proj.k_scale")
            v_scale = tensors[f"{attention}.v_proj.v_scale"].float().reshape(())
            modules[attention]._forge_kv_scales = (tensor.float().reshape(()), v_scale, kind)  # type: ignore[assignment]
            found += 1
    if found:
        AttentionInterface.register(KV_ATTENTION, _kv_attention)
        model.set_attn_implementation(KV_ATTENTION)  # type: ignore[operator]


def load_modelopt_model(folder: Path) -> nn.Module:
    """The folder as a float32 transformers causal LM with dequantized weights and input hooks."""
    import transformers

    folder = Path(folder)
    info = describe(folder)
    config_doc = read_config(folder)
    config_doc.pop("quantization_config", None)
    config = transformers.AutoConfig.for_model(**config_doc)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tensors = _tensors(folder)
    state: dict[str, torch.Tensor] = {}
    hooks: dict[str, Any] = {}
    for name, tensor in tensors.items():
        module, _, param = name.rpartition(".")
        if (
            param == "weight"
            and tensor.dtype == torch.uint8
            and f"{module}.weight_scale_2" in tensors
            and tensors[f"{module}.weight_scale"].dtype == torch.float8_e4m3fn
        ):
            scales = (tensors[f"{module}.weight_scale"], tensors[f"{module}.weight_scale_2"])
            state[name] = _nvfp4_weight(tensor, *scales)
        if param == "weight" and f"{module}.weight_scale" in tensors:
            if name not in state:
                state[name] = dequantize(tensor, tensors[f"{module}.weight_scale"])
            if str(info.quant_algo) == "W4A8_AWQ":  # the int4 groups run as FP8
                fp8 = tensors[f"{module}.weight_scale_2"].float().reshape(())
                state[name] = (state[name] / fp8).to(torch.float8_e4m3fn).float() * fp8
            pqs = tensors.get(f"{module}.pre_quant_scale")
            act = tensors.get(f"{module}.input_scale")
            hooks[module] = _input_hook(
                str(info.quant_algo),
                None if pqs is None else pqs.float(),
                None if act is None else act.float().reshape(()),
            )
        elif param in (
            "weight_scale",
            "weight_scale_2",
            "input_scale",
            "pre_quant_scale",
            "k_scale",
            "v_scale",
        ):
            continue
        else:
            state[name] = tensor.float()
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise ValueError(
            f"folder does not match its config: missing {missing}, unexpected {unexpected}"
        )
    modules = dict(model.named_modules())
    for module, hook in hooks.items():
        modules[module].register_forward_pre_hook(hook)
    if info.kv_cache in ("FP8", "INT8", "NVFP4"):
        _use_kv_scales(model, tensors, info.kv_cache)
    model.train(False)
    return model
