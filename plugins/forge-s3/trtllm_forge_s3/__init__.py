"""forge's S3 remote: ``FORGE_REMOTE=s3://bucket/prefix``.

Registered through the ``trtllm_forge.plugins`` entry-point group. boto3 is imported
only when a remote is opened, so having this plugin installed costs nothing to a
build that does not use it.
"""

from __future__ import annotations

from typing import Any


def register(registry: Any) -> None:
    """Entry point: called with each of forge's plugin registries; serves ``remotes``."""
    if getattr(registry, "kind", None) == "remotes":
        registry.register("s3", _open)


def _open(url: str) -> Any:
    from trtllm_forge_s3.backend import S3Remote

    return S3Remote(url)
