"""Registry of quantization methods, keyed by the recipe's ``quantize.method``.

Importing this module is cheap (no torch): an entry holds a loader for the module with
the method's algorithm, which imports torch only when calibration actually runs.
A miss lists the valid names (and the closest one), never falls back silently.

Each method is declared in its own module (``quant/<method>.py`` with a ``METHOD``
record: parameters, formats, each target's mapping) and registered by listing the
module in :data:`METHOD_MODULES`, the one list of them; the generic modules (records,
writer, HF targets, fake quant, ONNX lowering) find it through :func:`declared_methods`
(docs/adding-a-quantization-method.md).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from types import ModuleType
from typing import TYPE_CHECKING, Any

from trtllm_forge.errors import ForgeError, recipe_error
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
from trtllm_forge.quant.record_types import Method
from trtllm_forge.registry import Registry

if TYPE_CHECKING:
    from trtllm_forge.quant.params import MethodParams


@dataclass(frozen=True)
class MethodInfo:
    """One quantization method.

    Attributes:
        name: recipe name (``quantize.method``).
        params_loader: builds (once) and returns the pydantic model validating the
            method's own parameters (:attr:`params_model`); building the models is left
            to the first validation, so reading the records costs none of it.
        loader: imports and returns the module implementing
            ``quantize_model(model, batches, params, targets)``.
        needs_data: whether weights need calibration text (KV-cache calibration always does).
        uses_modelopt: whether the algorithm runs through nvidia-modelopt.
        record: the method's own record (its module's ``METHOD``).
    """

    name: str
    params_loader: Callable[[], type[MethodParams]]
    loader: Callable[[], ModuleType]
    needs_data: bool
    uses_modelopt: bool
    record: Method

    @property
    def params_model(self) -> type[MethodParams]:
        return self.params_loader()

    def load(self) -> ModuleType:
        return self.loader()


class _MethodRegistry(Registry[MethodInfo]):
    """``quantize.method`` -> its entry (trtllm_forge/registry.py; no plugins)."""

    def unknown(self, name: str) -> ForgeError:
        import difflib

        close = difflib.get_close_matches(name, self.names(), n=1)
        suggestion = f" (did you mean {close[0]!r}?)" if close else ""
        return recipe_error(
            f"unknown quantization method {name!r}{suggestion}",
            hint=f"valid methods: {', '.join(self.names())}",
        )


_METHODS = _MethodRegistry("methods", "quantization method")


def register(info: MethodInfo) -> MethodInfo:
    return _METHODS.add(info.name, info)


def names() -> list[str]:
    return _METHODS.names()


def get(name: str) -> MethodInfo:
    """Look a method up by name; unknown names raise a recipe error listing the valid ones."""
    return _METHODS.get(name)


def validate_params(name: str, params: Mapping[str, Any]) -> MethodParams:
    """Validate a method's parameters (defaults filled in); raise a recipe error on bad input."""
    from pydantic import ValidationError

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
    from trtllm_forge.quant.key_view import key_view

    return {"method": name, **key_view(validate_params(name, params).model_dump(mode="json"))}


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


def _params(record: Method) -> type[MethodParams]:
    from trtllm_forge.quant.params import model_of

    return model_of(record)


def _module(module: ModuleType) -> ModuleType:
    return module


# Every method's module, in docs/outputs.md's table order: the one list of them. The
# modules import no torch at import time (the algorithm and the hooks import it).
METHOD_MODULES: tuple[ModuleType, ...] = (
    none,
    int8_wo,
    int4_wo,
    gptq,
    awq,
    smoothquant,
    fp8,
    fp8_block,
    nvfp4,
    w4a8_awq,
)


def declared_methods() -> list[Method]:
    """Every method's record (METHOD_MODULES order)."""
    return [module.METHOD for module in METHOD_MODULES]


def _register(module: ModuleType) -> None:
    record: Method = module.METHOD
    loaders = partial(_params, record), partial(_module, module)
    register(MethodInfo(record.name, *loaders, record.needs_data, record.uses_modelopt, record))


for _method_module in METHOD_MODULES:
    _register(_method_module)
