"""The admin listener and the draining shutdown: what probes and clients see."""

from __future__ import annotations

import json
import os
import signal
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from botocore.exceptions import ClientError

from s3batchd.cli.seaweed import LocalS3, start_local_s3
from tests.batches import indexed_objects
from tests.conftest import Daemon, DaemonFactory, wait_for
from tests.daemon_process import DaemonProcess
from tests.faultproxy import FaultProxy

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


def get_json(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:  # noqa: S310  loopback http
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_health_and_readiness(daemon: Daemon) -> None:
    assert get_json(daemon.admin_url + "/healthz") == (200, {"status": "ok"})
    assert get_json(daemon.admin_url + "/readyz") == (200, {"status": "ready"})


def test_admin_paths_never_collide_with_buckets(daemon: Daemon, s3: S3Client) -> None:
    # On the S3 port, /healthz is a bucket like any other.
    if "healthz" not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
        s3.create_bucket(Bucket="healthz")
    answer = daemon.client().put_object(Bucket="healthz", Key="k", Body=b"x")
    assert answer["ResponseMetadata"]["HTTPHeaders"]["x-s3batchd-tar"].startswith("s3://healthz/")
    status, _ = get_json(daemon.admin_url + "/healthz")
    assert status == 200


def test_readiness_warns_while_upstream_fails(
    start_daemon: DaemonFactory, s3_server: LocalS3, s3: S3Client, bucket: str
) -> None:
    proxy = FaultProxy(int(s3_server.endpoint_url.rsplit(":", 1)[1])).start()
    try:
        proxy.set("error", status=403, code="AccessDenied")
        daemon = start_daemon(upstream={"endpoint_url": proxy.url}, batch={"linger_ms": 50})
        daemon.client().put_object(Bucket=bucket, Key="k", Body=b"kept")
        wait_for(lambda: "warnings" in get_json(daemon.admin_url + "/readyz")[1])
        status, body = get_json(daemon.admin_url + "/readyz")
        assert status == 200  # the spool takes writes: a failing bucket is a warning
        assert "AccessDenied" in body["warnings"][0]
        proxy.set("pass")
        wait_for(lambda: indexed_objects(s3, bucket) == 1)
        wait_for(lambda: get_json(daemon.admin_url + "/readyz") == (200, {"status": "ready"}))
    finally:
        proxy.stop()


@pytest.mark.parametrize("upstream", ["healthy", "blackholed"])
def test_sigterm_drains_and_refuses_new_puts(
    s3_server: LocalS3, s3: S3Client, bucket: str, tmp_path: Path, upstream: str
) -> None:
    proxy = FaultProxy(int(s3_server.endpoint_url.rsplit(":", 1)[1])).start()
    try:
        proxy.set("blackhole")  # hold the drain open long enough to look at it
        with DaemonProcess(
            tmp_path,
            s3_server,
            batch={"linger_ms": 600_000},
            upstream={"endpoint_url": proxy.url, "read_timeout_s": 1, "connect_timeout_s": 1},
            shutdown={"drain_timeout_s": 4},
        ) as process:
            client = process.client()
            for number in range(3):
                client.put_object(Bucket=bucket, Key=f"k{number}", Body=b"acknowledged")
            assert process.process is not None
            process.process.send_signal(15)
            admin = f"http://127.0.0.1:{process.admin_port}"
            wait_for(lambda: get_json(admin + "/readyz")[0] == 503, timeout=10)
            assert "draining" in get_json(admin + "/readyz")[1]["reasons"]
            with pytest.raises(ClientError) as caught:
                client.put_object(Bucket=bucket, Key="late", Body=b"refused")
            assert caught.value.response["Error"]["Code"] == "SlowDown"
            if upstream == "healthy":
                proxy.set("pass")
            status = process.process.wait(60)
        if upstream == "healthy":
            assert status == 0
            assert indexed_objects(s3, bucket) == 3
            assert not list((tmp_path / "spool" / bucket).iterdir())
        else:
            assert status == 3  # batches kept on disk for the next start
            assert indexed_objects(s3, bucket) == 0
            assert [p.suffix for p in (tmp_path / "spool" / bucket).iterdir()] == [".tar"]
            assert "batches not uploaded before shutdown" in process.log()
    finally:
        proxy.stop()


def test_readiness_warns_when_the_upstream_stops(
    start_daemon: DaemonFactory, tmp_path: Path
) -> None:
    server = start_local_s3(tmp_path / "own-seaweed", buckets=("probed",))
    try:
        daemon = start_daemon(
            upstream={
                "endpoint_url": server.endpoint_url,
                "probe_interval_s": 0.2,
                "probe_buckets": ["probed"],
                "read_timeout_s": 1,
                "connect_timeout_s": 1,
            }
        )
        ready = daemon.admin_url + "/readyz"
        wait_for(lambda: get_json(ready) == (200, {"status": "ready"}))
        os.kill(server.pid, signal.SIGSTOP)  # accepts connections, never answers
        try:
            wait_for(lambda: "warnings" in get_json(ready)[1], timeout=20)
            status, body = get_json(ready)
            assert status == 200
            assert "upstream unreachable: s3://probed" in body["warnings"][0]
        finally:
            os.kill(server.pid, signal.SIGCONT)
        wait_for(lambda: get_json(ready) == (200, {"status": "ready"}), timeout=20)
    finally:
        server.stop()
