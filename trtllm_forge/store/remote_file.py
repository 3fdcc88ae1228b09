"""``file://`` remotes: a folder on a shared mount (NFS, SMB, a CI cache volume).

Every object is written to ``<root>/tmp/`` first and renamed into place, so a reader
never sees a half-written object. ``put_if_absent`` publishes with ``link()``, which
fails when the name exists: of two runners pushing one manifest, exactly one wins.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

from trtllm_forge.errors import recipe_error
from trtllm_forge.faults import point
from trtllm_forge.store.remote_backend import OnBytes, RemoteObjectDamaged, remote_error

_CHUNK = 4 << 20


class FileRemote:
    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise recipe_error(
                f"FORGE_REMOTE={url!r}: file:// URLs name a local path",
                hint="use file:///absolute/path (three slashes)",
            )
        self.root = Path(unquote(parts.path))
        self.url = url
        if not self.root.is_absolute():
            raise recipe_error(
                f"FORGE_REMOTE={url!r} is not an absolute path",
                hint="use file:///absolute/path",
            )
        if not self.root.is_dir():
            raise remote_error(
                f"remote cache folder {self.root} does not exist",
                hint="create it (or mount the share) or fix FORGE_REMOTE",
            )

    def _path(self, name: str) -> Path:
        return self.root / name

    def size(self, name: str) -> int | None:
        try:
            return self._path(name).stat().st_size
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._io_error(exc, name) from None

    def read_bytes(self, name: str, limit: int) -> bytes | None:
        try:
            with open(self._path(name), "rb") as fh:
                data = fh.read(limit + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._io_error(exc, name) from None
        if len(data) > limit:
            raise remote_error(f"remote object {name} is larger than {limit} bytes")
        return data

    def download(self, name: str, dest: Path, size: int, on_bytes: OnBytes) -> None:
        try:
            with open(self._path(name), "rb") as src, open(dest, "wb") as out:
                copied = _copy(src, out, size + 1, on_bytes)
        except FileNotFoundError:
            raise RemoteObjectDamaged(f"remote object {name} is missing") from None
        except OSError as exc:
            raise self._io_error(exc, name) from None
        if copied != size:
            raise RemoteObjectDamaged(f"remote object {name} has {copied} bytes, expected {size}")

    def upload(self, src: Path, name: str, on_bytes: OnBytes) -> None:
        tmp = self._tmp()
        try:
            with open(src, "rb") as fh, open(tmp, "wb") as out:
                _copy(fh, out, None, on_bytes)
                point("remote.file.upload.before_fsync")
                os.fsync(out.fileno())
            final = self._path(name)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, final)
        except OSError as exc:
            raise self._io_error(exc, name) from None
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()

    def put_if_absent(self, name: str, data: bytes) -> bool:
        tmp = self._tmp()
        try:
            with open(tmp, "wb") as out:
                out.write(data)
                os.fsync(out.fileno())
            final = self._path(name)
            final.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(tmp, final)
            except FileExistsError:
                return False
            return True
        except OSError as exc:
            raise self._io_error(exc, name) from None
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()

    def list(self, prefix: str) -> Iterator[str]:
        base = self._path(prefix)
        if not base.is_dir():
            return
        for path in sorted(base.rglob("*")):
            if path.is_file():
                yield path.relative_to(self.root).as_posix()

    def _tmp(self) -> Path:
        tmp_dir = self.root / "tmp"
        try:
            tmp_dir.mkdir(exist_ok=True)
        except OSError as exc:
            raise self._io_error(exc, "tmp") from None
        return tmp_dir / f"{os.getpid()}-{uuid.uuid4().hex}"

    def _io_error(self, exc: OSError, name: str) -> Exception:
        return remote_error(
            f"remote cache {self.root}: {exc.strerror or exc} ({name})",
            hint="check the mount and its permissions",
        )


def _copy(src: object, out: object, limit: int | None, on_bytes: OnBytes) -> int:
    """Copy in blocks, reporting progress; stop reading after ``limit`` bytes."""
    total = 0
    while limit is None or total < limit:
        want = _CHUNK if limit is None else min(_CHUNK, limit - total)
        block = src.read(want)  # type: ignore[attr-defined]
        if not block:
            break
        out.write(block)  # type: ignore[attr-defined]
        total += len(block)
        on_bytes(len(block))
    return total
