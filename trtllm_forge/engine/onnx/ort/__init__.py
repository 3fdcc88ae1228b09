"""The ``ort`` lowering profile: the Llama decoder in ONNX Runtime's contrib operators.

``support`` decides (torch-free, at plan time) what the profile lowers; ``decoder``
builds the graph (GroupQueryAttention with rotary inside and a past/present KV buffer,
SkipSimplifiedLayerNormalization, MatMulNBits for int4/int8 weight-only); ``matmul``
holds the linear lowerings. See docs/engine.md, "The ort profile".
"""
