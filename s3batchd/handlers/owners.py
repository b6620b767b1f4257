"""The ``Owner`` a listing shows for batched objects.

ListObjects (v1) and ListObjectsV2 with ``fetch-owner=true`` give every object its owner. A
batched object is held in a tar the daemon wrote, so its owner is the one the bucket reports
for the daemon's objects: read from the bucket's listing of one batch object (under
``upstream.prefix``), or, before any batch reached the bucket, from the bucket's ACL (its owner,
who owns every object when ACLs are disabled, the S3 default since 2023). Found once per bucket
and kept (4,096 buckets); a bucket where neither answers gets no ``Owner`` for batched objects.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import TYPE_CHECKING
from xml.etree import ElementTree

from s3batchd.forward.proxy import read_all
from s3batchd.s3.xml import local_name

if TYPE_CHECKING:
    from s3batchd.forward.passthrough import Call

logger = logging.getLogger(__name__)

Owner = tuple[str, str]
"""``(ID, DisplayName)``."""

MAX_BUCKETS = 4096


class Owners:
    """The owner of the daemon's objects, per bucket."""

    def __init__(self, max_buckets: int = MAX_BUCKETS) -> None:
        self._known: OrderedDict[str, Owner] = OrderedDict()
        self._max = max_buckets

    async def of(self, call: Call, bucket: str) -> Owner | None:
        """The owner batched objects in ``bucket`` are listed with, None if unknown."""
        owner = self._known.get(bucket)
        if owner is not None:
            self._known.move_to_end(bucket)
            return owner
        owner = await _ask(call, bucket, _batch_listing(call)) or await _ask(
            call, bucket, [("acl", "")]
        )
        if owner is not None:
            self._known[bucket] = owner
            while len(self._known) > self._max:
                self._known.popitem(last=False)
        return owner


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
    try:
        root = ElementTree.fromstring(body)  # noqa: S314  the bucket's answer, no entities
    except ElementTree.ParseError:
        return None
    for node in root.iter():
        if local_name(node.tag) == "Owner":
            fields = {local_name(child.tag): child.text or "" for child in node}
            if fields.get("ID"):
                return fields["ID"], fields.get("DisplayName", "")
    return None
