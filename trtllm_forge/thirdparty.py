"""Failures raised inside the libraries forge drives, reported as what they are.

A stage hands models to ModelOpt, transformers, onnx and ONNX Runtime. When one of them
raises, the cause is usually a version forge was not tested with, or a model class the
library cannot handle — a dependency problem (exit 4), not a forge bug (exit 1). The
rule: walk the traceback from the innermost frame outwards, skipping torch and the
standard library (the machinery every caller goes through); the first frame that belongs
to a known library names the culprit, the first that belongs to forge makes it forge's
bug. The library's own traceback stays attached (``raise … from``) for ``-v``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any

from trtllm_forge.errors import ExitCode, ForgeError

# Top-level package -> the distribution users install.
LIBRARIES = {
    "modelopt": "nvidia-modelopt",
    "transformers": "transformers",
    "onnx": "onnx",
    "onnxruntime": "onnxruntime",
    "onnxruntime_genai": "onnxruntime-genai",
    "compressed_tensors": "compressed-tensors",
    "safetensors": "safetensors",
    "gguf": "gguf",
}
_PASS_THROUGH = ("torch",)  # frames every call into a model goes through


@dataclass(frozen=True)
class LibraryFailure:
    distribution: str
    installed: str | None
    tested: str | None
    model_class: str | None
    layer_class: str | None


def library_error(exc: BaseException, doing: str) -> ForgeError | None:
    """A ForgeError (exit 4) when ``exc`` was raised inside a known library, else None."""
    if not isinstance(exc, Exception) or isinstance(exc, ForgeError | MemoryError):
        return None
    failure = classify(exc)
    if failure is None:
        return None
    return ForgeError(ExitCode.DEPENDENCY, _message(failure, exc, doing), hint=_hint(failure))


def classify(exc: BaseException) -> LibraryFailure | None:
    """Which library raised ``exc``, and on which model and layer (None: not a library's)."""
    frames = list(_frames(exc.__traceback__))
    distribution = None
    for path, _ in reversed(frames):
        owner = _owner(path)
        if owner == "forge":
            return None
        if owner in LIBRARIES:
            distribution = LIBRARIES[owner]
            break
    if distribution is None:
        return None
    modules = [name for _, local in frames for name in _module_names(local)]
    return LibraryFailure(
        distribution=distribution,
        installed=_installed(distribution),
        tested=tested_versions().get(distribution),
        model_class=modules[0] if modules else None,
        layer_class=modules[-1] if len(modules) > 1 else None,
    )


@cache
def tested_versions() -> dict[str, str]:
    """Versions the default test tier passed with (written by ``make lock``)."""
    # Imported here, as below: only a failure needs them, and every run imports this module.
    import json
    from importlib import resources

    text = (resources.files("trtllm_forge") / "data" / "tested_versions.json").read_text()
    versions: dict[str, str] = json.loads(text)["versions"]
    return versions


def _message(failure: LibraryFailure, exc: BaseException, doing: str) -> str:
    subject = ", ".join(
        f"{what} {name}"
        for what, name in (("model", failure.model_class), ("layer", failure.layer_class))
        if name
    )
    where = f" on {subject}" if subject else ""
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return (
        f"{failure.distribution} {failure.installed or '(version unknown)'} failed while "
        f"{doing}{where}: {type(exc).__name__}" + (f": {detail}" if detail else "")
    )


def _hint(failure: LibraryFailure) -> str:
    rerun = "rerun with -v for the library's traceback"
    if failure.tested and failure.tested != failure.installed:
        return (
            f"forge was tested with {failure.distribution}=={failure.tested}: install it "
            f"(`pip install '{failure.distribution}=={failure.tested}'`, or the whole tested "
            f"set from requirements/lock.txt), or exclude the layer; {rerun}"
        )
    return (
        f"this {failure.distribution} release cannot handle this model: exclude the layer "
        f"(quantize.exclude), choose another method, or report it upstream; {rerun}"
    )


def _frames(tb: TracebackType | None) -> list[tuple[str, dict[str, object]]]:
    frames = []
    while tb is not None:
        frames.append((tb.tb_frame.f_code.co_filename, dict(tb.tb_frame.f_locals)))
        tb = tb.tb_next
    return frames


def _owner(path: str) -> str | None:
    """``forge``, a key of LIBRARIES, or None for torch, stdlib and everything else."""
    file = Path(path)
    if _FORGE_ROOT in file.parents:
        return "forge"
    for parent in file.parents:
        if parent.parent in _site_dirs():
            name = parent.name
            return name if name in LIBRARIES and name not in _PASS_THROUGH else None
    return None


def _module_names(local: dict[str, object]) -> list[str]:
    """Class names of torch modules (instances or classes) a frame holds, self first."""
    nn = sys.modules.get("torch.nn")
    if nn is None:
        return []
    found = []
    for name in ("self", "model", "module", "org_class", "cls"):
        value = local.get(name)
        if isinstance(value, nn.Module):
            found.append(type(value).__name__)
        elif isinstance(value, type) and issubclass(value, nn.Module):
            found.append(value.__name__)
    return found[:1]


def _installed(distribution: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


_FORGE_ROOT = Path(__file__).resolve().parent


@cache
def _site_dirs() -> frozenset[Path]:
    import sysconfig

    paths = {*sys.path, sysconfig.get_paths()["purelib"]}
    return frozenset(Path(p).resolve() for p in paths if p and Path(p).is_dir())


# pydantic imports ``pydantic.plugin._loader`` when it builds its first validator (typer
# builds some for the CLI's options), and that module imports importlib.metadata (email,
# zipfile, csv, socket…) only to look for plugins: about a tenth of a no-op `forge build`'s
# instructions (docs/performance.md). The CLI disables pydantic plugins (cli/__init__.py);
# while they are disabled the real loader's get_plugins() returns () without reading
# anything, so a stand-in answers the same without the import. Anything else asked of it,
# or get_plugins() once plugins are enabled again, loads the real module.
_PYDANTIC_LOADER = "pydantic.plugin._loader"
# The values for which pydantic's own get_plugins() returns no plugins.
_DISABLED = ("__all__", "1", "true")


def stand_in_pydantic_plugin_loader() -> None:
    """Stand in for pydantic's plugin loader if plugins are disabled and it is not loaded."""
    if (
        _PYDANTIC_LOADER in sys.modules
        or os.environ.get("PYDANTIC_DISABLE_PLUGINS") not in _DISABLED
    ):
        return
    shim = ModuleType(_PYDANTIC_LOADER, "forge's stand-in: pydantic plugins are disabled")
    shim.get_plugins = _get_plugins  # type: ignore[attr-defined]
    shim.__getattr__ = _real_attribute  # type: ignore[method-assign]
    sys.modules[_PYDANTIC_LOADER] = shim


def _get_plugins() -> Iterable[Any]:
    if os.environ.get("PYDANTIC_DISABLE_PLUGINS") in _DISABLED:
        return ()
    return _real_attribute("get_plugins")()  # type: ignore[no-any-return]


def _real_attribute(name: str) -> Any:
    """The attribute of pydantic's real loader, imported in place of the stand-in."""
    if name.startswith("__"):  # the import system asks a module for __path__ and the like
        raise AttributeError(name)
    import importlib  # a third-party module name, loaded only when plugins are wanted

    if getattr(sys.modules.get(_PYDANTIC_LOADER), "get_plugins", None) is _get_plugins:
        del sys.modules[_PYDANTIC_LOADER]
    return getattr(importlib.import_module(_PYDANTIC_LOADER), name)
