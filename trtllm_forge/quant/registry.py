"""Registry of quantization methods, keyed by the recipe's ``quantize.method``.

Importing this module is cheap (no torch): an entry holds a loader for the module with
the method's algorithm, which is imported only when calibration actually runs.
A miss lists the valid names (and the closest one), never falls back silently.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from types import ModuleType
from typing import Any

from pydantic import ValidationError

from trtllm_forge.errors import recipe_error
from trtllm_forge.quant import params as p


@dataclass(frozen=True)
class MethodInfo:
    """One quantization method.

    Attributes:
        name: recipe name (``quantize.method``).
        params_model: pydantic model validating the method's own parameters.
        loader: imports and returns the module implementing
            ``quantize_model(model, batches, params, targets)``.
        needs_data: whether weights need calibration text (KV-cache calibration always does).
        uses_modelopt: whether the algorithm runs through nvidia-modelopt.
    """

    name: str
    params_model: type[p.MethodParams]
    loader: Callable[[], ModuleType]
    needs_data: bool
    uses_modelopt: bool

    def load(self) -> ModuleType:
        return self.loader()


_METHODS: dict[str, MethodInfo] = {}


def register(info: MethodInfo) -> MethodInfo:
    if info.name in _METHODS:
        raise ValueError(f"quantization method {info.name!r} registered twice")
    _METHODS[info.name] = info
    return info


def names() -> list[str]:
    return sorted(_METHODS)


def get(name: str) -> MethodInfo:
    """Look a method up by name; unknown names raise a recipe error listing the valid ones."""
    if name in _METHODS:
        return _METHODS[name]
    close = difflib.get_close_matches(name, names(), n=1)
    suggestion = f" (did you mean {close[0]!r}?)" if close else ""
    raise recipe_error(
        f"unknown quantization method {name!r}{suggestion}",
        hint=f"valid methods: {', '.join(names())}",
    )


def validate_params(name: str, params: Mapping[str, Any]) -> p.MethodParams:
    """Validate a method's parameters (defaults filled in); raise a recipe error on bad input."""
    info = get(name)
    try:
        return info.params_model.model_validate(dict(params))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "params"
        allowed = ", ".join(sorted(info.params_model.model_fields)) or "none"
        raise recipe_error(
            f"quantize.{where}: {first['msg']} (method {name!r})",
            hint=f"parameters of {name!r}: {allowed}",
        ) from None


def key_params(name: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """Canonical, defaults-filled parameters: what a calibrate cache key must include."""
    return {"method": name, **p.key_view(validate_params(name, params).model_dump(mode="json"))}


def tool_versions(name: str) -> dict[str, str]:
    """Versions of the libraries whose behaviour changes this method's output (cache key)."""
    from importlib.metadata import PackageNotFoundError, version

    packages = ["torch", "transformers"]
    if get(name).uses_modelopt:
        packages.append("nvidia-modelopt")
    found = {}
    for package in packages:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "absent"
    return found


def _builtin_algorithm(name: str) -> ModuleType:
    """A built-in method's module. Importing them all costs what one costs (torch): each
    imports its own library (ModelOpt) only when it runs."""
    from trtllm_forge.quant import (
        awq,
        fp8,
        fp8_block,
        gptq,
        int4_wo,
        int8_wo,
        none,
        nvfp4,
        smoothquant,
        w4a8_awq,
    )

    modules = (awq, fp8, fp8_block, gptq, int4_wo, int8_wo, none, nvfp4, smoothquant, w4a8_awq)
    return {module.__name__.rpartition(".")[2]: module for module in modules}[name]


def _builtin(name: str, model: type[p.MethodParams], *, needs_data: bool, modelopt: bool) -> None:
    register(MethodInfo(name, model, partial(_builtin_algorithm, name), needs_data, modelopt))


_builtin("none", p.NoneParams, needs_data=False, modelopt=False)
_builtin("int8_wo", p.Int8WoParams, needs_data=False, modelopt=False)
_builtin("int4_wo", p.Int4WoParams, needs_data=False, modelopt=False)
_builtin("smoothquant", p.SmoothQuantParams, needs_data=True, modelopt=True)
_builtin("awq", p.AwqParams, needs_data=True, modelopt=True)
_builtin("gptq", p.GptqParams, needs_data=True, modelopt=False)
_builtin("fp8", p.Fp8Params, needs_data=True, modelopt=True)
_builtin("fp8_block", p.Fp8BlockParams, needs_data=False, modelopt=False)
_builtin("nvfp4", p.NvFp4Params, needs_data=True, modelopt=True)
_builtin("w4a8_awq", p.W4A8AwqParams, needs_data=True, modelopt=True)
