"""An S3-compatible service for the tests: moto's server (`python -m moto.server`) as a process of its
own on 127.0.0.1, reached over HTTP by the test process and by the worker processes a test starts, as
a bucket on another host would be. Nothing is patched in-process: every store call is a real S3 request
made by django-storages and boto3.

`S3Service` is the running server (one per test session, `s3_server` in tests/conftest.py);
`S3Store` is one bucket of it, fresh for each test (`s3_store`), with the settings that point a
process's default storage at it: `env` for a child process (STORAGE_BACKEND/STORAGE_OPTIONS, as a
deployment sets them) and `storages` for this process's settings.
"""

from __future__ import annotations

import json
import socket
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import boto3
from botocore.config import Config

from tests.processes import child_env, start, stop

BACKEND = "storages.backends.s3.S3Storage"
REGION = "us-east-1"
ACCESS_KEY = "clearinghouse-test"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class S3Service:
    endpoint_url: str
    secret_key: str = field(default_factory=lambda: f"s3-secret-{uuid.uuid4().hex}")

    def client(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=self.secret_key,
            region_name=REGION,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
        )

    def bucket(self) -> S3Store:
        name = f"store-{uuid.uuid4().hex[:16]}"
        self.client().create_bucket(Bucket=name)
        return S3Store(service=self, bucket=name)


@dataclass
class S3Store:
    service: S3Service
    bucket: str

    @property
    def options(self) -> dict[str, Any]:
        """django-storages' S3Storage options for this bucket (the JSON of STORAGE_OPTIONS)."""
        return {
            "bucket_name": self.bucket,
            "endpoint_url": self.service.endpoint_url,
            "access_key": ACCESS_KEY,
            "secret_key": self.service.secret_key,
            "region_name": REGION,
            "addressing_style": "path",
            "signature_version": "s3v4",
            "default_acl": None,
            "querystring_auth": False,
            "file_overwrite": True,
        }

    @property
    def env(self) -> dict[str, str]:
        """What a worker on another host sets to use this bucket as its object store."""
        return {"STORAGE_BACKEND": BACKEND, "STORAGE_OPTIONS": json.dumps(self.options)}

    @property
    def storages(self) -> dict[str, Any]:
        """settings.STORAGES["default"] for this process."""
        return {"BACKEND": BACKEND, "OPTIONS": self.options}

    def objects(self) -> dict[str, bytes]:
        """Every object in the bucket, key to bytes, read with a client of our own (not the store's)."""
        client = self.service.client()
        found: dict[str, bytes] = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
            for item in page.get("Contents", []):
                found[item["Key"]] = client.get_object(Bucket=self.bucket, Key=item["Key"])["Body"].read()
        return found


def serve(ready_timeout: float = 60.0):
    """Starts moto's S3 server on a free port of 127.0.0.1; yields the `S3Service`, stops it after."""
    port = _free_port()
    process, output = start(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        child_env(),
        "moto-s3",
    )
    service = S3Service(endpoint_url=f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + ready_timeout
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the S3 server exited: {output.read_text()[-2000:]}")
            try:
                service.client().list_buckets()
                break
            except Exception:  # noqa: BLE001 - not listening yet
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the S3 server did not start: {output.read_text()[-2000:]}") from None
                time.sleep(0.2)
        yield service
    finally:
        stop(process)
