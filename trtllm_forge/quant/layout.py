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


def scale_from_amax(amax: torch.Tensor, qmax: float) -> torch.Tensor:
    """Dequant scale ``amax / qmax`` in fp32; an all-zero slice gets scale 1 (its q is 0)."""
    scale = amax.float() / qmax
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
    """Group-wise symmetric INT4 (``scale [out, groups]``) as int8 values in [-8, 7]."""
    return (
        (weight.float() / expand_groups(scale, weight.shape[1])).round().clamp(-8, 7).to(torch.int8)
    )


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
    pairs = q.to(torch.int16).reshape(out // 2, 2, inp)
    packed = (pairs[:, 0] & 0x0F) | ((pairs[:, 1] & 0x0F) << 4)
    return packed.to(torch.uint8).view(torch.int8)


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


# NVFP4 (docs/trtllm-checkpoint.md §2): E2M1 values in blocks of 16 along the input,
# each block scaled by an FP8 E4M3 factor, all of them by one FP32 per-tensor factor.
FP4_MAX = 6.0
NVFP4_BLOCK = 16
E2M1_VALUES = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
_FP8_SMALLEST_SCALE = 2.0**-9  # the smallest positive float8 e4m3fn (subnormal)


def nvfp4_global_scale(amax: torch.Tensor) -> torch.Tensor:
    """Per-tensor dequant factor ``amax / (6 · 448)``: block scales then fit FP8's range."""
    return amax.float() / (FP4_MAX * FP8_MAX)


def nvfp4_block_scales(weight: torch.Tensor, global_scale: torch.Tensor) -> torch.Tensor:
    """FP8 E4M3 scale of each 16-wide input block ``[..., in / 16]``, relative to
    ``global_scale``; an all-zero block gets 1, and every scale is kept inside FP8's range."""
    blocks = weight.float().reshape(*weight.shape[:-1], -1, NVFP4_BLOCK)
    scale = blocks.abs().amax(dim=-1) / (FP4_MAX * global_scale)
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    return scale.clamp(min=_FP8_SMALLEST_SCALE, max=FP8_MAX).to(torch.float8_e4m3fn)


def e2m1_codes(x: torch.Tensor) -> torch.Tensor:
    """4-bit E2M1 codes (bit 3 = sign, bits 0-2 = index into :data:`E2M1_VALUES`) of the
    nearest value; a tie goes to the even index (round half to even)."""
    distance = (x.abs().unsqueeze(-1) - E2M1_VALUES).abs()
    nearest = distance == distance.amin(dim=-1, keepdim=True)
    even_first = nearest.to(torch.uint8) * (2 - torch.arange(8) % 2).to(torch.uint8)
    index = even_first.argmax(dim=-1).to(torch.uint8)
    return index | ((x < 0).to(torch.uint8) << 3)


def e2m1_values(codes: torch.Tensor) -> torch.Tensor:
    magnitude = E2M1_VALUES[(codes & 0x7).long()]
    return torch.where(codes & 0x8 != 0, -magnitude, magnitude)


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """``[..., n]`` 4-bit codes → uint8 ``[..., n / 2]``, low nibble = even index."""
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    both = torch.stack([packed & 0x0F, packed >> 4], dim=-1)
    return both.reshape(*packed.shape[:-1], -1)


def quantize_nvfp4(
    weight: torch.Tensor, global_scale: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(packed uint8 ``[out, in / 2]``, FP8 block scales ``[out, in / 16]``)."""
    scales = nvfp4_block_scales(weight, global_scale)
    blocks = weight.reshape(*weight.shape[:-1], -1, NVFP4_BLOCK)
    scaled = blocks / (scales.float() * global_scale).unsqueeze(-1)
    return pack_nibbles(e2m1_codes(scaled.reshape(weight.shape))), scales


def dequantize_nvfp4(
    packed: torch.Tensor, scales: torch.Tensor, global_scale: torch.Tensor
) -> torch.Tensor:
    values = e2m1_values(unpack_nibbles(packed))
    factor = (scales.float() * global_scale.float()).repeat_interleave(NVFP4_BLOCK, dim=-1)
    return values * factor


def fake_quant_nvfp4(x: torch.Tensor, global_scale: torch.Tensor) -> torch.Tensor:
    """Dynamic NVFP4 activations: per-16 FP8 block scales under a static global scale."""
    scales = nvfp4_block_scales(x, global_scale)
    factor = (scales.float() * global_scale).repeat_interleave(NVFP4_BLOCK, dim=-1)
    return (e2m1_values(e2m1_codes(x.float() / factor)) * factor).to(x.dtype)
