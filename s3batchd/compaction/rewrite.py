"""Writing a compacted batch: the live members of some batches read with coalesced ranged GETs
(the reader library), laid out in a new tar (each keeps its key, ETag, attributes and write
stamp), uploaded as every batch is (the tar, then its index, the commit marker), the index of
version 2 listing the batches it ``replaces``; and deleting replaced batches once their grace
period is over.

The tombstones and attribute updates of the replaced batches travel into the new batch too: a
tombstone may hide an older write of its key in a batch that is not rewritten, and an update
may name an object in another batch; but those that hide or name nothing any more are dropped
(``travelling``, decided by compaction/tombstones.py).

Memory stays bounded whatever the size of the batches: the live objects are read in ranges of
at most ``READ_SPAN`` bytes, ``READ_AHEAD`` of them ahead of the writing (longer objects
streamed in pieces), and the tar goes to a scratch file in the spool's ``_tmp/``
(:mod:`s3batchd.spool.scratch`, its CRC32 computed as it is written), from which
:class:`~s3batchd.upload.batchupload.BatchUpload` uploads it as it uploads a sealed batch (in
parts from ``upload.multipart_threshold_bytes``). The file is removed however the rewrite
ends; one left by a killed process is removed by the next pass (``scratch.sweep``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from s3batchd.compaction.survey import SPAN_BYTES
from s3batchd.constants import TAR_BLOCK
from s3batchd.errors import CompactionError
from s3batchd.index import (
    IndexEntry,
    entries_from_index,
    index_fragment,
    index_key,
    render_index,
    tar_key,
)
from s3batchd.reader import Location, ReadStats, iter_many
from s3batchd.records import SealedBatch
from s3batchd.spool.scratch import ScratchTar
from s3batchd.spool.tarmember import encode_header, member_name, padded
from s3batchd.upload.batchupload import (
    INDEX_CONTENT_TYPE,
    META_BATCH_ID,
    BatchUpload,
)
from s3batchd.upload.bucketmodes import tar_encryption
from s3batchd.upload.stats import UploadStats

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from s3batchd.compaction.tombstones import Travelling
    from s3batchd.config import UploadConfig

logger = logging.getLogger(__name__)

#: A tar ends with two zero blocks and is padded to whole records (``tarfile``'s RECORDSIZE).
_RECORD = 20 * TAR_BLOCK
#: Longest range of live objects read with one GET (a longer object is streamed): the span
#: the survey's cost of a rewrite counts GETs by.
READ_SPAN = SPAN_BYTES
#: Ranges fetched ahead of the tar being written: about (READ_AHEAD + 2) x READ_SPAN of object
#: data in memory at most.
READ_AHEAD = 4


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


def write_tar(
    out: ScratchTar, entries: Sequence[IndexEntry], datas: Iterator[tuple[int, Iterator[bytes]]]
) -> list[IndexEntry]:
    """Write the tar of ``entries`` to ``out`` and return the entries at their new places:
    the objects, each with the pieces of its data as ``datas`` gives them (``(position in
    entries, pieces)``, in order), then tombstones and updates, which have no data."""
    placed: list[IndexEntry] = []
    pending = next(datas, None)
    for n, entry in enumerate(entries):
        name = member_name(entry.record.key, n)
        out.write(encode_header(entry.record, name))
        placed.append(IndexEntry(entry.record, name, out.size))
        length = 0
        if pending is not None and pending[0] == n:
            for piece in pending[1]:
                out.write(piece)
                length += len(piece)
            pending = next(datas, None)
        if length != entry.record.size:  # its header says the size: never a shifted member
            raise CompactionError(f"{name}: {length} bytes read, {entry.record.size} expected")
        out.write(bytes(padded(length) - length))
    if pending is not None:
        raise CompactionError(f"object {pending[0]} read beyond the {len(entries)} entries")
    end = out.size + 2 * TAR_BLOCK
    out.write(bytes(2 * TAR_BLOCK + (-end % _RECORD)))
    return placed


def write_batch(
    client: S3Client,
    *,
    bucket: str,
    prefix: str,
    batch_id: str,
    sources: Sequence[Source],
    stats: ReadStats,
    tmp_dir: Path,
    upload: UploadConfig,
    travelling: Travelling | None = None,
    before_index: Callable[[], None] | None = None,
) -> Written:
    """Read the live objects of ``sources``, upload the compacted batch ``batch_id`` (tar,
    then index) and return it, with the tombstones and updates of ``travelling`` (None: all
    of the sources'). The tar is built in ``tmp_dir`` (the spool's ``_tmp/``) and uploaded
    with the ``upload`` settings. Raises the reader's errors, botocore's, and OSError from
    the scratch file.

    ``before_index`` is called between the tar and the index: the holder of the lease proves
    it still holds it there (``LeaseHeld`` if not). Whatever it raises, no index is written
    and the new tar is deleted: nothing names it, and no other writer uses its batch id
    (the lease's next holder may have cleaned up before the tar was complete)."""
    locations = [
        Location.from_index_entry(bucket, source.tar_key, entry)
        for source in sources
        for entry in source.live
    ]
    carried = {
        "objects": [entry for source in sources for entry in source.live],
        "tombstones": [t for s in sources for t in s.document.get("tombstones", ())],
        "updates": [u for s in sources for u in s.document.get("updates", ())],
    }
    if travelling is not None:
        carried.update(tombstones=travelling.tombstones, updates=travelling.updates)
    entries = entries_from_index(carried)
    new_tar = tar_key(prefix, batch_id)
    before = stats.requests
    uploads = UploadStats()
    with ScratchTar.create(tmp_dir, batch_id) as out:
        datas = iter_many(
            client,
            locations,
            max_concurrency=READ_AHEAD,
            max_span=READ_SPAN,
            stats=stats,
        )
        with closing(datas):
            placed = write_tar(out, entries, datas)
        fragments = tuple(index_fragment(entry) for entry in placed)
        sealed = SealedBatch(
            bucket=bucket,
            batch_id=batch_id,
            path=out.path,
            tar_key=new_tar,
            index_key=index_key(prefix, batch_id),
            size=out.size,
            records=len(placed),
            reason="compaction",
            index_fragments=fragments,
        )
        # As the uploader writes a batch: the tar encrypted as strongly as its most demanding
        # member asked, If-None-Match, in parts above the multipart threshold.
        BatchUpload(client, upload, uploads).tar(sealed, crc32=out.crc32)
    gets = stats.requests - before
    index = render_index(
        bucket=bucket,
        batch_id=batch_id,
        tar_key=new_tar,
        tar_size=sealed.size,
        fragments=list(fragments),
        replaces=[source.batch_id for source in sources],
    )
    if before_index is not None:
        try:
            before_index()
        except BaseException:
            _delete_unfinished(client, bucket, new_tar)
            raise
    # The index (keys and metadata) encrypted as the tar, written after it: the batch's commit
    # marker (docs/index-format.md).
    encryption = tar_encryption(entry.record.headers for entry in placed)
    client.put_object(
        Bucket=bucket,
        Key=sealed.index_key,
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
        sealed.size,
        ", ".join(source.batch_id for source in sources),
    )
    puts = sum(n for (operation, _), n in uploads.requests.items() if operation != "HeadObject")
    heads = sum(n for (operation, _), n in uploads.requests.items() if operation == "HeadObject")
    return Written(batch_id, new_tar, sealed.size, len(locations), gets + heads, puts + 1)


def _delete_unfinished(client: S3Client, bucket: str, key: str) -> None:
    """Delete the tar of a batch whose index will not be written (a failed delete is logged:
    the tar is then left, named by no index)."""
    try:
        client.delete_object(Bucket=bucket, Key=key)
    except Exception:
        logger.exception("compaction: unfinished tar %s not deleted", key)
    else:
        logger.warning("compaction: lease lost before the index of %s: tar deleted", key)


def delete_batch(client: S3Client, *, bucket: str, tar: str, index: str) -> None:
    """Delete a replaced batch: its tar, then its index (while the index is there, a later
    pass knows the batch is still to delete; a tar never stays without one)."""
    client.delete_object(Bucket=bucket, Key=tar)
    client.delete_object(Bucket=bucket, Key=index)
    logger.info("compaction: replaced batch %s deleted", index)
