"""Remotes for any scheme fsspec serves (gs://, az://, sftp://, smb://, webdav://…).

A fallback for schemes neither the core nor a plugin handles: forge needs nothing
beyond ``fsspec`` (already a dependency of huggingface_hub) plus the scheme's own
fsspec package (gcsfs, adlfs, sshfs…), which fsspec names when it is missing.
Credentials come from that package's usual environment.

fsspec has no portable put-if-absent: the manifest is written with mode ``"xb"``
where the filesystem supports it, else after an existence check. On the latter, two
runners racing on one key can both write the manifest; blobs are content-addressed,
so whichever lands last still names blobs that are all there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from trtllm_forge.errors import dependency_error
from trtllm_forge.store.remote_backend import OnBytes, RemoteObjectDamaged, remote_error

_CHUNK = 4 << 20


def fsspec_protocol_known(scheme: str) -> bool:
    try:
        from fsspec.registry import (  # type: ignore[import-untyped,unused-ignore]
            known_implementations,
            registry,
        )
    except ImportError:
        return False
    return scheme in known_implementations or scheme in registry


class FsspecRemote:
    def __init__(self, url: str) -> None:
        import fsspec  # type: ignore[import-untyped,unused-ignore]

        self.url = url
        scheme, _, rest = url.partition("://")
        try:
            self.fs = fsspec.filesystem(scheme)
        except ImportError as exc:
            raise dependency_error(
                f"FORGE_REMOTE uses {scheme}://, whose fsspec implementation is not installed",
                hint=str(exc).strip().splitlines()[0][:200],
            ) from None
        self.root = rest.rstrip("/")
        with self._errors("the remote root"):
            if not self.fs.isdir(self.root):
                raise remote_error(
                    f"remote cache folder {url} does not exist",
                    hint="create it or fix FORGE_REMOTE",
                )

    def _path(self, name: str) -> str:
        return f"{self.root}/{name}"

    def size(self, name: str) -> int | None:
        with self._errors(name):
            try:
                return int(self.fs.info(self._path(name))["size"])
            except FileNotFoundError:
                return None

    def read_bytes(self, name: str, limit: int) -> bytes | None:
        with self._errors(name):
            try:
                with self.fs.open(self._path(name), "rb") as fh:
                    data = fh.read(limit + 1)
            except FileNotFoundError:
                return None
        if len(data) > limit:
            raise remote_error(f"remote object {name} is larger than {limit} bytes")
        return bytes(data)

    def download(self, name: str, dest: Path, size: int, on_bytes: OnBytes) -> None:
        copied = 0
        with self._errors(name):
            try:
                with self.fs.open(self._path(name), "rb") as src, open(dest, "wb") as out:
                    while copied <= size and (block := src.read(_CHUNK)):
                        out.write(block)
                        copied += len(block)
                        on_bytes(len(block))
            except FileNotFoundError:
                raise RemoteObjectDamaged(f"remote object {name} is missing") from None
        if copied != size:
            raise RemoteObjectDamaged(f"remote object {name} has {copied}+ bytes, expected {size}")

    def upload(self, src: Path, name: str, on_bytes: OnBytes) -> None:
        path = self._path(name)
        with self._errors(name):
            self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
            with open(src, "rb") as fh, self.fs.open(path, "wb") as out:
                while block := fh.read(_CHUNK):
                    out.write(block)
                    on_bytes(len(block))

    def put_if_absent(self, name: str, data: bytes) -> bool:
        path = self._path(name)
        with self._errors(name):
            self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
            try:
                with self.fs.open(path, "xb") as out:
                    out.write(data)
                return True
            except FileExistsError:
                return False
            except (ValueError, NotImplementedError):  # no exclusive create on this filesystem
                if self.fs.exists(path):
                    return False
                self.fs.pipe_file(path, data)
                return True

    def list(self, prefix: str) -> Iterator[str]:
        base = self._path(prefix).rstrip("/")
        with self._errors(prefix):
            if not self.fs.exists(base):
                return
            found = self.fs.find(base)
        strip = len(self.fs._strip_protocol(self.root).rstrip("/")) + 1
        for path in sorted(found):
            yield self.fs._strip_protocol(path)[strip:]

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[Any]:
        try:
            yield
        except (FileNotFoundError, FileExistsError):
            raise
        except OSError as exc:  # network and permission failures of the implementation
            raise remote_error(
                f"remote cache {self.url}: {exc} ({what})",
                hint="check the remote, its credentials and the network",
            ) from None
