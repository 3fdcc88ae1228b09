"""Remote artifact cache: the backend protocol, the remote layout, and backend lookup.

``FORGE_REMOTE`` names an object store holding the same entries as local stores:

    blobs/<hex[:2]>/<hex>             a file's bytes, named by its blake3 digest
    entries/<stage>/<key-hex>.json    an artifact's manifest.json, byte for byte

Blobs are content-addressed, so two runners pushing one key at once can never
overwrite each other's bytes with different ones; the manifest is written last
(put-if-absent), so a reader sees an entry only when all of its blobs are there.

Backends are looked up by URL scheme. ``file://`` (a shared mount) is built in;
``s3://`` and others arrive through the ``trtllm_forge.plugins`` entry-point group
(a scheme no plugin serves falls back to fsspec where it has an implementation): each
entry point is called with every plugin registry and registers into the one whose
``kind`` it serves (``"remotes"`` here), as the model registry does. The core
imports no cloud SDK.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from trtllm_forge.errors import ForgeError, dependency_error, recipe_error
from trtllm_forge.registry import Registry
from trtllm_forge.store.remote_backend import (
    BackendFactory,
    RemoteBackend,
)

ENTRIES = "entries"
BLOBS = "blobs"
MANIFEST_LIMIT = 64 << 20  # a manifest lists files; 64 MiB is far beyond any real one

_HEX64 = re.compile(r"[0-9a-f]{64}")
_STAGE = re.compile(r"[A-Za-z0-9_.-]{1,64}")

# Schemes a first-party plugin serves: the extra that installs it.
KNOWN_PLUGINS = {"s3": "s3"}


# -- layout ---------------------------------------------------------------------
def key_hex(key: str) -> str:
    hexpart = key.split(":", 1)[-1]
    if not _HEX64.fullmatch(hexpart):
        raise recipe_error(f"not an artifact key: {key!r}", hint="keys are blake3:<64 hex>")
    return hexpart


def entry_name(stage: str, key: str) -> str:
    if not _STAGE.fullmatch(stage):
        raise recipe_error(f"not a stage name: {stage!r}")
    return f"{ENTRIES}/{stage}/{key_hex(key)}.json"


def blob_name(digest: str) -> str | None:
    """Where a file with this digest lives on the remote; None for a digest forge did
    not write (a hostile manifest must not steer reads or writes elsewhere)."""
    algo, _, hexpart = digest.partition(":")
    if algo != "blake3" or not _HEX64.fullmatch(hexpart):
        return None
    return f"{BLOBS}/{hexpart[:2]}/{hexpart}"


def parse_entry_name(name: str) -> tuple[str, str] | None:
    """(stage, key) for an ``entries/<stage>/<hex>.json`` name, else None."""
    parts = name.split("/")
    if len(parts) != 3 or parts[0] != ENTRIES or not parts[2].endswith(".json"):
        return None
    stage, hexpart = parts[1], parts[2][: -len(".json")]
    if not _STAGE.fullmatch(stage) or not _HEX64.fullmatch(hexpart):
        return None
    return stage, f"blake3:{hexpart}"


def valid_ref(stage: object, key: object) -> bool:
    """Whether (stage, key) read from a manifest names an entry forge could have written."""
    return (
        isinstance(stage, str)
        and isinstance(key, str)
        and bool(_STAGE.fullmatch(stage))
        and key.startswith("blake3:")
        and bool(_HEX64.fullmatch(key[len("blake3:") :]))
    )


# -- backend lookup ---------------------------------------------------------------
class RemoteRegistry(Registry[BackendFactory]):
    """URL scheme -> backend factory (trtllm_forge/registry.py); plugins register theirs
    through the entry-point group, and fsspec serves the schemes it implements."""

    def __init__(self, *, plugin_group: str | None = None) -> None:
        super().__init__("remotes", "remote scheme", plugin_group=plugin_group)

    def register(self, scheme: str, factory: BackendFactory) -> None:
        self.add(scheme, factory)

    def schemes(self) -> list[str]:
        return self.names()

    def fallback(self, name: str) -> BackendFactory | None:
        if name in KNOWN_PLUGINS:  # a first-party plugin's scheme: install it, not fsspec
            return None
        from trtllm_forge.store.remote_fsspec import FsspecRemote, fsspec_protocol_known

        return FsspecRemote if fsspec_protocol_known(name) else None  # gs://, az://, sftp://…

    def unknown(self, name: str) -> ForgeError:
        extra = KNOWN_PLUGINS.get(name)
        if extra is not None:
            return dependency_error(
                f"FORGE_REMOTE uses {name}://, whose backend is not installed",
                hint=f"pip install 'trtllm-forge[{extra}]' (from a checkout: "
                f"pip install -e plugins/forge-{extra})",
            )
        return recipe_error(
            f"FORGE_REMOTE scheme {name!r} is not supported",
            hint=f"supported: {', '.join(s + '://' for s in self.schemes())}",
        )


def _file_factory(url: str) -> RemoteBackend:
    from trtllm_forge.store.remote_file import FileRemote

    return FileRemote(url)


def _make_registry() -> RemoteRegistry:
    from trtllm_forge.plugin_hooks import PLUGIN_GROUP

    registry = RemoteRegistry(plugin_group=PLUGIN_GROUP)
    registry.register("file", _file_factory)
    return registry


_REGISTRY: RemoteRegistry | None = None


def registry() -> RemoteRegistry:
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = _make_registry()
    return _REGISTRY


def open_remote(url: str, reg: RemoteRegistry | None = None) -> RemoteBackend:
    """The backend for a ``FORGE_REMOTE`` URL (exit 2 for a malformed one, 4 for a
    scheme whose plugin is not installed)."""
    check_url(url)
    scheme = urlsplit(url).scheme
    return (reg or registry()).get(scheme)(url)


def check_url(url: str) -> None:
    parts = urlsplit(url)
    if not parts.scheme or "://" not in url:
        raise recipe_error(
            f"FORGE_REMOTE={redact(url)!r} is not a URL",
            hint="e.g. FORGE_REMOTE=s3://bucket/prefix or FORGE_REMOTE=file:///mnt/forge-cache",
        )
    if parts.username or parts.password:
        # A URL is logged and shown; credentials belong to the backend's own environment.
        raise recipe_error(
            "FORGE_REMOTE must not carry credentials",
            hint="use the storage library's usual environment (e.g. AWS_ACCESS_KEY_ID, "
            "AWS_PROFILE) instead",
        )


def redact(url: str) -> str:
    """The URL without any user:password part (for messages)."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        return parts._replace(netloc=f"***@{host}").geturl()
    return url
