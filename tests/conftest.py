"""Fixtures: a real SeaweedFS (``weed mini``) per session, a bucket per test, and s3batchd
itself served by uvicorn in a thread (or as a subprocess where signals matter)."""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import boto3
import pytest
from botocore.config import Config
from starlette.applications import Starlette

from s3batchd.batching.pipeline import Pipeline
from s3batchd.cli.seaweed import LocalS3, start_local_s3
from s3batchd.config import Settings
from s3batchd.server.serve import DrainingServer, build_server
from tests.sections import daemon_sections

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

ChecksumMode = Literal["when_supported", "when_required"]
CHECKSUM_MODES: tuple[ChecksumMode, ...] = ("when_supported", "when_required")


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--crash-rounds N``: kill -9 rounds of the crash test (``make crash-test`` runs more)."""
    parser.addoption("--crash-rounds", type=int, default=3, help="kill -9 rounds in test_crash")


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """No AWS_* or S3BATCHD_* (nor a malloc arena limit) from the developer's shell leaks into
    a test."""
    for name in list(os.environ):
        if name.startswith(("AWS_", "S3BATCHD_")) or name in ("MALLOC_ARENA_MAX", "GLIBC_TUNABLES"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    # Without credentials, botocore would ask the instance metadata service (169.254.169.254).
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalS3]:
    """A real S3 server on 127.0.0.1 for the whole session, stopped by PID."""
    server = start_local_s3(tmp_path_factory.mktemp("seaweedfs"))
    yield server
    server.stop()


@pytest.fixture
def s3(s3_server: LocalS3) -> S3Client:
    """A boto3 client talking to SeaweedFS directly."""
    return s3_server.client()


@pytest.fixture
def bucket(s3: S3Client) -> str:
    """A fresh, empty bucket."""
    name = f"t-{secrets.token_hex(6)}"
    s3.create_bucket(Bucket=name)
    return name


def make_settings(tmp_path: Path, s3_server: LocalS3, **sections: dict[str, Any]) -> Settings:
    """Settings for a daemon in ``tmp_path`` pointed at ``s3_server`` (sections override)."""
    base = daemon_sections(tmp_path, s3_server, drain_timeout_s=10, **sections)
    return Settings.model_validate(base)


@dataclass
class Daemon:
    """A running s3batchd (uvicorn in a thread)."""

    settings: Settings
    server: DrainingServer
    thread: threading.Thread
    pipeline: Pipeline
    app: Starlette

    @property
    def url(self) -> str:
        """Endpoint URL for clients."""
        return f"http://127.0.0.1:{self.settings.server.port}"

    @property
    def admin_url(self) -> str:
        """Base URL of /healthz, /readyz and /metrics."""
        return f"http://127.0.0.1:{self.settings.server.admin_port}"

    def client(self, checksums: ChecksumMode = "when_supported", **config: Any) -> S3Client:
        """A boto3 client pointed at the daemon, as an application would configure it."""
        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id="app-key",
            aws_secret_access_key="app-secret",
            config=Config(request_checksum_calculation=checksums, **config),
        )

    def stop(self) -> None:
        """Stop like SIGTERM would: stop accepting, finish requests, seal and upload."""
        self.server.should_exit = True
        self.thread.join(60)
        assert not self.thread.is_alive(), "daemon did not stop"


DaemonFactory = Callable[..., Daemon]


@pytest.fixture
def start_daemon(
    tmp_path: Path, s3_server: LocalS3, monkeypatch: pytest.MonkeyPatch
) -> Iterator[DaemonFactory]:
    """Start s3batchd in a thread; sections override the test settings. Its upstream
    credentials come from the standard AWS chain (here: the environment), as in production."""
    started: list[Daemon] = []
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)

    def start(**sections: dict[str, Any]) -> Daemon:
        settings = make_settings(tmp_path, s3_server, **sections)
        server, sockets, app = build_server(settings)
        thread = threading.Thread(target=server.run, kwargs={"sockets": sockets}, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive(), "daemon failed to start"
            assert time.monotonic() < deadline, "daemon did not start in 30 s"
            time.sleep(0.02)
        daemon = Daemon(settings, server, thread, app.state.pipeline, app)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        if daemon.thread.is_alive():
            daemon.stop()


@pytest.fixture
def daemon(start_daemon: DaemonFactory) -> Daemon:
    """A daemon with the default test settings."""
    return start_daemon()


def wait_for(predicate: Callable[[], bool], timeout: float = 30, interval: float = 0.1) -> None:
    """Poll until ``predicate()`` is true (bounded in time)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout} s")
        time.sleep(interval)
