"""Parts of a multipart batch sent at once by the daemon's upload threads:
``upload.busy_part_concurrency`` while PUTs arrive and uploads keep up, ``part_concurrency``
when no PUT arrives or batches wait for an upload worker."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from s3batchd.cli.seaweed import LocalS3
from s3batchd.constants import MB
from tests.batches import indexed_objects
from tests.conftest import Daemon, DaemonFactory, wait_for
from tests.faultproxy import FaultProxy

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

#: Batches uploaded in 5 MiB parts, up to 4 at once.
MULTIPART = {
    "multipart_threshold_bytes": 5 * MB,
    "part_size_bytes": 5 * MB,
    "part_concurrency": 4,
}


@pytest.fixture
def proxy(s3_server: LocalS3) -> Iterator[FaultProxy]:
    """A fault proxy in front of the session's SeaweedFS, counting parts in flight."""
    fault_proxy = FaultProxy(int(s3_server.endpoint_url.rsplit(":", 1)[1])).start()
    yield fault_proxy
    fault_proxy.stop()


def _fill_a_batch(client: S3Client, bucket: str, tag: str) -> None:
    """Four 4 MiB PUTs: the fourth fills the batch, which is sealed and uploaded in 4 parts."""
    for number in range(4):
        client.put_object(Bucket=bucket, Key=f"{tag}/{number}", Body=os.urandom(4 * MB))


def _start(start_daemon: DaemonFactory, proxy: FaultProxy, **upload: object) -> Daemon:
    # Each PUT waits 0.3 s in the proxy, so parts sent side by side are seen together. The
    # proxy is a fixture set up before the daemon's, so it outlives the daemon's drain.
    proxy.set("slow", delay_s=0.3, only_method="PUT")
    return start_daemon(
        upstream={"endpoint_url": proxy.url, "read_timeout_s": 2},
        batch={"linger_ms": 600_000, "max_records": 4},
        upload={**MULTIPART, **upload},
    )


@pytest.mark.parametrize(("busy", "in_flight"), [(None, 1), (4, 4)])
def test_parts_at_once_while_puts_arrive(
    proxy: FaultProxy,
    start_daemon: DaemonFactory,
    s3: S3Client,
    bucket: str,
    busy: int | None,
    in_flight: int,
) -> None:
    # The default sends one part at a time; busy_part_concurrency = part_concurrency as wide
    # as when idle.
    upload = {} if busy is None else {"busy_part_concurrency": busy}
    daemon = _start(start_daemon, proxy, **upload)
    client = daemon.client()
    other = f"{bucket}-other"
    s3.create_bucket(Bucket=other)
    client.put_object(Bucket=other, Key="open", Body=b"keeps a batch open")
    _fill_a_batch(client, bucket, "busy")
    wait_for(lambda: indexed_objects(s3, bucket) == 4)
    assert proxy.most_parts_in_flight == in_flight


def test_all_parts_at_once_when_no_put_arrives(
    proxy: FaultProxy, start_daemon: DaemonFactory, s3: S3Client, bucket: str
) -> None:
    daemon = _start(start_daemon, proxy)
    _fill_a_batch(daemon.client(), bucket, "idle")
    wait_for(lambda: indexed_objects(s3, bucket) == 4)
    assert proxy.most_parts_in_flight == 4


def test_all_parts_at_once_when_uploads_fall_behind(
    proxy: FaultProxy, start_daemon: DaemonFactory, s3: S3Client, bucket: str
) -> None:
    proxy.set("blackhole", only_method="PUT")  # uploads hang until they time out
    daemon = start_daemon(
        upstream={"endpoint_url": proxy.url, "read_timeout_s": 2},
        batch={"linger_ms": 600_000, "max_records": 2},
        upload={**MULTIPART, "concurrency": 1},
    )
    pipeline = daemon.pipeline
    assert pipeline.parts_at_once() == 4  # no PUT arriving
    client = daemon.client()
    client.put_object(Bucket=bucket, Key="a", Body=b"a")
    assert pipeline.parts_at_once() == 1  # a batch open, no batch waiting
    for key in "bcd":  # batch (a, b) uploads, batch (c, d) waits for the one upload worker
        client.put_object(Bucket=bucket, Key=key, Body=key.encode())
    client.put_object(Bucket=bucket, Key="e", Body=b"e")  # a batch open again
    wait_for(lambda: pipeline.uploader.waiting == 1)
    assert pipeline.batcher.open_batches == 1
    assert pipeline.parts_at_once() == 4  # behind: as wide as when idle
    proxy.set("pass")
    wait_for(lambda: indexed_objects(s3, bucket) == 4)
