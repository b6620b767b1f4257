"""Listings through the daemon: the daemon's own batch objects (tars and indexes under
``upstream.prefix``) are hidden unless the listing asks for that prefix."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.awscli import aws
from tests.batches import indexed_objects, keys
from tests.conftest import Daemon, DaemonFactory, wait_for

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

#: Written through the daemon (batched): around the batch prefix in key order.
BATCHED = ["a/1", "r-key", "s3batchd-not/x", "s3batchd.txt", "t/2"]
#: Written to the bucket directly (not batched).
DIRECT = ["direct/x", "s3batchd0", "zz-direct"]


def _populate(daemon: Daemon, s3: S3Client, bucket: str) -> list[str]:
    """The keys a client sees: batched and direct ones (batches uploaded)."""
    client = daemon.client()
    for key in BATCHED:
        client.put_object(Bucket=bucket, Key=key, Body=key.encode())
    for key in DIRECT:
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode())
    wait_for(lambda: indexed_objects(s3, bucket) == len(BATCHED))
    assert any(k.startswith("s3batchd/") for k in keys(s3, bucket))
    return sorted(BATCHED + DIRECT)


def _v2(client: S3Client, bucket: str, **params: Any) -> tuple[list[str], list[str]]:
    found: list[str] = []
    prefixes: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, **params):
        found.extend(item["Key"] for item in page.get("Contents", []))
        prefixes.extend(item["Prefix"] for item in page.get("CommonPrefixes", []))
    return found, prefixes


def _v1(client: S3Client, bucket: str, **params: Any) -> tuple[list[str], list[str]]:
    found: list[str] = []
    prefixes: list[str] = []
    for page in client.get_paginator("list_objects").paginate(Bucket=bucket, **params):
        found.extend(item["Key"] for item in page.get("Contents", []))
        prefixes.extend(item["Prefix"] for item in page.get("CommonPrefixes", []))
    return found, prefixes


@pytest.mark.parametrize("page_size", [1, 2, 3, 1000])
def test_listings_hide_the_batch_objects(
    start_daemon: DaemonFactory, s3: S3Client, bucket: str, page_size: int
) -> None:
    """v1 and v2, with and without a delimiter, at every page size: the tars and indexes are
    not listed (nor their common prefix), and paging does not stop at a page of them."""
    daemon = start_daemon(batch={"linger_ms": 50})
    visible = _populate(daemon, s3, bucket)
    client = daemon.client()
    paging = {"PaginationConfig": {"PageSize": page_size}}
    for lister in (_v2, _v1):
        assert lister(client, bucket, **paging) == (visible, [])
        top = sorted({k.split("/")[0] + "/" for k in visible if "/" in k})
        flat = [k for k in visible if "/" not in k]
        assert lister(client, bucket, Delimiter="/", **paging) == (flat, top)
        assert lister(client, bucket, Prefix="s3batchd", **paging) == (
            ["s3batchd-not/x", "s3batchd.txt", "s3batchd0"],
            [],
        )
    # Asked for by its prefix, the batch objects are listed.
    batch_keys = sorted(k for k in keys(s3, bucket) if k.startswith("s3batchd/"))
    assert _v2(client, bucket, Prefix="s3batchd/", **paging)[0] == batch_keys
    assert _v1(client, bucket, Prefix="s3batchd/2", **paging)[0] == batch_keys
    # And read by key: a tar through the daemon is the bucket's object.
    tar = next(k for k in batch_keys if k.endswith(".tar"))
    assert client.get_object(Bucket=bucket, Key=tar)["Body"].read() == (
        s3.get_object(Bucket=bucket, Key=tar)["Body"].read()
    )


def test_list_batch_objects_shows_them_always(
    start_daemon: DaemonFactory, s3: S3Client, bucket: str
) -> None:
    daemon = start_daemon(batch={"linger_ms": 50}, upstream={"list_batch_objects": True})
    visible = _populate(daemon, s3, bucket)
    batch_keys = [k for k in keys(s3, bucket) if k.startswith("s3batchd/")]
    listed, _ = _v2(daemon.client(), bucket)
    assert listed == sorted(visible + batch_keys)


def test_aws_s3_sync_through_the_daemon_downloads_no_batch(
    start_daemon: DaemonFactory, s3: S3Client, bucket: str, tmp_path: Path
) -> None:
    daemon = start_daemon(batch={"linger_ms": 50})
    visible = _populate(daemon, s3, bucket)
    target = tmp_path / "copy"
    aws(daemon.url, "s3", "sync", f"s3://{bucket}/", str(target), timeout=300)
    copied = sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file())
    assert copied == visible
    for key in visible:
        assert (target / key).read_bytes() == key.encode()


def test_a_forwarded_listing_pages_with_the_buckets_own_token(
    daemon: Daemon, s3: S3Client, bucket: str
) -> None:
    """Nothing batched under the prefix: the bucket's listing is relayed, and so is its
    continuation token, which the next page must take back to the bucket (it was refused
    as "incorrect": only the daemon's own tokens can be decoded)."""
    names = [f"direct/{n}" for n in range(5)]
    for key in names:
        s3.put_object(Bucket=bucket, Key=key, Body=b"x")
    daemon.client().put_object(Bucket=bucket, Key="batched/elsewhere", Body=b"x")
    listed, _ = _v2(daemon.client(), bucket, Prefix="direct/", PaginationConfig={"PageSize": 2})
    assert listed == names
