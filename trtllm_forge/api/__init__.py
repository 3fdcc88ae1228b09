"""Programmatic entry points. Keyword-only, no printing; errors are ForgeError."""

from trtllm_forge.api.cache import (
    cache_entries,
    cache_gc,
    cache_pull,
    cache_push,
    cache_remote_entries,
    cache_rm,
    cache_usage,
    cache_verify,
)
from trtllm_forge.api.core import (
    build,
    check,
    copy_checkpoint,
    export_hf,
    export_triton,
    export_trtllm_checkpoint,
    inspect,
    plan,
    recipe_schema,
    store,
)
from trtllm_forge.api.quantize import QUANTIZE_ARGUMENTS, quantize, quantize_recipe
from trtllm_forge.pipeline.runner import BuildResult, StageResult

__all__ = [
    "QUANTIZE_ARGUMENTS",
    "BuildResult",
    "StageResult",
    "build",
    "cache_entries",
    "cache_gc",
    "cache_pull",
    "cache_push",
    "cache_remote_entries",
    "cache_rm",
    "cache_usage",
    "cache_verify",
    "check",
    "copy_checkpoint",
    "export_hf",
    "export_trtllm_checkpoint",
    "export_triton",
    "inspect",
    "plan",
    "quantize",
    "quantize_recipe",
    "recipe_schema",
    "store",
]
