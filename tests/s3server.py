"""A real S3-compatible HTTP server for the remote-cache tests: moto's standalone server
(from PyPI, in the lock) started in a subprocess on a free localhost port. forge's S3
plugin talks to it with a real boto3 client over HTTP; nothing is mocked."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class S3Server:
    endpoint: str

    def env(self, bucket: str = "forge", prefix: str = "ci") -> dict[str, str]:
        """What a runner sets: the endpoint, throwaway credentials and FORGE_REMOTE."""
        return {
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_ACCESS_KEY_ID": "forge-test-key",
            "AWS_SECRET_ACCESS_KEY": "forge-test-secret",
            "AWS_DEFAULT_REGION": "us-east-1",
            "FORGE_S3_MAX_ATTEMPTS": "2",
            "FORGE_REMOTE": f"s3://{bucket}/{prefix}",
        }

    def client(self):  # type: ignore[no-untyped-def]
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id="forge-test-key",
            aws_secret_access_key="forge-test-secret",
            region_name="us-east-1",
        )

    def enforce_auth(self, on: bool) -> None:
        """moto's switch for checking credentials (off by default: any key is accepted)."""
        data = b"0" if on else b"inf"
        request = urllib.request.Request(
            f"{self.endpoint}/moto-api/reset-auth",
            data=data,
            headers={"Content-Type": "text/plain"},  # a form body would not reach moto
        )
        urllib.request.urlopen(request, timeout=10)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def s3_server(log: Path) -> Iterator[S3Server]:
    port = free_port()
    env = {**os.environ, "S3_UPLOAD_PART_MIN_SIZE": str(5 << 20)}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        _wait_up(endpoint, proc)
        yield S3Server(endpoint)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _wait_up(endpoint: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto server exited with {proc.returncode}")
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2)
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("moto server did not start")
