"""Number formats and TensorRT-LLM packing."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from trtllm_forge.quant import layout


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 8), cols=st.integers(1, 9), seed=st.integers(0, 10_000))
def test_int4_pack_roundtrip(rows: int, cols: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    q = torch.randint(-8, 8, (2 * rows, cols), generator=gen, dtype=torch.int8)
    packed = layout.pack_int4_rows(q)
    assert packed.dtype == torch.int8 and packed.shape == (rows, cols)
    assert torch.equal(layout.unpack_int4_rows(packed), q)


def test_int4_packing_puts_even_rows_in_the_low_nibble() -> None:
    q = torch.tensor([[1, -1], [-8, 7]], dtype=torch.int8)  # rows 0 and 1
    packed = layout.pack_int4_rows(q).view(torch.uint8)
    assert packed.tolist() == [[0x81, 0x7F]]


def test_group_quantization_error_is_at_most_half_a_step() -> None:
    w = torch.randn(6, 64, generator=torch.Generator().manual_seed(0))
    scale = layout.scale_from_amax(layout.group_amax(w, 16), layout.INT4_MAX)
    deq = layout.dequantize_int4(layout.pack_int4_rows(layout.quantize_int4(w, scale)), scale)
    step = layout.expand_groups(scale, 64)
    assert torch.all((deq - w).abs() <= step / 2 + 1e-6)


def test_int8_and_fp8_channel_quantization() -> None:
    w = torch.randn(5, 32, generator=torch.Generator().manual_seed(1))
    s8 = layout.scale_from_amax(layout.channel_amax(w), layout.INT8_MAX)
    q8 = layout.quantize_int8(w, s8)
    assert q8.abs().max() == 127
    assert torch.all((layout.dequantize_int8(q8, s8) - w).abs() <= s8[:, None] / 2 + 1e-6)
    sf = layout.scale_from_amax(layout.tensor_amax(w), layout.FP8_MAX)
    qf = layout.quantize_fp8(w, sf)
    assert qf.dtype == torch.float8_e4m3fn
    rel = (layout.dequantize_fp8(qf, sf) - w).abs() / w.abs().clamp(min=1e-3)
    assert rel.max() < 0.07  # 3 mantissa bits


def test_zero_ranges_get_unit_scales_and_zero_codes() -> None:
    w = torch.zeros(2, 8)
    scale = layout.scale_from_amax(layout.channel_amax(w), layout.INT8_MAX)
    assert scale.tolist() == [1.0, 1.0]
    assert layout.quantize_int8(w, scale).abs().sum() == 0


def test_activation_fake_quant_saturates() -> None:
    x = torch.tensor([-1000.0, -1.0, 0.004, 1000.0])
    codes = layout.fake_quant_int8(x, torch.tensor(0.01)) / 0.01
    assert codes.round().tolist() == [-128, -100, 0, 127]
    fp8 = layout.fake_quant_fp8(x, torch.tensor(1.0))
    assert fp8[0] == -448 and fp8[-1] == 448
