"""Writing a compacted batch: the live members of some batches read with coalesced ranged GETs
(the reader library), laid out in a new tar (each keeps its key, ETag, attributes and write
stamp), uploaded as every batch is (the tar, then its index, the commit marker), the index of
version 2 listing the batches it ``replaces``; and deleting replaced batches once their grace
period is over.

The tombstones and attribute updates of the replaced batches travel into the new batch too: a
tombstone may hide an older write of its key in a batch that is not rewritten, and an update
may name an object in another batch; but those that hide or name nothing any more are dropped
(``travelling``, decided by compaction/tombstones.py).
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from s3batchd.constants import TAR_BLOCK
from s3batchd.index import (
    IndexEntry,
    entries_from_index,
    index_key,
    render_index,
    tar_key,
)
from s3batchd.reader import Location, ReadStats, get_many
from s3batchd.spool.tarmember import encode_header, member_name, padded
from s3batchd.upload.batchupload import (
    INDEX_CONTENT_TYPE,
    META_BATCH_ID,
    META_TAR_CRC32,
    TAR_CONTENT_TYPE,
    crc32_header,
)
from s3batchd.upload.bucketmodes import tar_encryption

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from s3batchd.compaction.tombstones import Travelling

logger = logging.getLogger(__name__)

#: A tar ends with two zero blocks and is padded to whole records (``tarfile``'s RECORDSIZE).
_RECORD = 20 * TAR_BLOCK


@dataclass(frozen=True, slots=True)
class Source:
    """One batch to rewrite: its id, its tar, its live objects, and its index document."""

    batch_id: str
    tar_key: str
    live: Sequence[Mapping[str, Any]]
    document: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Written:
    """A compacted batch in the bucket."""

    batch_id: str
    tar_key: str
    tar_size: int
    objects: int
    get_requests: int
    put_requests: int


def build_tar(entries: list[IndexEntry], datas: list[bytes]) -> tuple[bytes, list[IndexEntry]]:
    """The tar of ``entries`` (objects with their ``datas``, then tombstones and updates
    without data) and the entries at their new places."""
    parts: list[bytes] = []
    placed: list[IndexEntry] = []
    offset = 0
    for n, entry in enumerate(entries):
        data = datas[n] if n < len(datas) else b""
        name = member_name(entry.record.key, n)
        header = encode_header(entry.record, name)
        offset += len(header)
        placed.append(IndexEntry(entry.record, name, offset))
        parts += [header, data, bytes(padded(len(data)) - len(data))]
        offset += padded(len(data))
    end = offset + 2 * TAR_BLOCK
    parts.append(bytes(2 * TAR_BLOCK + (-end % _RECORD)))
    return b"".join(parts), placed


def write_batch(
    client: S3Client,
    *,
    bucket: str,
    prefix: str,
    batch_id: str,
    sources: Sequence[Source],
    stats: ReadStats,
    travelling: Travelling | None = None,
) -> Written:
    """Read the live objects of ``sources``, upload the compacted batch ``batch_id`` (tar,
    then index) and return it, with the tombstones and updates of ``travelling`` (None: all
    of the sources'). Raises the reader's errors and botocore's."""
    locations = [
        Location.from_index_entry(bucket, source.tar_key, entry)
        for source in sources
        for entry in source.live
    ]
    before = stats.requests
    datas = get_many(client, locations, stats=stats)
    gets = stats.requests - before
    carried = {
        "objects": [entry for source in sources for entry in source.live],
        "tombstones": [t for s in sources for t in s.document.get("tombstones", ())],
        "updates": [u for s in sources for u in s.document.get("updates", ())],
    }
    if travelling is not None:
        carried.update(tombstones=travelling.tombstones, updates=travelling.updates)
    entries = entries_from_index(carried)
    tar, placed = build_tar(entries, datas)
    new_tar = tar_key(prefix, batch_id)
    index = render_index(
        bucket=bucket,
        batch_id=batch_id,
        tar_key=new_tar,
        tar_size=len(tar),
        entries=placed,
        replaces=[source.batch_id for source in sources],
    )
    # As the uploader writes a batch: the tar encrypted as strongly as its most demanding
    # member asked, the index (keys and metadata) as the tar; If-None-Match, as batch ids are
    # unique; the tar first, the index being the batch's commit marker (docs/index-format.md).
    encryption = tar_encryption(entry.record.headers for entry in placed)
    crc = f"{zlib.crc32(tar):08x}"
    client.put_object(
        Bucket=bucket,
        Key=new_tar,
        Body=tar,
        ContentType=TAR_CONTENT_TYPE,
        Metadata={META_BATCH_ID: batch_id, META_TAR_CRC32: crc},
        IfNoneMatch="*",
        ChecksumCRC32=crc32_header(crc),
        **encryption,
    )
    client.put_object(
        Bucket=bucket,
        Key=index_key(prefix, batch_id),
        Body=index,
        ContentType=INDEX_CONTENT_TYPE,
        Metadata={META_BATCH_ID: batch_id},
        IfNoneMatch="*",
        **encryption,
    )
    logger.info(
        "compaction: batch %s written (%d objects, %d bytes) replacing %s",
        batch_id,
        len(locations),
        len(tar),
        ", ".join(source.batch_id for source in sources),
    )
    return Written(batch_id, new_tar, len(tar), len(locations), gets, 2)


def delete_batch(client: S3Client, *, bucket: str, tar: str, index: str) -> None:
    """Delete a replaced batch: its tar, then its index (while the index is there, a later
    pass knows the batch is still to delete; a tar never stays without one)."""
    client.delete_object(Bucket=bucket, Key=tar)
    client.delete_object(Bucket=bucket, Key=index)
    logger.info("compaction: replaced batch %s deleted", index)
