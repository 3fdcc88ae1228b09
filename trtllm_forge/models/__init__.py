"""Architecture families: HF config -> TensorRT-LLM config, and HF tensor -> TRT-LLM tensor tables."""

from trtllm_forge.models.base import Family, TensorPlan, TensorRule, model_dims, validate_dims
from trtllm_forge.models.registry import REGISTRY, FamilyRegistry, family_for

__all__ = [
    "REGISTRY",
    "Family",
    "FamilyRegistry",
    "TensorPlan",
    "TensorRule",
    "family_for",
    "model_dims",
    "validate_dims",
]
