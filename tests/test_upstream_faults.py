"""A failing, flaky or unreachable bucket: acknowledged objects still arrive, exactly once."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from botocore.exceptions import ClientError

from s3batchd.cli.seaweed import LocalS3, start_local_s3
from tests.batches import Location, fetch, indexed_objects, indexes, keys
from tests.conftest import Daemon, DaemonFactory, wait_for
from tests.faultproxy import FaultProxy

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from s3batchd.server.metrics import Metrics


def _port(server: LocalS3) -> int:
    return int(server.endpoint_url.rsplit(":", 1)[1])


@pytest.fixture
def proxy(s3_server: LocalS3) -> Iterator[FaultProxy]:
    """A fault proxy in front of the session's SeaweedFS."""
    fault_proxy = FaultProxy(_port(s3_server)).start()
    yield fault_proxy
    fault_proxy.stop()


def put_many(daemon_client: Any, bucket: str, count: int, tag: str) -> dict[str, Location]:
    found = {}
    for number in range(count):
        key = f"{tag}/{number}"
        answer = daemon_client.put_object(Bucket=bucket, Key=key, Body=key.encode() * 50)
        found[key] = Location.from_headers(answer["ResponseMetadata"]["HTTPHeaders"])
    return found


def assert_exactly_once(s3: S3Client, bucket: str, locations: dict[str, Location]) -> None:
    """Every acknowledged object readable by its range; one index per tar; no duplicates."""
    for key, location in locations.items():
        assert fetch(s3, location) == key.encode() * 50, key
    documents = indexes(s3, bucket)
    listed = Counter(obj["key"] for doc in documents for obj in doc["objects"])
    assert listed == Counter(list(locations))
    names = keys(s3, bucket)
    tars = {k.removesuffix(".tar") for k in names if k.endswith(".tar")}
    index_stems = {k.removesuffix(".index.json") for k in names if k.endswith(".index.json")}
    assert tars == index_stems  # no tar without its index, no index without its tar


@pytest.mark.parametrize(
    "mode",
    [
        {"name": "error", "status": 503, "code": "SlowDown", "faults": 4},
        {"name": "error", "status": 500, "code": "InternalError", "faults": 4},
        {"name": "reset", "faults": 4},
        {"name": "drop_response", "faults": 2, "only_method": "PUT"},
    ],
    ids=["slowdown", "internal-error", "reset", "ambiguous-success"],
)
def test_upstream_faults_are_retried_without_loss_or_duplicates(
    start_daemon: DaemonFactory,
    proxy: FaultProxy,
    s3: S3Client,
    bucket: str,
    mode: dict[str, Any],
) -> None:
    proxy.set(**mode)
    daemon = start_daemon(
        upstream={"endpoint_url": proxy.url, "read_timeout_s": 2},
        batch={"linger_ms": 200, "max_records": 10},
    )
    locations = put_many(daemon.client(), bucket, 30, mode["name"])
    wait_for(lambda: indexed_objects(s3, bucket) == 30)
    assert proxy.decisions[mode["name"]] == mode["faults"]
    assert_exactly_once(s3, bucket, locations)
    wait_for(lambda: daemon.pipeline.uploader.pending == 0)
    assert not any((daemon.settings.spool.dir / bucket).iterdir())


def test_blackholed_upstream_does_not_block_ingest(
    start_daemon: DaemonFactory, proxy: FaultProxy, s3: S3Client, bucket: str
) -> None:
    proxy.set("blackhole")
    daemon = start_daemon(
        upstream={"endpoint_url": proxy.url, "read_timeout_s": 1, "connect_timeout_s": 1},
        batch={"linger_ms": 100},
    )
    client = daemon.client()
    started = time.monotonic()
    locations = put_many(client, bucket, 20, "first")
    time.sleep(1.5)
    locations |= put_many(client, bucket, 20, "second")  # still acknowledged at once
    assert time.monotonic() - started < 10
    assert proxy.decisions["blackhole"] >= 1
    assert indexed_objects(s3, bucket) == 0
    proxy.set("pass")
    wait_for(lambda: indexed_objects(s3, bucket) == 40, timeout=60)
    assert_exactly_once(s3, bucket, locations)


def test_upstream_stopped_and_killed_mid_load(start_daemon: DaemonFactory, tmp_path: Path) -> None:
    """SIGSTOP (a server that accepts and never answers), then SIGKILL and a restart."""
    server = start_local_s3(tmp_path / "own-seaweed", buckets=("chaos",))
    try:
        daemon = start_daemon(
            upstream={
                "endpoint_url": server.endpoint_url,
                "read_timeout_s": 1,
                "connect_timeout_s": 1,
            },
            batch={"linger_ms": 100},
        )
        client = daemon.client()
        os.kill(server.pid, signal.SIGSTOP)
        try:
            locations = put_many(client, "chaos", 15, "stopped")
            time.sleep(1)
        finally:
            os.kill(server.pid, signal.SIGCONT)
        server.process.kill()
        server.process.wait(10)
        locations |= put_many(client, "chaos", 15, "killed")
        time.sleep(1)
        server = start_local_s3(tmp_path / "own-seaweed", buckets=("chaos",), ports=server.ports)
        s3 = server.client()
        wait_for(lambda: indexed_objects(s3, "chaos") == 30, timeout=90)
        assert_exactly_once(s3, "chaos", locations)
    finally:
        server.stop()


def test_deletes_the_bucket_refuses_keep_the_batched_object(
    start_daemon: DaemonFactory, proxy: FaultProxy, bucket: str
) -> None:
    daemon = start_daemon(upstream={"endpoint_url": proxy.url}, batch={"linger_ms": 600_000})
    client = daemon.client(retries={"total_max_attempts": 1})
    client.put_object(Bucket=bucket, Key="d", Body=b"kept")
    for method in ("DELETE", "POST"):  # DeleteObject, DeleteObjects
        proxy.set("error", status=403, code="AccessDenied", only_method=method)
        with pytest.raises(ClientError) as refused:
            if method == "DELETE":
                client.delete_object(Bucket=bucket, Key="d")
            else:
                client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "d"}]})
        assert refused.value.response["Error"]["Code"] == "AccessDenied"
        assert client.get_object(Bucket=bucket, Key="d")["Body"].read() == b"kept"
    proxy.set("pass")
    # Deleting one (older) version of the key leaves the batched, latest object alone.
    client.delete_objects(
        Bucket=bucket, Delete={"Objects": [{"Key": "d", "VersionId": "3HL4kqtJlcpXroDTDmJ"}]}
    )
    assert client.get_object(Bucket=bucket, Key="d")["Body"].read() == b"kept"
    client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "d"}], "Quiet": True})
    with pytest.raises(ClientError) as gone:
        client.get_object(Bucket=bucket, Key="d")
    assert gone.value.response["Error"]["Code"] == "NoSuchKey"


def _hang_up_after_sending(port: int, request: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
        connection.sendall(request)


def _send(port: int, request: bytes) -> socket.socket:
    connection = socket.create_connection(("127.0.0.1", port), timeout=5)
    connection.sendall(request)
    return connection


def _finished(daemon: Daemon, status: str | None = None) -> float:
    """Requests the daemon is done with (answered, or given up when the client left)."""
    metrics: Metrics = daemon.app.state.metrics
    return sum(
        sample.value
        for metric in metrics.requests.collect()
        for sample in metric.samples
        if sample.name == "s3batchd_requests_total" and status in (None, sample.labels["status"])
    )


def test_clients_hanging_up_while_the_bucket_is_slow_do_not_break_forwarding(
    proxy: FaultProxy, start_daemon: DaemonFactory, s3: S3Client, bucket: str
) -> None:
    # The proxy fixture comes first so that it outlives the daemon (torn down before it).
    s3.put_object(Bucket=bucket, Key="unbatched", Body=b"from the bucket")
    daemon = start_daemon(upstream={"endpoint_url": proxy.url, "connect_timeout_s": 2})
    # The bucket answers a GET only after a minute, longer than any wait below: a request
    # whose client is gone frees its request slot and pooled connection only if the daemon
    # lets it go when the client leaves, not when the bucket answers.
    proxy.set("slow", delay_s=60, only_method="GET")
    request = f"GET /{bucket}/unbatched HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    port = daemon.settings.server.port
    # As many requests as the daemon serves at once, which is also the forwarder's pool size
    # (256): each wave reaches the bucket only if every slot and every connection is free.
    slots = daemon.settings.server.max_concurrent_requests
    assert slots == 256
    for wave in range(2):
        connections = []
        for number in range(1, slots + 1):
            connections.append(_send(port, request))
            # One request at a time, each sent once the previous one reached the bucket: the
            # daemon is never handed hundreds at once, so no connection to the bucket waits
            # behind the others' work on a loaded machine (its connect timeout is 2 s).
            reached = wave * slots + number
            wait_for(lambda: proxy.decisions["slow"] == reached, timeout=30, interval=0.002)  # noqa: B023
        for connection in connections:
            connection.close()
        # The next wave comes once the daemon is done with this one (no pause): it gives up
        # each request as its client leaves, long before the bucket would answer.
        wait_for(lambda: _finished(daemon) == (wave + 1) * slots, timeout=30)  # noqa: B023
    assert proxy.decisions["slow"] == 2 * slots
    assert _finished(daemon, "499") == 2 * slots
    assert daemon.app.state.active_requests == 0
    # Clients that hang up straight after sending, before or while the daemon forwards.
    with ThreadPoolExecutor(50) as pool:
        list(pool.map(lambda _: _hang_up_after_sending(port, request), range(300)))
    wait_for(lambda: _finished(daemon) == 2 * slots + 300, timeout=30)
    proxy.set("pass")
    client = daemon.client(retries={"total_max_attempts": 1})
    answer = client.get_object(Bucket=bucket, Key="unbatched")
    assert answer["Body"].read() == b"from the bucket"


def test_a_delete_whose_client_hangs_up_still_hides_the_batched_object(
    proxy: FaultProxy, start_daemon: DaemonFactory, bucket: str
) -> None:
    # Unlike a GET, a forwarded write is not given up when its client leaves: the bucket
    # applies it anyway, so the daemon must still do its part (here: hide the batched key).
    daemon = start_daemon(upstream={"endpoint_url": proxy.url}, batch={"linger_ms": 600_000})
    client = daemon.client(retries={"total_max_attempts": 1})
    client.put_object(Bucket=bucket, Key="d", Body=b"batched")
    proxy.set("slow", delay_s=1, only_method="DELETE")
    request = f"DELETE /{bucket}/d HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    with _send(daemon.settings.server.port, request):  # hangs up once it reached the bucket
        wait_for(lambda: proxy.decisions["slow"] == 1, timeout=30)
    wait_for(lambda: _finished(daemon, "204") == 1, timeout=30)
    proxy.set("pass")
    with pytest.raises(ClientError) as gone:
        client.get_object(Bucket=bucket, Key="d")
    assert gone.value.response["Error"]["Code"] == "NoSuchKey"


def test_an_abort_the_bucket_refuses_can_be_retried(
    start_daemon: DaemonFactory, proxy: FaultProxy, bucket: str
) -> None:
    daemon = start_daemon(upstream={"endpoint_url": proxy.url}, batch={"passthrough_bytes": 2**20})
    client = daemon.client(retries={"total_max_attempts": 1})
    upload_id = client.create_multipart_upload(Bucket=bucket, Key="m")["UploadId"]
    client.upload_part(  # past batch.passthrough_bytes: the upload moves to the bucket
        Bucket=bucket, Key="m", UploadId=upload_id, PartNumber=1, Body=b"x" * 2**20
    )
    proxy.set("error", status=503, code="SlowDown", only_method="DELETE")
    with pytest.raises(ClientError) as refused:
        client.abort_multipart_upload(Bucket=bucket, Key="m", UploadId=upload_id)
    assert refused.value.response["Error"]["Code"] == "SlowDown"
    proxy.set("pass")
    client.abort_multipart_upload(Bucket=bucket, Key="m", UploadId=upload_id)
    with pytest.raises(ClientError) as gone:
        client.list_parts(Bucket=bucket, Key="m", UploadId=upload_id)
    assert gone.value.response["Error"]["Code"] == "NoSuchUpload"


def test_reads_of_uploaded_objects_get_the_buckets_refusal_or_503(
    start_daemon: DaemonFactory, proxy: FaultProxy, s3: S3Client, bucket: str
) -> None:
    daemon = start_daemon(upstream={"endpoint_url": proxy.url}, batch={"linger_ms": 50})
    client = daemon.client(retries={"total_max_attempts": 1})
    client.put_object(Bucket=bucket, Key="r", Body=b"uploaded")
    wait_for(lambda: indexed_objects(s3, bucket) == 1)
    wait_for(lambda: getattr(daemon.pipeline.catalog.get(bucket, "r"), "uploaded", False))
    # The read is a ranged GET of the tar, with the daemon's own client.
    cases: list[tuple[str, dict[str, object], int, str]] = [
        ("error", {"status": 403, "code": "AccessDenied"}, 403, "AccessDenied"),
        ("reset", {}, 503, "ServiceUnavailable"),
    ]
    for mode, options, status, code in cases:
        proxy.set(mode, only_method="GET", **options)
        with pytest.raises(ClientError) as caught:
            client.get_object(Bucket=bucket, Key="r")
        assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
        assert caught.value.response["Error"]["Code"] == code
    proxy.set("pass")
    assert client.get_object(Bucket=bucket, Key="r")["Body"].read() == b"uploaded"
