"""AWQ (activation-aware weight quantization) through ModelOpt's ``awq_lite``.

ModelOpt searches, per linear, the per-input-channel scale ``s`` that minimises
the output error of the INT4 group-quantized layer on calibration activations,
folds ``1/s`` into the weight and keeps ``s`` as the input ``pre_quant_scale``.
forge fuses and packs the result (``W4A16_AWQ``: packed int4, per-group scales,
``prequant_scaling_factor``).

Everything forge knows about the method is here: its format record (``W4A16_AWQ``:
quant/int4_wo.py's tensors plus the pre-quant scale, which compressed-tensors cannot
store) and the hooks the generic modules call through it.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from trtllm_forge.context import NullProgress, Progress
from trtllm_forge.quant import int4_wo
from trtllm_forge.quant.modelopt_method import quantizer
from trtllm_forge.quant.record_types import (
    PRE_QUANT_IN_CT,
    Method,
    ModelOpt,
    NotCarried,
    QuantFormat,
)

if TYPE_CHECKING:
    from trtllm_forge.quant.int4_wo import GroupParams

_NO_PROGRESS = NullProgress()


def modelopt_config(
    params: GroupParams, targets: list[str], progress: Progress = _NO_PROGRESS
) -> dict[str, Any]:
    """The ModelOpt config forge calibrates with (tests hand it to ModelOpt's exporter too)."""
    from trtllm_forge.quant import modelopt_glue

    preset = copy.deepcopy(modelopt_glue.mtq(progress).INT4_AWQ_CFG)
    weight_cfg, _ = modelopt_glue.preset_numerics(preset)
    assert weight_cfg is not None
    weight_cfg["block_sizes"] = {-1: params.group_size, "type": "static"}
    return modelopt_glue.target_config(preset, targets, weight_cfg=weight_cfg)


quantize_model = quantizer(modelopt_config, "AWQ")


FORMAT = QuantFormat(
    name="W4A16_AWQ",
    trtllm_algo="W4A16_AWQ",
    weight="int4 groups of the AWQ-smoothed weight, plus a pre-quant scale",
    packing="two int4 output rows per byte, low nibble = even row",
    trtllm_tensors=(
        "weight I8 [out/2,in]",
        "weights_scaling_factor F32 [out,in/g]",
        "prequant_scaling_factor dtype [in]",
    ),
    strongly_typed=False,
    weight_bits=4,
    modelopt=ModelOpt(
        "W4A16_AWQ",
        ("weight_scale", "pre_quant_scale"),
        fold_pre_quant_scale=True,
        group_fields=True,
        linear_tensors=int4_wo.modelopt_int4,
    ),
    compressed_tensors=NotCarried(PRE_QUANT_IN_CT),
    trtllm_writer=int4_wo.trtllm_int4,
    fake_weight=int4_wo.int4_weight,
    onnx_lowering=int4_wo.onnx_int4,
)

METHOD = Method(
    name="awq",
    needs_data=True,
    uses_modelopt=True,
    formats=(FORMAT,),
    quantization_fields=int4_wo.group_fields(pre_quant_scale=True),
)
