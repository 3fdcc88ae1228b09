"""``forge export triton``: Triton Inference Server model repositories (docs/deploy.md).

Registered through the ``trtllm_forge.plugins`` entry-point group as the ``triton``
exporter; forge's CLI owns the command and calls the exporter with what the recipe built.
"""

from __future__ import annotations

from typing import Any


def register(registry: Any) -> None:
    """Entry point: called with each of forge's plugin registries; serves ``exporters``."""
    if getattr(registry, "kind", None) == "exporters":
        from trtllm_forge_triton.export import export

        registry.register("triton", export)
