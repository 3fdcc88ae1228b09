"""Number formats and TensorRT-LLM packing: amax → scale, quantize, pack, dequantize.

Scale convention everywhere (as in TensorRT-LLM and ModelOpt): a *dequant* scale,
``real ≈ q × scale`` with ``scale = amax / qmax``. The arithmetic follows
ModelOpt's exporter operation for operation (fp32 division, round half to even,
clamp) so forge's writer and ModelOpt's produce identical integers.
"""

from __future__ import annotations

import torch

INT8_MAX = 127.0
INT4_MAX = 7.0
FP8_MAX = 448.0  # largest finite float8 e4m3fn


def divide(x: torch.Tensor, divisor: float) -> torch.Tensor:
    """``x / divisor`` correctly rounded on every device. CUDA divides by a host scalar as
    a multiplication by its reciprocal (one rounding more): int4 scales packed on the GPU
    came out one ulp off the CPU's (tests/test_layerwise.py, run on the H200). A 0-d
    tensor on x's device takes the true division there; on the CPU the result is the
    same as ``x / divisor``."""
    return x / torch.full((), divisor, dtype=x.dtype, device=x.device)


def scale_from_amax(amax: torch.Tensor, qmax: float) -> torch.Tensor:
    """Dequant scale ``amax / qmax`` in fp32; an all-zero slice gets scale 1 (its q is 0)."""
    scale = divide(amax.float(), qmax)
    return torch.where(scale == 0, torch.ones_like(scale), scale)


def tensor_amax(weight: torch.Tensor) -> torch.Tensor:
    return weight.abs().amax().float()


def channel_amax(weight: torch.Tensor) -> torch.Tensor:
    """Per output channel ``[out]``."""
    return weight.abs().amax(dim=1).float()


def group_amax(weight: torch.Tensor, group_size: int) -> torch.Tensor:
    """Per (output channel, input group) ``[out, in / group_size]``."""
    out, inp = weight.shape
    if inp % group_size:
        raise ValueError(f"in_features {inp} is not a multiple of group size {group_size}")
    return weight.reshape(out, inp // group_size, group_size).abs().amax(dim=-1).float()


def expand_groups(scale: torch.Tensor, in_features: int) -> torch.Tensor:
    """``[out, groups]`` → ``[out, in]`` (each group's scale repeated over its columns)."""
    group_size = in_features // scale.shape[1]
    return scale.repeat_interleave(group_size, dim=1)


def quantize_int8(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Per-channel (``scale [out]``) or per-tensor (0-d) symmetric INT8."""
    s = scale[:, None] if scale.dim() == 1 else scale
    return (weight.float() / s).round().clamp(-128, 127).to(torch.int8)


def quantize_int4(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Group-wise symmetric INT4 (``scale [out, groups]``) as int8 values in [-8, 7].

    Each group is divided by its scale broadcast (the same fp32 divisions as dividing by
    the scale expanded to ``[out, in]``, without building that tensor), then rounded and
    clamped in place: one float32 temporary instead of four."""
    out, inp = weight.shape
    groups = scale.shape[1]
    grouped = weight.float().reshape(out, groups, inp // groups)
    q = grouped / scale.float()[:, :, None]
    return q.round_().clamp_(-8, 7).to(torch.int8).reshape(out, inp)


def quantize_fp8(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Per-tensor (0-d/[1]) or per-channel (``[out]``) float8 e4m3fn."""
    s = scale[:, None] if scale.dim() == 1 and scale.numel() > 1 else scale.reshape(())
    return (weight.float() / s).to(torch.float8_e4m3fn)


def pack_int4_rows(q: torch.Tensor) -> torch.Tensor:
    """Pack int4 values ``[out, in]`` into int8 ``[out / 2, in]``: two consecutive output
    rows share a byte, low nibble = even row (TensorRT-LLM's pre-build AWQ layout)."""
    out, inp = q.shape
    if out % 2:
        raise ValueError(f"cannot pack int4 weights with an odd out dimension ({out})")
    # On the bytes themselves (two's complement: the low nibble of an int8 is its int4
    # value; a uint8 shift drops the high one), no wider temporary.
    pairs = q.to(torch.int8).view(torch.uint8).reshape(out // 2, 2, inp)
    packed = (pairs[:, 0] & 0x0F) | (pairs[:, 1] << 4)
    return packed.view(torch.int8)


def unpack_int4_rows(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_int4_rows`: int8 values in [-8, 7], ``[out, in]``."""
    raw = packed.view(torch.uint8).to(torch.int16)
    low, high = raw & 0x0F, (raw >> 4) & 0x0F
    both = torch.stack([low, high], dim=1).reshape(-1, packed.shape[1])
    return torch.where(both > 7, both - 16, both).to(torch.int8)


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    s = scale.float()
    return q.float() * (s[:, None] if s.dim() == 1 and s.numel() > 1 else s.reshape(()))


def dequantize_int4(packed: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    q = unpack_int4_rows(packed).float()
    return q * expand_groups(scale.float(), q.shape[1])


def dequantize_fp8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    s = scale.float()
    return q.float() * (s[:, None] if s.dim() == 1 and s.numel() > 1 else s.reshape(()))


def fake_quant_int8(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Quantize-dequantize activations with a dequant scale (broadcast against ``x``)."""
    return (x / scale).round().clamp(-128, 127) * scale


def fake_quant_fp8(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return (x / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).to(x.dtype) * scale


def int4_group_tensors(
    weight: torch.Tensor,
    amax: torch.Tensor,
    pre_quant_scale: torch.Tensor | None,
    dtype: torch.dtype,
) -> dict[str, torch.Tensor]:
    """TensorRT-LLM's groupwise INT4 tensors of one linear: two int4 output rows per byte,
    fp32 scales ``[out, in / g]`` from the group ranges, and the pre-quant scale (AWQ) in
    the checkpoint dtype when there is one."""
    scale = scale_from_amax(amax, INT4_MAX)
    out = {"weight": pack_int4_rows(quantize_int4(weight, scale)), "weights_scaling_factor": scale}
    if pre_quant_scale is not None:
        out["prequant_scaling_factor"] = pre_quant_scale.to(dtype)
    return out


# compressed-tensors ``pack-quantized`` (0.20, ``compressors/``): each value offset by
# 2^(b-1) and packed densely along the input dim, element i of a word at bit i·b.
def pack_int32(q: torch.Tensor, bits: int) -> torch.Tensor:
    """Signed ``bits``-bit integers ``[rows, cols]`` → int32 ``[rows, cols·bits/32]``."""
    rows, cols = q.shape
    per_word = 32 // bits
    if cols % per_word:
        raise ValueError(f"in_features {cols} is not a multiple of {per_word}")
    unsigned = (q.to(torch.int64) + (1 << (bits - 1))).reshape(rows, cols // per_word, per_word)
    shifts = torch.arange(per_word, dtype=torch.int64) * bits
    words = (unsigned << shifts).sum(dim=-1)
    signed = torch.where(words >= 1 << 31, words - (1 << 32), words)
    return signed.to(torch.int32)


def ct_pack_quantized(
    q: torch.Tensor, bits: int, scale: torch.Tensor, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """``weight_packed`` int32, ``weight_shape`` int64 [2] and ``weight_scale`` in the
    checkpoint dtype (the loader allocates it in the weight's dtype)."""
    return {
        "weight_packed": pack_int32(q, bits),
        "weight_shape": torch.tensor(list(q.shape), dtype=torch.int64),
        "weight_scale": scale.to(dtype),
    }
