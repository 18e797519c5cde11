"""A real `mlflow server` for tests: its runs in SQLite, its artifacts in a bucket of the test S3 server
(`--artifacts-destination s3://...`); only the server process holds the store's credentials."""

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from tests.support.paths import BIN
from tests.support.processes import start_group, stop_group
from tests.support.s3 import S3Server
from tests.support.webserver import free_port, wait_for_server


@contextmanager
def mlflow_server(s3: S3Server, bucket: str, folder: Path) -> Iterator[str]:
    """The server's URL while it runs (artifacts under s3://<bucket>/mlflow, its log and database in `folder`)."""
    port = free_port()
    log = folder / "mlflow_server.log"
    # No job-execution workers: MLflow 3 starts 7 huey consumers (~250 MB each) for features geoseg does not use.
    env = {"PATH": os.environ["PATH"], "HOME": str(folder), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **s3.env()}
    proc = start_group([str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
                        "--artifacts-destination", f"s3://{bucket}/mlflow", "--host", "127.0.0.1", "--port", str(port),
                        "--workers", "1"], env, log)
    try:
        wait_for_server(port, {"mlflow server": proc}, {"mlflow server": log}, path="/health")
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_group(proc)
