"""lm_head's record when a weight-only method quantizes it (``quantize_lm_head``).

Round to nearest in the method's weight format: per (row, group) for the int4
methods, per row for int8_wo. AWQ's scale search and GPTQ's error feedback run on
calibration activations of the decoder linears; the head is rounded the way
onnxruntime-genai's builder rounds its int4 head, so its cost is what
docs/engine-performance.md measures against the builder.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from trtllm_forge.quant import layout
from trtllm_forge.quant.params import MethodParams
from trtllm_forge.quant.result import LinearQuant


def head_record(model: nn.Module, params: MethodParams) -> LinearQuant:
    """The output projection's ``[vocab, hidden]`` weight (the embedding when tied) and
    its ranges, on the CPU in float32 like every record the writer packs."""
    # transformers' PreTrainedModel method; nn.Module's typing sees a tensor attribute
    head: Any = model.get_output_embeddings()  # type: ignore[operator]
    if not isinstance(head, nn.Linear):
        raise ValueError(f"the model's output projection is a {type(head).__name__}, not Linear")
    weight = head.weight.detach().to("cpu", torch.float32)
    group = getattr(params, "group_size", None)
    amax = layout.channel_amax(weight) if group is None else layout.group_amax(weight, group)
    return LinearQuant(weight, amax)
