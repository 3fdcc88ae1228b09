"""Exporters that plugins contribute (``forge export <name>``), looked up by name.

forge builds the recipe through the cache and hands the exporter an
:class:`ExportSource` describing what it built; the exporter writes files under
``dest`` and returns a summary. Exporters arrive through the
``trtllm_forge.plugins`` entry-point group (registry ``kind == "exporters"``), so
integrations with their own dependencies (Triton) stay out of the core.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trtllm_forge.errors import ForgeError, dependency_error
from trtllm_forge.registry import Registry


@dataclass(frozen=True)
class ExportSource:
    """What a recipe built, in the terms an exporter needs.

    ``kind`` says which artifact ``files`` holds:
    ``onnx-engine`` (a forge engine directory, tokenizer files included),
    ``hf-checkpoint`` (a quantized Hugging Face folder) or
    ``trtllm-checkpoint`` (per-rank TensorRT-LLM checkpoint for ``trtllm-build``).
    """

    name: str  # the recipe's name
    kind: str
    files: Path
    tokenizer: Path  # the source snapshot (tokenizer files)
    tp: int
    pp: int
    build: dict[str, Any] = field(default_factory=dict)  # the recipe's build section
    quant: dict[str, Any] = field(default_factory=dict)  # quant_algo, kv cache, format


Exporter = Callable[[ExportSource, Path], dict[str, Any]]


def materialize(src: Path, dest: Path) -> list[str]:
    """Copy the folder ``src`` (an artifact's files) to ``dest`` as a self-contained folder.

    Store files may be hard links shared with other artifacts and are read-only
    (trtllm_forge/store/blobs.py): an export gets its own bytes in new, writable files,
    so editing or deleting it never touches the store. A file already at ``dest`` (an
    earlier export, perhaps read-only) is replaced. Returns the relative paths copied.
    """
    copied: list[str] = []
    for file in sorted(src.rglob("*")):
        if not file.is_file():  # follows links: an HF cache snapshot is links to blobs
            continue
        rel = file.relative_to(src)
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.unlink(missing_ok=True)
        shutil.copyfile(file, target)
        copied.append(rel.as_posix())
    return copied


# Exporters a first-party plugin serves: the extra that installs it.
KNOWN_PLUGINS = {"triton": "triton"}


class ExporterRegistry(Registry[Exporter]):
    """Exporter name -> exporter (trtllm_forge/registry.py); plugins register theirs."""

    def __init__(self, *, plugin_group: str | None = None) -> None:
        super().__init__("exporters", "exporter", plugin_group=plugin_group)

    def register(self, name: str, exporter: Exporter) -> None:
        self.add(name, exporter)

    def unknown(self, name: str) -> ForgeError:
        """A first-party plugin's exporter names the extra that installs it."""
        extra = KNOWN_PLUGINS.get(name)
        if extra is None:
            return super().unknown(name)
        return dependency_error(
            f"`forge export {name}` needs the {name} plugin, which is not installed",
            hint=f"pip install 'trtllm-forge[{extra}]' (from a checkout: "
            f"pip install -e plugins/forge-{extra})",
        )


_REGISTRY: ExporterRegistry | None = None


def exporter(name: str) -> Exporter:
    global _REGISTRY
    if _REGISTRY is None:
        from trtllm_forge.plugin_hooks import PLUGIN_GROUP

        _REGISTRY = ExporterRegistry(plugin_group=PLUGIN_GROUP)
    return _REGISTRY.get(name)
