"""blake3 digests that carry their algorithm, and canonical JSON.

A stage key is ``digest_json(inputs)``; a file digest is ``digest_file(path)``.
Both return ``"blake3:<hex>"`` so a digest never loses what produced it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import blake3

ALGO = "blake3"
_CHUNK = 8 << 20  # 8 MiB reads: large enough to amortise syscalls, small enough for RSS


def canonical_json(value: Any) -> bytes:
    """Serialise so that equal values give equal bytes (sorted keys, no spaces)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def digest_bytes(data: bytes) -> str:
    return f"{ALGO}:{blake3.blake3(data).hexdigest()}"


def digest_json(value: Any) -> str:
    return digest_bytes(canonical_json(value))


def digest_file(path: Path) -> str:
    """Digest a file's bytes. Uses blake3's memory-mapped multithreaded path."""
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    hasher.update_mmap(str(path))
    return f"{ALGO}:{hasher.hexdigest()}"


def short(digest: str, n: int = 12) -> str:
    """The first ``n`` hex characters, for display only."""
    return digest.split(":", 1)[-1][:n]
