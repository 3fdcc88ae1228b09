"""Multipart uploads that a later process can resume.

A blob's object name is its content digest, so an unfinished multipart upload
found under that name holds parts of the very same bytes: a rerun after a kill
(or a dropped runner) asks S3 which parts arrived, sends only the others and
completes the upload. Parts of another size (a different FORGE_S3_PART_SIZE_MB)
are not reused; that upload is left for the bucket's lifecycle rule to expire.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from trtllm_forge.faults import point

OnBytes = Callable[[int], None]
WORKERS = 4  # parts in flight at once (each holds one part in memory)


def upload_resumable(
    client: Any, bucket: str, key: str, src: Path, part_size: int, on_bytes: OnBytes
) -> int:
    """Upload ``src`` to ``key`` in parts, reusing any parts an earlier attempt sent.
    Returns the number of parts sent by this call."""
    size = src.stat().st_size
    count = max(1, -(-size // part_size))
    upload_id, done = _resumable_upload(client, bucket, key, part_size, size, count)
    if upload_id is None:
        upload_id = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        done = {}
    for number in done:
        on_bytes(_part_length(number, part_size, size))
    missing = [n for n in range(1, count + 1) if n not in done]

    def send(number: int) -> tuple[int, str]:
        offset = (number - 1) * part_size
        with open(src, "rb") as fh:
            fh.seek(offset)
            body = fh.read(_part_length(number, part_size, size))
        etag = client.upload_part(
            Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body
        )["ETag"]
        on_bytes(len(body))
        point("remote.s3.after_part")
        return number, etag

    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        done.update(dict(pool.map(send, missing)))
    parts = [{"PartNumber": n, "ETag": done[n]} for n in sorted(done)]
    client.complete_multipart_upload(
        Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
    )
    return len(missing)


def _part_length(number: int, part_size: int, size: int) -> int:
    return min(part_size, size - (number - 1) * part_size)


def _resumable_upload(
    client: Any, bucket: str, key: str, part_size: int, size: int, count: int
) -> tuple[str | None, dict[int, str]]:
    """The newest unfinished upload of ``key`` whose parts fit this part size, and its
    parts (number → ETag); (None, {}) when there is none."""
    listed = client.list_multipart_uploads(Bucket=bucket, Prefix=key).get("Uploads", [])
    uploads = sorted((u for u in listed if u["Key"] == key), key=lambda u: u["Initiated"])
    for upload in reversed(uploads):
        parts = _parts(client, bucket, key, upload["UploadId"])
        fits = all(
            1 <= n <= count and length == _part_length(n, part_size, size)
            for n, (_, length) in parts.items()
        )
        if fits:
            return upload["UploadId"], {n: etag for n, (etag, _) in parts.items()}
    return None, {}


def _parts(client: Any, bucket: str, key: str, upload_id: str) -> dict[int, tuple[str, int]]:
    out: dict[int, tuple[str, int]] = {}
    pages = client.get_paginator("list_parts").paginate(Bucket=bucket, Key=key, UploadId=upload_id)
    for page in pages:
        for part in page.get("Parts", []):
            out[int(part["PartNumber"])] = (part["ETag"], int(part["Size"]))
    return out
