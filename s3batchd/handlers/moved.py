"""Where a batched key went when the tar its catalog entry names is gone: compaction moved it
into a new batch (or its delete erased it) after the grace period, before this daemon's catalog
learned the new batch (docs/compaction.md). Every read of a batched object's bytes (GetObject,
HeadObject, CopyObject and UploadPartCopy of a batched source) asks here once its tar answers
NoSuchKey.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from s3batchd.batching.pipeline import Pipeline
from s3batchd.catalog.store import CatalogEntry

logger = logging.getLogger(__name__)

#: Follow rounds a read waits for when the tar its catalog names is gone (a running round may
#: have listed before the compacted index was written: one more after it).
MOVED_ROUNDS = 2


@dataclass(frozen=True, slots=True)
class Moved:
    """Where a key is now."""

    entry: CatalogEntry | None
    """None: the key was deleted meanwhile."""

    @property
    def deleted(self) -> bool:
        """Whether the key is gone (deleted after it was batched)."""
        return self.entry is None


async def moved(pipeline: Pipeline, bucket: str, key: str, entry: CatalogEntry) -> Moved | None:
    """Where ``key``, whose catalog ``entry`` names a missing tar, is after follow rounds of its
    bucket run now, else after a search for the compacted index that replaces its batch
    (``upload/relocate.py``, once per missing batch; a daemon that does not follow the bucket
    goes there at once); None when the catalog still names the missing tar."""
    follower = pipeline.follower
    if follower is not None:
        for _ in range(MOVED_ROUNDS):
            await follower.catch_up(bucket)
            found = await pipeline.lookup(bucket, key)
            if found is None or found.tar_key != entry.tar_key:
                return _logged(bucket, key, Moved(found))
    await pipeline.relocator.relocate(bucket, entry.batch_id)
    found = await pipeline.lookup(bucket, key)
    if found is None or found.tar_key != entry.tar_key:
        return _logged(bucket, key, Moved(found))
    return None


def _logged(bucket: str, key: str, where: Moved) -> Moved:
    logger.info(
        "s3://%s/%s: %s",
        bucket,
        key,
        "deleted" if where.entry is None else f"moved to {where.entry.tar_key}",
    )
    return where
