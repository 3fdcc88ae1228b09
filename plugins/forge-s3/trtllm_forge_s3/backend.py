"""An S3 bucket (AWS or any S3-compatible server) as forge's remote cache.

Configuration is boto3's own: credentials from its usual chain (AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY, AWS_PROFILE, instance roles), the endpoint of an
S3-compatible server from AWS_ENDPOINT_URL_S3 (or AWS_ENDPOINT_URL). forge never
reads, logs or writes them.

Large files move in parts (``FORGE_S3_PART_SIZE_MB``, default 64) with botocore's
standard retry mode retrying each request, so a dropped connection costs one part,
not the file; an upload a killed process left unfinished is resumed by the next push
(multipart.py). Manifests are published with ``If-None-Match: *`` (put-if-absent).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from trtllm_forge.errors import recipe_error
from trtllm_forge.store.remote_backend import OnBytes, RemoteObjectDamaged, remote_error

_AUTH_CODES = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "403",
}
_ABSENT_CODES = {"404", "NoSuchKey", "NotFound"}
_TAKEN_CODES = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}


class S3Remote:
    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if not parts.netloc:
            raise recipe_error(
                f"FORGE_REMOTE={url!r} names no bucket", hint="use s3://bucket/optional/prefix"
            )
        self.url = url
        self.bucket = parts.netloc
        self.prefix = parts.path.strip("/")
        self._client = _client()
        self._part = _part_size()
        self.parts_sent = 0  # multipart parts this process uploaded (resumed ones excluded)
        with self._errors("opening the bucket"):
            self._client.head_bucket(Bucket=self.bucket)

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def size(self, name: str) -> int | None:
        with self._errors(name, absent_ok=True):
            head = self._client.head_object(Bucket=self.bucket, Key=self._key(name))
            return int(head["ContentLength"])
        return None

    def read_bytes(self, name: str, limit: int) -> bytes | None:
        with self._errors(name, absent_ok=True):
            obj = self._client.get_object(Bucket=self.bucket, Key=self._key(name))
            data = obj["Body"].read(limit + 1)  # never more than the limit, whatever it says
            if len(data) > limit:
                raise remote_error(f"remote object {name} is larger than {limit} bytes")
            return bytes(data)
        return None

    def download(self, name: str, dest: Path, size: int, on_bytes: OnBytes) -> None:
        actual = self.size(name)
        if actual is None:
            raise RemoteObjectDamaged(f"remote object {name} is missing")
        if actual != size:
            raise RemoteObjectDamaged(f"remote object {name} has {actual} bytes, expected {size}")
        with self._errors(name):
            self._client.download_file(
                self.bucket, self._key(name), str(dest), Config=self._transfer(), Callback=on_bytes
            )

    def upload(self, src: Path, name: str, on_bytes: OnBytes) -> None:
        """Small files in one request; large ones in parts that a rerun resumes."""
        from trtllm_forge_s3.multipart import upload_resumable

        with self._errors(name):
            if src.stat().st_size <= self._part:
                self._client.upload_file(
                    str(src),
                    self.bucket,
                    self._key(name),
                    Config=self._transfer(),
                    Callback=on_bytes,
                )
                return
            self.parts_sent += upload_resumable(
                self._client, self.bucket, self._key(name), src, self._part, on_bytes
            )

    def put_if_absent(self, name: str, data: bytes) -> bool:
        from botocore.exceptions import ClientError

        try:
            with self._errors(name, passthrough=_TAKEN_CODES):
                self._client.put_object(
                    Bucket=self.bucket, Key=self._key(name), Body=data, IfNoneMatch="*"
                )
        except ClientError:  # only the "already exists" codes get here
            return False
        return True

    def list(self, prefix: str) -> Iterator[str]:
        strip = len(self._key(""))
        with self._errors(prefix):
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self._key(prefix)
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    yield obj["Key"][strip:]

    def _transfer(self) -> Any:
        from boto3.s3.transfer import TransferConfig

        return TransferConfig(
            multipart_threshold=self._part, multipart_chunksize=self._part, use_threads=True
        )

    @contextmanager
    def _errors(
        self, what: str, *, absent_ok: bool = False, passthrough: set[str] = frozenset()
    ) -> Iterator[list[bool]]:
        """botocore's failures as forge errors that say which setting to look at."""
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            EndpointConnectionError,
            NoCredentialsError,
        )
        from s3transfer.exceptions import RetriesExceededError, S3DownloadFailedError

        absent: list[bool] = []
        try:
            yield absent
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in passthrough:
                raise
            if absent_ok and code in _ABSENT_CODES:
                absent.append(True)
                return
            raise self._client_error(code, what) from None
        except NoCredentialsError:
            raise remote_error(
                f"no S3 credentials for {self.url}",
                hint="set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE (boto3's usual "
                "environment)",
            ) from None
        except EndpointConnectionError as exc:
            raise remote_error(
                f"cannot reach the S3 endpoint for {self.url}: {exc}",
                hint="check AWS_ENDPOINT_URL_S3 / the network; builds keep working without it",
            ) from None
        except (
            BotoCoreError,
            RetriesExceededError,
            S3DownloadFailedError,
            Boto3Error,
        ) as exc:
            raise remote_error(
                f"S3 request for {what} failed: {exc}", hint="check the endpoint and network"
            ) from None

    def _client_error(self, code: str, what: str) -> Exception:
        if code in ("NoSuchBucket",) or (code in _ABSENT_CODES and what == "opening the bucket"):
            return remote_error(
                f"S3 bucket {self.bucket!r} does not exist",
                hint="create it or fix FORGE_REMOTE (s3://bucket/prefix)",
            )
        if code in _AUTH_CODES:
            return remote_error(
                f"S3 refused the credentials for {self.url} ({code})",
                hint="check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE and the "
                "bucket policy",
            )
        return remote_error(f"S3 error {code} on {what} ({self.url})")


def _client() -> Any:
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"max_attempts": _int_env("FORGE_S3_MAX_ATTEMPTS", 5), "mode": "standard"},
        connect_timeout=10,
        read_timeout=60,
    )
    return boto3.session.Session().client("s3", config=config)


def _part_size() -> int:
    return max(5, _int_env("FORGE_S3_PART_SIZE_MB", 64)) << 20  # S3's smallest part: 5 MiB


def _int_env(name: str, default: int) -> int:
    text = os.environ.get(name) or str(default)
    if not text.isdigit() or int(text) < 1:
        raise recipe_error(f"{name}={text!r} is not a positive integer")
    return int(text)
