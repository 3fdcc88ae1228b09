"""Quantization: method registry, calibration data, algorithms and the TensorRT-LLM layout.

Importing ``trtllm_forge.quant`` (and ``.registry``, ``.params``, ``.targets``)
is cheap; torch, transformers and modelopt load only when calibration runs
(``trtllm_forge.quant.quantize.quantize_checkpoint``).
"""
