"""Engines from TensorRT-LLM checkpoints: ONNX lowering, backends, runtime, verification.

Layout:
  spec.py        what a checkpoint's config.json and rank files say (model + rank layout)
  onnx/          per-rank ONNX decoder graphs with explicit TP collectives
  backends/      onnxruntime (default), tensorrt (thin, typed), trtllm (runs trtllm-build)
  runtime.py     runs an onnxruntime engine dir: TP ranks in lock-step, PP stages in order
  metrics.py     KL, top-1, perplexity, logit-difference math
  verify.py      engine vs transformers reference, gates
  report.py      report.json / report.md / junit.xml writers
  inspect.py     inspect_engine / inspect_checkpoint

Nothing here is imported on the CLI start path except ``backends`` (plugin validation),
which keeps its heavy imports inside functions. See docs/engine.md.
"""
