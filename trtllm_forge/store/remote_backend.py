"""The contract a remote-cache backend implements, and the errors it raises.

Backends (the core's file:// and fsspec ones, and plugin packages such as forge-s3) import
this module only; trtllm_forge/store/remote.py picks a backend by URL scheme.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

from trtllm_forge.errors import ExitCode, ForgeError

# Progress callback: bytes moved since the last call.
OnBytes = Callable[[int], None]


class RemoteBackend(Protocol):
    """What forge needs from an object store. Names are '/'-separated, relative to the
    remote's prefix, and already validated by the caller (see :func:`blob_name`)."""

    url: str  # for messages; never holds credentials

    def size(self, name: str) -> int | None:
        """The object's size, or None when it does not exist."""
        ...

    def read_bytes(self, name: str, limit: int) -> bytes | None:
        """A small object's bytes (None when absent; a store error when over ``limit``)."""
        ...

    def download(self, name: str, dest: Path, size: int, on_bytes: OnBytes) -> None:
        """Write the object to ``dest``; a store error when it is not ``size`` bytes."""
        ...

    def upload(self, src: Path, name: str, on_bytes: OnBytes) -> None:
        """Store ``src`` under ``name`` (replacing it: blobs are content-addressed)."""
        ...

    def put_if_absent(self, name: str, data: bytes) -> bool:
        """Create ``name`` atomically unless it exists; False when it already did."""
        ...

    def list(self, prefix: str) -> Iterator[str]:
        """Every object name under ``prefix``."""
        ...


BackendFactory = Callable[[str], RemoteBackend]


def remote_error(message: str, *, hint: str | None = None) -> ForgeError:
    """The remote cannot be used (unreachable, refused, no such bucket/folder): exit 6."""
    return ForgeError(ExitCode.STORE, message, hint=hint)


class RemoteObjectDamaged(ForgeError):
    """One object is missing or has the wrong size: its entry is damaged, the remote is fine."""

    def __init__(self, message: str) -> None:
        super().__init__(ExitCode.STORE, message)
