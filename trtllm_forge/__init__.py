"""trtllm-forge: declarative, cached, verified builds of LLM inference engines."""

__version__ = "0.1.0"
