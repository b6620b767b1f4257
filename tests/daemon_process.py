"""s3batchd as a real process (``s3batchd serve --config``), for signal and crash tests."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config

from s3batchd.cli.seaweed import LocalS3
from tests.conftest import ChecksumMode
from tests.sections import daemon_sections

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


def _toml(sections: dict[str, dict[str, Any]]) -> str:
    lines: list[str] = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            rendered = (
                f'"{value}"'
                if isinstance(value, str | Path)
                else repr(value).lower()
                if isinstance(value, bool)
                else repr(value)
            )
            lines.append(f"{key} = {rendered}")
    text = "\n".join(lines) + "\n"
    tomllib.loads(text)  # the file must be valid TOML
    return text


class DaemonProcess:
    """Runs ``s3batchd serve`` against ``s3_server`` with a config file in ``directory``."""

    def __init__(
        self,
        directory: Path,
        s3_server: LocalS3,
        *,
        wrapper: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        **sections: dict[str, Any],
    ) -> None:
        self.wrapper = wrapper
        """Command prefix the daemon is started through (e.g. a private mount namespace)."""
        base = daemon_sections(directory, s3_server, drain_timeout_s=20, **sections)
        self.port, self.admin_port = base["server"]["port"], base["server"]["admin_port"]
        self.config_path = directory / "s3batchd.toml"
        self.config_path.write_text(_toml(base))
        self.log_path = directory / "s3batchd.log"
        self._env = {
            **os.environ,
            "AWS_ACCESS_KEY_ID": s3_server.access_key,
            "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
            **(env or {}),
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.bucket = ""
        """The bucket a test's load goes to (for helpers that drive the daemon)."""

    @property
    def url(self) -> str:
        """Endpoint URL of the daemon."""
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> DaemonProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Kill the process (and its workers) if it still runs."""
        if self.process is not None and self.process.poll() is None:
            self.kill()

    def workers(self) -> list[int]:
        """PIDs of the worker processes (``server.workers`` > 1)."""
        assert self.process is not None
        return children(self.process.pid)

    def start(self, timeout: float = 30) -> None:
        """Start the process (through ``wrapper``, if given) and wait until it serves."""
        executable = str(Path(sys.executable).parent / "s3batchd")
        seen = len(self.log())
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [*self.wrapper, executable, "serve", "--config", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._env,
            )
        deadline = time.monotonic() + timeout
        # The lifespan's "Application startup complete" comes before uvicorn listens on the
        # sockets bound at start: until then a connection is refused.
        while "Application startup complete" not in self.log()[seen:] or not self._listening():
            if self.process.poll() is not None:
                raise RuntimeError(f"s3batchd exited {self.process.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"s3batchd did not start:\n{self.log()}")
            time.sleep(0.05)

    def _listening(self) -> bool:
        """Whether the S3 and admin ports take connections."""
        for port in (self.port, self.admin_port):
            if not port:
                continue
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            except OSError:
                return False
        return True

    def client(self, checksums: ChecksumMode = "when_supported") -> S3Client:
        """A boto3 client pointed at the daemon."""
        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id="app-key",
            aws_secret_access_key="app-secret",
            config=Config(
                request_checksum_calculation=checksums, retries={"total_max_attempts": 1}
            ),
        )

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM and wait; returns the exit status."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        """SIGKILL the process and its workers, and wait."""
        assert self.process is not None
        workers = self.workers()
        self.process.kill()
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait(10)
        deadline = time.monotonic() + 10
        while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.01)

    def log(self) -> str:
        """Everything the process logged so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def children(parent: int) -> list[int]:
    """PIDs of the processes whose parent is ``parent``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not: it holds no file or lock any more)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
