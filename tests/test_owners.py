"""handlers/owners: the owner of batched objects (listings, GetObjectAcl) and of the bucket, with
a forwarder that answers as the bucket would (a fake of the one method used: ``send``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import TYPE_CHECKING, cast

import httpx
import pytest

from s3batchd.handlers.owners import Owners

if TYPE_CHECKING:
    from s3batchd.forward.passthrough import Call

pytestmark = pytest.mark.anyio

_NS = "http://s3.amazonaws.com/doc/2006-03-01/"


def _owner(owner_id: str) -> str:
    return f"<Owner><ID>{owner_id}</ID><DisplayName>{owner_id}-name</DisplayName></Owner>"


@dataclass
class FakeBucket:
    """The answers of one bucket: its ACL's owner, and the owner of its batch objects once one
    is there (None: the listing has no Contents)."""

    bucket_owner: str
    batch_owner: str | None = None
    asked: list[str] = field(default_factory=list)

    async def send(
        self, method: str, bucket: str, key: str, query: list[tuple[str, str]], headers: object
    ) -> httpx.Response:
        names = [name for name, _ in query]
        self.asked.append("acl" if "acl" in names else "list")
        if "acl" in names:
            body = f'<AccessControlPolicy xmlns="{_NS}">{_owner(self.bucket_owner)}'
            body += "<AccessControlList/></AccessControlPolicy>"
        else:
            contents = ""
            if self.batch_owner is not None:
                contents = (
                    f"<Contents><Key>s3batchd/x.tar</Key>{_owner(self.batch_owner)}</Contents>"
                )
            body = f'<ListBucketResult xmlns="{_NS}">{contents}</ListBucketResult>'
        return httpx.Response(200, content=body.encode())


def _call(bucket: FakeBucket) -> Call:
    settings = SimpleNamespace(upstream=SimpleNamespace(prefix="s3batchd/"))
    return cast("Call", SimpleNamespace(forwarder=bucket, settings=settings))


async def test_the_bucket_owner_stands_in_until_a_batch_is_in_the_bucket() -> None:
    """An ACL-enabled bucket of another account: before the first batch the daemon's objects
    are shown with the bucket's owner, after it with the owner of the batch objects (the old
    listing lookup kept the stand-in for good)."""
    bucket = FakeBucket(bucket_owner="bucket-account")
    owners = Owners()
    call = _call(bucket)
    assert await owners.of(call, "b") == ("bucket-account", "bucket-account-name")
    bucket.batch_owner = "daemon-account"  # the first batch is uploaded
    assert await owners.of(call, "b") == ("daemon-account", "daemon-account-name")
    assert await owners.of_bucket(call, "b") == ("bucket-account", "bucket-account-name")
    asked = len(bucket.asked)
    assert await owners.of(call, "b") == ("daemon-account", "daemon-account-name")
    assert len(bucket.asked) == asked  # found: kept, not asked again
    assert bucket.asked == ["list", "acl", "list"]  # the bucket's ACL asked once


async def test_owners_are_kept_for_a_bounded_number_of_buckets() -> None:
    bucket = FakeBucket(bucket_owner="owner", batch_owner="daemon")
    owners = Owners(max_buckets=2)
    call = _call(bucket)
    for name in ("a", "b", "a", "c"):  # "a" used again: "b" is the least recent
        await owners.of(call, name)
        await owners.of_bucket(call, name)
    assert bucket.asked == ["list", "acl"] * 3
    await owners.of(call, "a")
    await owners.of(call, "b")
    assert bucket.asked[6:] == ["list"]  # "a" kept, "b" dropped and asked again
