"""TensorRT-LLM checkpoint layout: convert from HF, read, shard, and a reference forward.

Submodules import torch; import them only from stage ``run()`` code, never on the CLI
start path.
"""
