"""A 200 is never given for a bucket the upstream says does not exist: the HeadBucket check
before the first batched write to a bucket, its cache, and what it accepts."""

from __future__ import annotations

import asyncio
import secrets
import socket
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import pytest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from s3batchd.cli.seaweed import LocalS3
from s3batchd.config import UpstreamConfig
from s3batchd.errors import NoSuchBucket
from s3batchd.forward.buckets import BucketCheck, head_bucket
from s3batchd.forward.proxy import Forwarder
from tests.conftest import Daemon, DaemonFactory, wait_for
from tests.faultproxy import FaultProxy
from tests.wire import send_raw

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


@pytest.fixture
def proxy(s3_server: LocalS3) -> Iterator[FaultProxy]:
    """A fault proxy in front of the session's SeaweedFS."""
    fault_proxy = FaultProxy(int(s3_server.endpoint_url.rsplit(":", 1)[1])).start()
    yield fault_proxy
    fault_proxy.stop()


def _missing() -> str:
    return f"t-missing-{secrets.token_hex(6)}"


def _code(caught: pytest.ExceptionInfo[ClientError]) -> tuple[int, str]:
    response = caught.value.response
    return response["ResponseMetadata"]["HTTPStatusCode"], response["Error"]["Code"]


def _assert_nothing_spooled_for(daemon: Daemon, bucket: str) -> None:
    assert not (daemon.settings.spool.dir / bucket).exists()
    assert next(daemon.pipeline.catalog.iter_keys(bucket, "", ""), None) is None


def test_put_to_a_missing_bucket_is_no_such_bucket(daemon: Daemon, bucket: str) -> None:
    """PutObject, CreateMultipartUpload and a CopyObject of a batched object into a bucket
    the upstream does not have: 404 NoSuchBucket naming the bucket, nothing spooled."""
    client = daemon.client()
    missing = _missing()
    with pytest.raises(ClientError) as caught:
        client.put_object(Bucket=missing, Key="k", Body=b"never lands")
    assert _code(caught) == (404, "NoSuchBucket")
    port = daemon.settings.server.port
    answer = send_raw(
        port,
        f"PUT /{missing}/raw HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n\r\nhi".encode(),
    )
    assert answer.status == 404
    root = ET.fromstring(answer.body)  # noqa: S314  the daemon's own answer
    fields = {child.tag: child.text for child in root}
    assert fields["Code"] == "NoSuchBucket"
    assert fields["BucketName"] == missing
    with pytest.raises(ClientError) as caught:
        client.create_multipart_upload(Bucket=missing, Key="parts")
    assert _code(caught) == (404, "NoSuchBucket")
    client.put_object(Bucket=bucket, Key="source", Body=b"batched source")
    with pytest.raises(ClientError) as caught:
        client.copy_object(
            Bucket=missing, Key="copy", CopySource={"Bucket": bucket, "Key": "source"}
        )
    assert _code(caught) == (404, "NoSuchBucket")
    _assert_nothing_spooled_for(daemon, missing)


def test_a_bucket_created_through_the_daemon_takes_writes_at_once(
    start_daemon: DaemonFactory, s3: S3Client
) -> None:
    """The negative entry goes when CreateBucket through the daemon succeeds; a bucket
    created elsewhere is found once the negative entry expires."""
    daemon = start_daemon(upstream={"bucket_missing_ttl_s": 0.5})
    client = daemon.client()
    missing = _missing()
    with pytest.raises(ClientError) as caught:
        client.put_object(Bucket=missing, Key="k", Body=b"x")
    assert _code(caught) == (404, "NoSuchBucket")
    client.create_bucket(Bucket=missing)
    client.put_object(Bucket=missing, Key="k", Body=b"x")
    elsewhere = _missing()
    with pytest.raises(ClientError) as caught:
        client.put_object(Bucket=elsewhere, Key="k", Body=b"x")
    s3.create_bucket(Bucket=elsewhere)

    def accepted() -> bool:
        try:
            client.put_object(Bucket=elsewhere, Key="k", Body=b"x")
        except ClientError as exc:
            assert exc.response["Error"]["Code"] == "NoSuchBucket"
            return False
        return True

    wait_for(accepted)


def test_access_denied_on_the_check_accepts_with_one_head_bucket(
    start_daemon: DaemonFactory, proxy: FaultProxy, bucket: str
) -> None:
    """A policy without s3:ListBucket: HeadBucket is 403, the PUTs are accepted, and the
    answer is cached (one HeadBucket for many PUTs, concurrent first ones included)."""
    proxy.set("error", status=403, code="AccessDenied", only_method="HEAD")
    daemon = start_daemon(upstream={"endpoint_url": proxy.url}, batch={"linger_ms": 600_000})
    client = daemon.client(max_pool_connections=16)
    with ThreadPoolExecutor(16) as pool:
        answers = list(
            pool.map(lambda n: client.put_object(Bucket=bucket, Key=f"k{n}", Body=b"x"), range(32))
        )
    assert all(a["ResponseMetadata"]["HTTPStatusCode"] == 200 for a in answers)
    for n in range(10):
        client.put_object(Bucket=bucket, Key=f"later{n}", Body=b"x")
    assert proxy.decisions["error"] == 1
    assert daemon.pipeline.catalog.count() == 42


@pytest.mark.parametrize("mode", ["reset", "blackhole"])
def test_unreachable_upstream_accepts(
    start_daemon: DaemonFactory, proxy: FaultProxy, bucket: str, mode: str
) -> None:
    """Buffering through an outage is the point: an upstream that cannot answer the check
    does not stop a PUT."""
    proxy.set(mode, only_method="HEAD")
    daemon = start_daemon(
        upstream={"endpoint_url": proxy.url, "bucket_check_timeout_s": 0.5},
        batch={"linger_ms": 600_000},
    )
    client = daemon.client()
    for n in range(3):
        client.put_object(Bucket=bucket, Key=f"k{n}", Body=b"x")
    assert proxy.decisions[mode] == 1
    assert daemon.pipeline.catalog.count() == 3


class _FakeHead:
    """HeadBucket answered from a table, each call counted; ``gate`` holds the answers."""

    def __init__(self, statuses: dict[str, int | None]) -> None:
        self.statuses = statuses
        self.calls: list[str] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def __call__(self, bucket: str) -> int | None:
        self.calls.append(bucket)
        await self.gate.wait()
        return self.statuses.get(bucket, 200)


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_concurrent_first_writes_share_one_head_bucket() -> None:
    async def scenario() -> None:
        head = _FakeHead({"gone": 404})
        check = BucketCheck(head, ttl_s=60, missing_ttl_s=5)
        head.gate.clear()
        waiting = [asyncio.ensure_future(check.require(b)) for b in ["a"] * 8 + ["gone"] * 8]
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert sorted(head.calls) == ["a", "gone"]
        head.gate.set()
        results = await asyncio.gather(*waiting, return_exceptions=True)
        assert results[:8] == [None] * 8
        assert all(isinstance(r, NoSuchBucket) for r in results[8:])
        assert sorted(head.calls) == ["a", "gone"]

    asyncio.run(scenario())


def test_answers_expire_and_the_cache_is_bounded() -> None:
    async def scenario() -> None:
        clock = _Clock()
        head = _FakeHead({"gone": 404, "down": None, "locked": 403, "moved": 301, "sick": 500})
        check = BucketCheck(head, ttl_s=60, missing_ttl_s=5, max_buckets=3, clock=clock)
        for bucket in ("locked", "moved", "sick", "down"):
            await check.require(bucket)  # accepted: 403, 301, 500, no answer
        assert len(check) == 3  # "locked" was forgotten first
        head.calls.clear()
        await check.require("locked")
        assert head.calls == ["locked"]
        with pytest.raises(NoSuchBucket):
            await check.require("gone")
        clock.now += 4
        with pytest.raises(NoSuchBucket):
            await check.require("gone")  # cached
        assert head.calls.count("gone") == 1
        head.statuses["gone"] = 200  # created elsewhere
        clock.now += 2
        await check.require("gone")  # the expired 404 is asked again, and waited for
        assert head.calls.count("gone") == 2
        # An expired positive answer lets the write through and is refreshed behind it.
        head.statuses["gone"] = 404
        clock.now += 61
        head.gate.clear()
        await check.require("gone")
        await asyncio.sleep(0)  # the refresh starts
        assert head.calls.count("gone") == 3
        head.gate.set()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        with pytest.raises(NoSuchBucket):
            await check.require("gone")
        await check.close()

    asyncio.run(scenario())


def test_a_client_gone_does_not_cancel_the_check_others_wait_for() -> None:
    async def scenario() -> None:
        head = _FakeHead({})
        check = BucketCheck(head, ttl_s=60, missing_ttl_s=5)
        head.gate.clear()
        first = asyncio.ensure_future(check.require("a"))
        second = asyncio.ensure_future(check.require("a"))
        await asyncio.sleep(0)
        first.cancel()
        head.gate.set()
        await second
        assert head.calls == ["a"]
        await check.require("a")
        assert head.calls == ["a"]

    asyncio.run(scenario())


def _trickling_server(stop: threading.Event) -> tuple[socket.socket, threading.Thread]:
    """A loopback HTTP server that answers a 200 one header byte every 0.1 s for 20 s: each
    read gets data in time, only an overall deadline stops waiting for it."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.recv(65536)
            connection.sendall(b"HTTP/1.1 200 OK\r\nx-slow: ")
            for _ in range(200):
                if stop.wait(0.1):
                    return
                try:
                    connection.sendall(b"a")
                except OSError:
                    return  # the client gave up
            connection.sendall(b"\r\ncontent-length: 0\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener, thread


def test_the_check_has_one_overall_deadline() -> None:
    """``upstream.bucket_check_timeout_s`` bounds the whole HeadBucket, not each read: an
    upstream that answers a byte at a time does not hold a write past it."""
    stop = threading.Event()
    listener, thread = _trickling_server(stop)
    port = listener.getsockname()[1]
    forwarder = Forwarder(
        UpstreamConfig(endpoint_url=f"http://127.0.0.1:{port}"), Credentials("key", "secret")
    )

    async def scenario() -> int | None:
        try:
            return await head_bucket(forwarder, "b", timeout_s=0.5)
        finally:
            await forwarder.aclose()

    try:
        assert asyncio.run(scenario()) is None  # no answer in time (old code: 200, 20 s on)
    finally:
        stop.set()
        thread.join()
        listener.close()


def test_a_fresh_positive_answer_is_known_without_waiting() -> None:
    async def scenario() -> None:
        clock = _Clock()
        check = BucketCheck(_FakeHead({"gone": 404}), ttl_s=60, missing_ttl_s=5, clock=clock)
        assert not check.accepts("b")  # nothing known yet
        await check.require("b")
        assert check.accepts("b")
        with pytest.raises(NoSuchBucket):
            await check.require("gone")
        assert not check.accepts("gone")
        clock.now += 61
        assert not check.accepts("b")  # expired: the awaited path refreshes it
        check.missing("b")  # an upload found it missing
        assert not check.accepts("b")
        with pytest.raises(NoSuchBucket):
            await check.require("b")
        await check.close()

    asyncio.run(scenario())
