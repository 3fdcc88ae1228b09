"""Per-rank ONNX decoder graphs (built with onnx.helper, never torch.onnx.export).

``lower.lower_checkpoint`` is the entry point; ``linear`` holds the quantization hook
table; ``collectives`` defines the custom-domain TP nodes; ``segments`` splits a rank
graph at those nodes so ONNX Runtime can run TP ranks in one process.
"""

OPSET = 21
