"""Listings through the daemon."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tests.conftest import Daemon

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


def _v2(client: S3Client, bucket: str, **params: Any) -> tuple[list[str], list[str]]:
    found: list[str] = []
    prefixes: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, **params):
        found.extend(item["Key"] for item in page.get("Contents", []))
        prefixes.extend(item["Prefix"] for item in page.get("CommonPrefixes", []))
    return found, prefixes


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
