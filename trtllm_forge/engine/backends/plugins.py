"""Which plugin switches each backend takes, as tables (imported on the CLI start path).

Only ``trtllm`` has plugins: they are ``trtllm-build`` flags. ONNX Runtime and the
TensorRT ONNX path build the attention and GEMMs from standard ONNX nodes, so any
plugin given to them is a recipe error (the user probably meant ``backend: trtllm``).
Values follow ``trtllm-build``: a dtype/"auto"/"disable" for plugins, "enable"/"disable"
for features; ``true``/``false`` are accepted as "auto"/"enable" and "disable".
"""

from __future__ import annotations

from collections.abc import Mapping

BACKENDS = ("onnxruntime", "tensorrt", "trtllm")

_DTYPES = ("auto", "float16", "bfloat16", "float32", "disable")
# trtllm-build plugin flags and the values each takes (docs/trtllm-checkpoint.md §5).
TRTLLM_PLUGINS: dict[str, tuple[str, ...]] = {
    "gpt_attention_plugin": _DTYPES,
    "gemm_plugin": (*_DTYPES, "fp8", "nvfp4"),
    "nccl_plugin": _DTYPES,
    "lora_plugin": _DTYPES,
    "moe_plugin": _DTYPES,
    "mamba_conv1d_plugin": _DTYPES,
    "gemm_swiglu_plugin": ("fp8", "disable"),
    "fp8_rowwise_gemm_plugin": _DTYPES,
    "low_latency_gemm_plugin": ("fp8", "disable"),
    "low_latency_gemm_swiglu_plugin": ("fp8", "disable"),
    "gemm_allreduce_plugin": ("float16", "bfloat16", "disable"),
}
# trtllm-build enable/disable feature flags.
TRTLLM_FEATURES = (
    "context_fmha",
    "use_paged_context_fmha",
    "remove_input_padding",
    "use_fused_mlp",
    "reduce_fusion",
    "use_fp8_context_fmha",
    "multiple_profiles",
    "paged_state",
    "streamingllm",
    "paged_kv_cache",
)
TRTLLM_CHOICES: dict[str, tuple[str, ...]] = {"kv_cache_type": ("paged", "continuous", "disabled")}
# What trtllm-build assumes when a switch is not given (newer releases).
TRTLLM_DEFAULTS = {
    "gpt_attention_plugin": "auto",
    "remove_input_padding": "enable",
    "context_fmha": "enable",
    "kv_cache_type": "paged",
    "use_fused_mlp": "enable",
}


def normalize(name: str, value: str | bool) -> str:
    """The trtllm-build spelling of a switch value."""
    if isinstance(value, bool):
        if name in TRTLLM_PLUGINS:
            return "auto" if value else "disable"
        return "enable" if value else "disable"
    return str(value)


def validate_plugins(backend: str, plugins: Mapping[str, str | bool]) -> list[str]:
    """Error messages (empty when valid) for a backend and its plugin switches."""
    if backend not in BACKENDS:
        return [f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}"]
    if backend != "trtllm":
        return [
            f"plugin {name!r} is a trtllm-build option; the {backend} backend takes no plugins "
            "(use `backend: trtllm`, or remove it)"
            for name in plugins
        ]
    errors = [e for name, value in plugins.items() if (e := _value_error(name, value))]
    if "paged_kv_cache" in plugins and "kv_cache_type" in plugins:
        errors.append("give kv_cache_type or the deprecated paged_kv_cache, not both")
    if errors:
        return errors
    return _cross_rules(effective_switches(plugins))


def effective_switches(plugins: Mapping[str, str | bool]) -> dict[str, str]:
    """trtllm-build's view: defaults, then the recipe's switches; paged_kv_cache folded in."""
    switches = {**TRTLLM_DEFAULTS, **{k: normalize(k, v) for k, v in plugins.items()}}
    legacy = switches.pop("paged_kv_cache", None)
    if legacy is not None:
        switches["kv_cache_type"] = "paged" if legacy == "enable" else "continuous"
    return switches


def _value_error(name: str, value: str | bool) -> str | None:
    text = normalize(name, value)
    if name in TRTLLM_PLUGINS:
        allowed = TRTLLM_PLUGINS[name]
    elif name in TRTLLM_FEATURES:
        allowed = ("enable", "disable")
    elif name in TRTLLM_CHOICES:
        allowed = TRTLLM_CHOICES[name]
    else:
        known = sorted([*TRTLLM_PLUGINS, *TRTLLM_FEATURES, *TRTLLM_CHOICES])
        return f"unknown trtllm plugin or feature {name!r}; known: {', '.join(known)}"
    if text not in allowed:
        return f"{name}: {value!r} is not one of {', '.join(allowed)}"
    return None


def _cross_rules(s: dict[str, str]) -> list[str]:
    errors = []
    no_attention = s["gpt_attention_plugin"] == "disable"
    needs_attention = {
        "remove_input_padding": s.get("remove_input_padding") == "enable",
        "kv_cache_type: paged": s.get("kv_cache_type") == "paged",
        "context_fmha": s.get("context_fmha") == "enable",
    }
    if no_attention:
        errors += [
            f"{what} needs gpt_attention_plugin (it is disabled)"
            for what, on in needs_attention.items()
            if on
        ]
    if s.get("use_paged_context_fmha") == "enable" and s.get("kv_cache_type") != "paged":
        errors.append("use_paged_context_fmha needs kv_cache_type: paged")
    if s.get("gemm_swiglu_plugin", "disable") != "disable" and s.get("use_fused_mlp") != "enable":
        errors.append("gemm_swiglu_plugin needs use_fused_mlp enabled")
    if (
        s.get("low_latency_gemm_swiglu_plugin", "disable") != "disable"
        and s.get("use_fused_mlp") != "enable"
    ):
        errors.append("low_latency_gemm_swiglu_plugin needs use_fused_mlp enabled")
    return errors
