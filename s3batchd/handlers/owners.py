"""The owner of batched objects: the ``Owner`` of listings and of GetObjectAcl, and the bucket's
owner a ``bucket-owner-full-control`` grant names.

ListObjects (v1) and ListObjectsV2 with ``fetch-owner=true`` give every object its owner, and
GetObjectAcl names it. A batched object is held in a tar the daemon wrote, so its owner is the
one the bucket reports for the daemon's objects: read from the bucket's listing of one batch
object (under ``upstream.prefix``), or, before any batch reached the bucket, from the bucket's
ACL (its owner, who owns every object when ACLs are disabled, the S3 default since 2023). The
owner of the batch objects is kept once found; the bucket's owner stands in for it (and the
listing is asked again next time) until a batch is in the bucket, as the owner of the daemon's
objects may be another account. Both are kept for 4,096 buckets; a bucket where neither answers
gets no ``Owner`` for batched objects in a listing and a 503 for GetObjectAcl.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import TYPE_CHECKING

from s3batchd.forward.proxy import read_all
from s3batchd.s3.xml import local_name, parse_or_none

if TYPE_CHECKING:
    from s3batchd.forward.passthrough import Call

logger = logging.getLogger(__name__)

Owner = tuple[str, str]
"""``(ID, DisplayName)``."""

MAX_BUCKETS = 4096


class Owners:
    """The owner of the daemon's objects and the owner of the bucket, per bucket."""

    def __init__(self, max_buckets: int = MAX_BUCKETS) -> None:
        self._objects: OrderedDict[str, Owner] = OrderedDict()
        self._buckets: OrderedDict[str, Owner] = OrderedDict()
        self._max = max_buckets

    async def of(self, call: Call, bucket: str) -> Owner | None:
        """The owner batched objects in ``bucket`` are listed with, None if unknown."""
        owner = self._recall(self._objects, bucket)
        if owner is None:
            owner = await _ask(call, bucket, _batch_listing(call))
            if owner is None:  # no batch in the bucket yet: asked again next time
                return await self.of_bucket(call, bucket)
            self._keep(self._objects, bucket, owner)
        return owner

    async def of_bucket(self, call: Call, bucket: str) -> Owner | None:
        """The owner of ``bucket`` (its ACL's ``Owner``), None if unknown."""
        owner = self._recall(self._buckets, bucket)
        if owner is None:
            owner = await _ask(call, bucket, [("acl", "")])
            if owner is not None:
                self._keep(self._buckets, bucket, owner)
        return owner

    def _recall(self, known: OrderedDict[str, Owner], bucket: str) -> Owner | None:
        owner = known.get(bucket)
        if owner is not None:
            known.move_to_end(bucket)
        return owner

    def _keep(self, known: OrderedDict[str, Owner], bucket: str, owner: Owner) -> None:
        known[bucket] = owner
        while len(known) > self._max:
            known.popitem(last=False)


def _batch_listing(call: Call) -> list[tuple[str, str]]:
    return [
        ("list-type", "2"),
        ("prefix", call.settings.upstream.prefix),
        ("max-keys", "1"),
        ("fetch-owner", "true"),
    ]


async def _ask(call: Call, bucket: str, query: list[tuple[str, str]]) -> Owner | None:
    """The first ``Owner`` element of the bucket's answer to a GET with ``query``."""
    answer = await call.forwarder.send("GET", bucket, "", query, {})
    body = await read_all(answer)
    if answer.status_code != 200:
        logger.info("GET s3://%s?%s for an owner: %d", bucket, query[0][0], answer.status_code)
        return None
    return owner_in(body)


def owner_in(body: bytes) -> Owner | None:
    """The first ``Owner`` (ID, DisplayName) in an S3 XML document."""
    root = parse_or_none(body)
    if root is None:
        return None
    for node in root.iter():
        if local_name(node.tag) == "Owner":
            fields = {local_name(child.tag): child.text or "" for child in node}
            if fields.get("ID"):
                return fields["ID"], fields.get("DisplayName", "")
    return None
