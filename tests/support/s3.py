"""A real S3-protocol server for tests: moto's standalone server (`moto_server`) in its own process on 127.0.0.1,
reached over HTTP exactly as an object store is (nothing in the test process is mocked), and the environment
variables a client of it needs: AWS's standard ones, which boto3, s3fs (DVC) and MLflow all read."""

import re
import time
import urllib.request
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.paths import BIN
from tests.support.processes import start_group, stop_group, tail
from tests.support.webserver import free_port

# moto accepts any key pair; these only have to be present, as they would be for a real store.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "geoseg-test-key", "AWS_SECRET_ACCESS_KEY": "geoseg-test-secret",
               "AWS_DEFAULT_REGION": "us-east-1"}
STARTUP_TIMEOUT = 60


@dataclass(frozen=True)
class S3Server:
    """An S3 endpoint on 127.0.0.1: its URL, the client environment, and reads of what it holds."""

    endpoint: str
    pid: int = 0  # the server process (benchmarks read its CPU time)
    log: Path | None = None  # its output: one line per request

    def env(self) -> dict[str, str]:
        """Credentials and endpoint as AWS's standard variables (AWS_ENDPOINT_URL_S3 points every S3 client at it)."""
        return {**CREDENTIALS, "AWS_ENDPOINT_URL_S3": self.endpoint}

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
                            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"])

    def new_bucket(self) -> str:
        """A fresh, empty bucket (a unique name per test, so tests sharing the server never see each other's keys)."""
        name = f"geoseg-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def gets(self, bucket: str, key: str, since: int = 0) -> tuple[int, int]:
        """GET requests for an object in the server's request log after line `since`, and the log's length now (the
        `since` of a later count)."""
        lines = self.log.read_text(errors="replace").splitlines()
        pattern = re.compile(rf'"GET /{re.escape(bucket)}/{re.escape(key)}[ ?]')
        return sum(1 for line in lines[since:] if pattern.search(line)), len(lines)

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every object key under `prefix`, sorted."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))


@contextmanager
def s3_server(log_dir: Path) -> Iterator[S3Server]:
    """moto's standalone S3 server on a free port, stopped (its whole process group) on exit."""
    port = free_port()
    log = log_dir / "moto_server.log"
    proc = start_group([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], {"PATH": str(BIN)}, log)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + STARTUP_TIMEOUT
        while True:
            assert proc.poll() is None, f"moto_server exited with {proc.returncode}:\n{tail(log)}"
            try:
                with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=5):
                    break
            except OSError:
                if time.time() > deadline:
                    pytest.fail(f"moto_server did not answer on {endpoint} within {STARTUP_TIMEOUT} s:\n{tail(log)}")
                time.sleep(0.2)
        yield S3Server(endpoint, proc.pid, log)
    finally:
        stop_group(proc)
