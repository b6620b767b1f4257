"""Handlers with typed fakes: dispatch, the forwarding handlers and a batched PUT read back,
driven through ``dispatch.serve`` with a ``Daemon`` whose way to the bucket is a fake
``Upstream`` (it records what it is asked and answers from memory), a real spool in a
temporary directory, no uvicorn, no S3. The end-to-end suites check the same paths against
SeaweedFS."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter
from starlette.requests import Request
from starlette.types import Message, Scope

from s3batchd.batching.pipeline import Pipeline
from s3batchd.concurrency import Threads
from s3batchd.config import Settings
from s3batchd.errors import AccessDenied
from s3batchd.forward.buckets import BucketCheck
from s3batchd.forward.daemon import Daemon, Upstream
from s3batchd.forward.proxy import Query
from s3batchd.handlers.dispatch import serve
from s3batchd.handlers.owners import Owners
from s3batchd.s3.auth import Authenticator
from s3batchd.s3.stall import BodyPace
from s3batchd.spool.uploads import UploadStore
from s3batchd.upload.bucketmodes import BucketMode, BucketModes


@dataclass(frozen=True)
class Sent:
    """One request the fake bucket was sent."""

    method: str
    bucket: str
    key: str
    query: Query
    headers: dict[str, str]


@dataclass
class FakeBucket:
    """An ``Upstream`` answering every request with ``status`` and ``body``."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    sent: list[Sent] = field(default_factory=list)

    async def send(
        self,
        method: str,
        bucket: str,
        key: str,
        query: Query,
        headers: dict[str, str],
        body: bytes | AsyncIterable[bytes] = b"",
        length: int | None = None,
        payload_hash: str = "UNSIGNED-PAYLOAD",
        *,
        timeout_s: float | None = None,
    ) -> httpx.Response:
        self.sent.append(Sent(method, bucket, key, query, headers))
        # Streaming, like an answer of the real forwarder.
        return httpx.Response(self.status, headers=self.headers, stream=httpx.ByteStream(self.body))

    async def aclose(self) -> None:
        return None


def _typed(upstream: FakeBucket) -> Upstream:
    return upstream  # mypy: the fake implements the protocol the handlers use


@dataclass
class Lookups:
    """Bucket-mode lookups and HeadBuckets asked of the fake bucket."""

    modes: list[str] = field(default_factory=list)
    heads: list[str] = field(default_factory=list)

    def mode(self, bucket: str) -> BucketMode:
        self.modes.append(bucket)
        return BucketMode()

    async def head(self, bucket: str) -> int | None:
        self.heads.append(bucket)
        return 200


@pytest.fixture
def threads() -> Iterator[Threads]:
    pools = Threads()
    yield pools
    pools.close()


def make_daemon(
    tmp_path: Path, bucket: FakeBucket, lookups: Lookups, threads: Threads, **sections: object
) -> Daemon:
    settings = Settings.model_validate(
        {
            "spool": {"dir": str(tmp_path / "spool")},
            "upstream": {"endpoint_url": "http://127.0.0.1:9"},  # never dialled: the fake
            **sections,
        }
    )
    client = boto3.client(
        "s3",
        endpoint_url="http://127.0.0.1:9",
        region_name="us-east-1",
        aws_access_key_id="k",
        aws_secret_access_key="s",
    )
    return Daemon(
        settings=settings,
        pipeline=Pipeline(settings, client=client, threads=threads),
        forwarder=_typed(bucket),
        buckets=BucketCheck(lookups.head, ttl_s=300, missing_ttl_s=5),
        bucket_modes=BucketModes(lookups.mode, threads=threads, refresh_s=300),
        uploads=UploadStore(settings.spool.dir, sync=False, threads=threads),
        owners=Owners(),
        authenticator=Authenticator(settings.auth),
        body_pace=BodyPace.of(settings.server),
        received_bytes=Counter("received", "bytes", registry=CollectorRegistry()),
    )


def scope_of(method: str, path: str, query: bytes = b"", body: bytes = b"") -> Scope:
    return {
        "type": "http",
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1:9000")]
        + ([(b"content-length", str(len(body)).encode())] if body else []),
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 9000),
        "state": {},
    }


async def answer(
    daemon: Daemon, method: str, path: str, query: bytes = b"", body: bytes = b""
) -> tuple[int, bytes]:
    """Serve one request as the S3 front would; the status and body sent to the client."""
    scope = scope_of(method, path, query, body)
    received: list[bool] = []

    async def receive() -> Message:
        if received:  # the body was read: the client stays connected
            await asyncio.Event().wait()
        received.append(True)
        return {"type": "http.request", "body": body, "more_body": False}

    response = await serve(daemon, Request(scope, receive), "0123456789ABCDEF")
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    await response(scope, receive, send)
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], body


def test_a_read_of_a_key_the_daemon_does_not_hold_is_the_buckets(
    tmp_path: Path, threads: Threads
) -> None:
    bucket = FakeBucket(body=b"from the bucket", headers={"etag": '"abc"'})
    daemon = make_daemon(tmp_path, bucket, Lookups(), threads)
    status, body = asyncio.run(answer(daemon, "GET", "/bkt/some/key"))
    assert (status, body) == (200, b"from the bucket")
    assert [(s.method, s.bucket, s.key, s.query) for s in bucket.sent] == [
        ("GET", "bkt", "some/key", [])
    ]


def test_an_operation_passthrough_does_not_allow_never_reaches_the_bucket(
    tmp_path: Path, threads: Threads
) -> None:
    bucket = FakeBucket()
    daemon = make_daemon(
        tmp_path, bucket, Lookups(), threads, passthrough={"operations": ["PutObject"]}
    )
    with pytest.raises(AccessDenied, match="GetBucketSubresource is not forwarded"):
        asyncio.run(answer(daemon, "GET", "/bkt", b"acl"))
    assert bucket.sent == []


def test_a_bucket_created_upstream_is_asked_about_again(tmp_path: Path, threads: Threads) -> None:
    lookups = Lookups()
    daemon = make_daemon(tmp_path, FakeBucket(), lookups, threads)

    async def scenario() -> None:
        await daemon.buckets.require("bkt")
        assert await daemon.bucket_modes.get("bkt") == BucketMode()
        assert daemon.buckets.accepts("bkt")
        status, _ = await answer(daemon, "PUT", "/bkt")  # CreateBucket, forwarded
        assert status == 200
        # What the daemon knew of the bucket is dropped: asked again at the next write.
        assert not daemon.buckets.accepts("bkt")
        await daemon.buckets.require("bkt")
        await daemon.bucket_modes.get("bkt")
        await daemon.bucket_modes.close()

    asyncio.run(scenario())
    assert lookups.heads == ["bkt", "bkt"]
    assert lookups.modes == ["bkt", "bkt"]


def test_a_refused_bucket_change_keeps_what_the_daemon_knew(
    tmp_path: Path, threads: Threads
) -> None:
    lookups = Lookups()
    daemon = make_daemon(tmp_path, FakeBucket(status=403), lookups, threads)

    async def scenario() -> None:
        await daemon.buckets.require("bkt")
        status, _ = await answer(daemon, "PUT", "/bkt", b"versioning")
        assert status == 403
        assert daemon.buckets.accepts("bkt")

    asyncio.run(scenario())
    assert lookups.heads == ["bkt"]


def test_a_put_is_batched_and_read_back_without_the_bucket(
    tmp_path: Path, threads: Threads
) -> None:
    bucket = FakeBucket(status=500)  # any request that reached the bucket would fail
    lookups = Lookups()
    daemon = make_daemon(tmp_path, bucket, lookups, threads, spool={"durability": "none"})

    async def scenario() -> tuple[int, int, bytes]:
        put, _ = await answer(daemon, "PUT", "/bkt/batched/key", body=b"batched bytes")
        status, body = await answer(daemon, "GET", "/bkt/batched/key")
        await daemon.bucket_modes.close()
        await daemon.pipeline.batcher.close()
        return put, status, body

    assert asyncio.run(scenario()) == (200, 200, b"batched bytes")
    assert bucket.sent == []
    assert lookups.heads == ["bkt"]  # the bucket's existence, asked once (HeadBucket)
