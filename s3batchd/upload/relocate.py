"""Where compaction moved the keys of a batch that is gone: a read found the tar its catalog
names deleted (docs/compaction.md), and no follow round taught the catalog the new place (the
daemon does not follow the bucket, ``catalog.follow = false``, or its rounds have not reached
it yet).

A compacted batch is written after the batches it replaces and its index names them
(``replaces``); index keys sort by the time their batch was opened
(``<prefix>YYYY/MM/DD/<batch id>.index.json``) and a compactor's batch ids carry the writer
``compactor-<random>`` (``index.COMPACTOR_HOST``). So the search lists the index keys from the
missing batch's time on (less ``catalog.follow_lookback_s``, for writers' clocks), GETs only the
compactors' indexes among them, and records into the catalog (``put_index``, which moves the
rows of the same writes) each one that replaces the missing batch, or a batch found replacing
it (a key compacted twice). When none does (compacted twice, and the first compacted batch
deleted as well), it records every compacted index found, as ``reindex`` would. Its cost: one
LIST per 1,000 keys written since the batch, one GET per compacted batch since (two in the
last case). It runs once per missing batch: the answer is remembered (the last
``REMEMBERED`` batches), and reads that find the same batch gone meanwhile wait for the search
in progress. A failed search is logged and not remembered (the next read tries again).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from s3batchd.concurrency import Pool, Threads
from s3batchd.errors import IndexFormatError
from s3batchd.index import (
    COMPACTOR_HOST,
    batch_created,
    batch_writer,
    index_batch_id,
    parse_index,
    replaced_batches,
)
from s3batchd.upload.follow import key_floor

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from s3batchd.index import IndexEntry

logger = logging.getLogger(__name__)

#: Missing batches whose search is remembered (a search costs LISTs: never one per read).
REMEMBERED = 10_000
#: Failures of a search that a later read may not meet: it is forgotten and run again then.
SEARCH_ERRORS = (ClientError, BotoCoreError, OSError, IndexFormatError, sqlite3.Error)


class IndexTarget(Protocol):
    """What the search needs of a catalog (``store.Catalog`` is one)."""

    def put_index(self, bucket: str, document: dict[str, Any]) -> list[IndexEntry]:
        """Record a checked index, moving the keys of the batches a compacted one replaces."""

    def close(self) -> None:
        """Close the connection."""


class Relocator:
    """Finds and records the compacted batches that replace missing ones."""

    def __init__(
        self,
        open_catalog: Callable[[], IndexTarget],
        client: S3Client,
        *,
        prefix: str,
        lookback_s: float,
        threads: Threads,
    ) -> None:
        """``open_catalog``: a connection of the search's own, opened at the first search
        (on a ``Pool.FOLLOW`` thread, where every search runs)."""
        self._open_catalog = open_catalog
        self._catalog: IndexTarget | None = None
        self._client = client
        self._prefix = prefix
        self._lookback_s = lookback_s
        self._threads = threads
        self._searches: OrderedDict[tuple[str, str], asyncio.Task[int]] = OrderedDict()
        """Searches by (bucket, missing batch): running, or done with their answer."""
        self.searches = 0
        """Searches run (each costs LISTs and GETs)."""

    async def relocate(self, bucket: str, batch_id: str) -> int:
        """Record every compacted index that replaces ``batch_id`` of ``bucket`` (directly or
        through another compacted batch); how many. The first call for a batch starts the
        search, every call gets its answer (a reader that leaves does not stop it)."""
        search = self._searches.get((bucket, batch_id))
        if search is None:
            search = asyncio.get_running_loop().create_task(
                self._run(bucket, batch_id), name=f"relocate {bucket} {batch_id}"
            )
            self._searches[bucket, batch_id] = search
            while len(self._searches) > REMEMBERED:
                self._searches.popitem(last=False)
        return await asyncio.shield(search)

    async def _run(self, bucket: str, batch_id: str) -> int:
        """The search on a thread; a failure is forgotten (the next read searches again)."""
        try:
            return await self._threads.run(Pool.FOLLOW, self._search, bucket, batch_id)
        except SEARCH_ERRORS as exc:
            self._searches.pop((bucket, batch_id), None)
            logger.warning(
                "no new place found for the keys of missing batch %s of s3://%s: %s",
                batch_id,
                bucket,
                exc,
            )
            return 0
        except BaseException:
            self._searches.pop((bucket, batch_id), None)
            raise

    def close(self) -> None:
        """Stop the searches in progress and close the search's catalog connection."""
        for search in self._searches.values():
            search.cancel()
        self._searches.clear()
        if self._catalog is not None:
            self._catalog.close()
            self._catalog = None

    def _search(self, bucket: str, batch_id: str) -> int:
        self.searches += 1
        since = batch_created(batch_id).timestamp() - self._lookback_s
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=self._prefix, StartAfter=self._prefix + key_floor(since)
        )
        gone = {batch_id}
        recorded: list[str] = []
        others: list[str] = []
        for page in pages:
            for item in page.get("Contents", []):
                document = self._compacted(bucket, item["Key"])
                if document is None:
                    continue
                if not gone.intersection(replaced_batches(document)):
                    others.append(item["Key"])
                    continue
                self._record(bucket, document)
                gone.add(document["batch_id"])
                recorded.append(document["batch_id"])
        if not recorded:
            # No index names it any more: compacted twice, the first compacted batch deleted
            # too. Every compacted batch since holds the live writes it had, as reindex would
            # record them (the catalog keeps the latest write of each key).
            for key in others:
                document = self._compacted(bucket, key)
                if document is not None:
                    self._record(bucket, document)
                    recorded.append(document["batch_id"])
        logger.info(
            "keys of missing batch %s of s3://%s: %s",
            batch_id,
            bucket,
            f"moved to {', '.join(recorded)}" if recorded else "no compacted batch replaces it",
        )
        return len(recorded)

    def _record(self, bucket: str, document: dict[str, Any]) -> None:
        if self._catalog is None:
            self._catalog = self._open_catalog()
        self._catalog.put_index(bucket, document)

    def _compacted(self, bucket: str, key: str) -> dict[str, Any] | None:
        """The index at ``key`` if it is a compactor's (None for any other key, or an index
        deleted meanwhile)."""
        batch_id = index_batch_id(key)
        if batch_id is None or not batch_writer(batch_id).startswith(f"{COMPACTOR_HOST}-"):
            return None
        try:
            body = self._client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None  # deleted after its grace period: replaced itself
            raise
        return parse_index(body, where=f"s3://{bucket}/{key}")
