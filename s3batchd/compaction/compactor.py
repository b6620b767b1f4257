"""One compaction pass over a bucket (``s3batchd compact``): take the lease, finish what an
earlier pass left (a tar whose index was never written, replaced batches past their grace
period), survey the indexes, delete the batches with nothing left to carry and rewrite the
batches the rules choose (with the tombstones and updates that still hide or name something:
compaction/tombstones.py), release the lease.

Crash-safe and idempotent: the index of the new batch is its commit marker. Before it exists
the old batches are authoritative (a new tar without an index is deleted by the next pass,
named in the lease as ``writing``); once it exists the new batch is (the old ones are
``replaced``, left out of every later survey, and deleted after ``compaction.grace_s``, tar
before index). A batch whose own replaced batches are not deleted yet is not rewritten again,
so a ``replaces`` list never has to be carried from one compacted batch to the next.

A holder that lost its lease writes no index and deletes nothing: it proves the lease
immediately before each index (a renewal) and before each delete (``CompactionLease.prove``),
and keeps it renewed while a tar is written (``lease.Heartbeat``); docs/compaction.md, "A
holder that lost its lease".
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from botocore.exceptions import ClientError

from s3batchd.compaction.lease import (
    CompactionLease,
    Heartbeat,
    Lease,
    verify_conditional_writes,
)
from s3batchd.compaction.pglease import AdvisoryLease
from s3batchd.compaction.rewrite import Source, Written, delete_batch, write_batch
from s3batchd.compaction.survey import (
    BatchState,
    Listed,
    Prices,
    Rules,
    Survey,
    monthly_storage_usd,
    should_rewrite,
    survey,
)
from s3batchd.compaction.tombstones import BucketView, Travelling
from s3batchd.index import COMPACTOR_HOST, INDEX_SUFFIX, WriterId, index_key, new_batch_id, tar_key
from s3batchd.reader import ReadStats, load_index
from s3batchd.spool.files import TMP_DIR
from s3batchd.spool.scratch import sweep

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import ObjectTypeDef

    from s3batchd.config import Settings

logger = logging.getLogger(__name__)

#: Index GETs in flight while surveying.
_SURVEY_THREADS = 8


@dataclass(slots=True)
class Chosen:
    """A batch the rules chose, and why (``erase`` or ``dead``)."""

    batch: BatchState
    reason: str


@dataclass(slots=True)
class PassReport:
    """What a pass found and did (or, with ``dry_run``, would do)."""

    dry_run: bool
    survey: Survey | None = None
    chosen: list[Chosen] = field(default_factory=list)
    written: list[Written] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    """Replaced batches deleted (dry run: due for deletion)."""
    orphans: list[str] = field(default_factory=list)
    """Tars of compacted batches an earlier pass never finished, deleted."""
    emptied: list[str] = field(default_factory=list)
    """Batches of dead objects and droppable tombstones and updates only, deleted outright
    (dry run: due for deletion; compaction/tombstones.py)."""
    tombstones_dropped: int = 0
    """Tombstones of the rewritten batches not carried into the new ones (dry run: would be),
    those of ``emptied`` batches included."""
    updates_dropped: int = 0
    """Attribute updates likewise."""
    requests: dict[str, int] = field(
        default_factory=lambda: {"GET": 0, "PUT": 0, "LIST": 0, "DELETE": 0}
    )
    saved_per_month_usd: float = 0.0
    dead_per_month_usd: float = 0.0
    """What the dead bytes of the current batches cost to store per month."""
    oldest_death_age_s: float | None = None
    """Seconds since the longest-dead object still in the bucket died (None: none)."""

    @property
    def live_bytes(self) -> int:
        """Live object bytes in the chosen batches (rewritten)."""
        return sum(c.batch.live_bytes for c in self.chosen)

    @property
    def dead_bytes(self) -> int:
        """Dead object bytes in the chosen batches (dropped)."""
        return sum(c.batch.dead_bytes for c in self.chosen)


def _absent(exc: ClientError) -> bool:
    """Whether a HEAD failed because the object is not there."""
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return status == 404 or exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey")


def rules_of(settings: Settings) -> Rules:
    """The rewrite rules of ``settings``."""
    config = settings.compaction
    prices = Prices(
        storage_gb_month=config.storage_price_per_gb_month_usd,
        get_per_1000=config.get_price_per_1000_usd,
        put_per_1000=settings.metrics.put_price_per_1000_usd,
    )
    return Rules(
        min_dead_ratio=config.min_dead_ratio,
        payback_days=config.payback_days,
        erase_within_s=config.erase_within_s,
        prices=prices,
    )


@dataclass
class Compactor:
    """Runs passes over one bucket with one client and the daemon's settings."""

    client: S3Client
    bucket: str
    settings: Settings
    writer: WriterId = field(default_factory=lambda: WriterId.generate(COMPACTOR_HOST))
    _sequence: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def prefix(self) -> str:
        """Where the batches are (``upstream.prefix``)."""
        return self.settings.upstream.prefix

    @property
    def tmp_dir(self) -> Path:
        """Where new tars are built: the spool's ``_tmp/`` (``spool/scratch.py``)."""
        return self.settings.spool.dir / TMP_DIR

    def run(
        self,
        *,
        dry_run: bool = False,
        progress: Callable[[int], None] | None = None,
        on_written: Callable[[Written], None] | None = None,
    ) -> PassReport:
        """One pass; ``progress`` is called with the objects of each batch rewritten,
        ``on_written`` with each new batch once its index is written, before any batch it
        replaces is deleted (the daemon's catalog learns the new places there), and with each
        compacted batch of an earlier pass before the batches it replaces are deleted (that
        pass may have died before its ``on_written``; only its id and tar are given then).

        Raises:
            LeaseHeld: another compactor holds the lease.
            CompactionError: the upstream does not honour conditional writes.
            CatalogUnavailable: the PostgreSQL lock could not be asked for.
        """
        report = PassReport(dry_run=dry_run)
        if dry_run:  # reads only: no lease, no probe object
            self._pass(report, None, progress, None)
            return report
        lease = self._lease(report)
        lease.take()
        try:
            self._pass(report, lease, progress, on_written)
        finally:
            lease.release()
            report.requests["PUT"] += lease.puts
        return report

    def _lease(self, report: PassReport) -> CompactionLease:
        """The PostgreSQL advisory lock with ``catalog.backend = "postgres"``, else the lease
        object, once the upstream has shown it honours the conditional writes it needs."""
        catalog = self.settings.catalog
        if catalog.backend == "postgres":
            return AdvisoryLease(
                catalog.dsn.get_secret_value(),
                self.bucket,
                self.prefix,
                owner=str(self.writer),
                timeout_s=catalog.postgres_timeout_s,
            )
        verify_conditional_writes(self.client, self.bucket, self.prefix)
        report.requests["PUT"] += 2
        report.requests["DELETE"] += 1
        return Lease(
            self.client,
            self.bucket,
            self.prefix,
            owner=str(self.writer),
            duration_s=self.settings.compaction.lease_s,
        )

    def _pass(
        self,
        report: PassReport,
        lease: CompactionLease | None,
        progress: Callable[[int], None] | None,
        on_written: Callable[[Written], None] | None,
    ) -> None:
        if lease is not None:
            sweep(self.tmp_dir)  # the scratch tars of compactors killed on this host
        if lease is not None and lease.found_writing:
            self._finish_orphan(report, lease.found_writing)
            lease.renew()  # finished: named no more
        now = time.time()
        listed = self._listed(report)
        found = survey(listed)
        view = BucketView.of(
            listed, horizon_s=self.settings.compaction.tombstone_horizon_s, now=now
        )
        report.survey = found
        oldest = found.oldest_death()
        report.oldest_death_age_s = None if oldest is None else max(now - oldest, 0.0)
        self._delete_due(report, lease, found, now, listed, on_written)
        rules = rules_of(self.settings)
        dead = sum(batch.dead_footprint for batch in found.batches)
        report.dead_per_month_usd = monthly_storage_usd(dead, rules.prices)
        emptied = self._choose(report, found, view, rules, now)
        emptied_bytes = self._delete_emptied(report, lease, emptied)
        saved = sum(c.batch.tar_size for c in report.chosen) + emptied_bytes
        for group in self._groups(report.chosen):
            documents = [c.batch.listed.document for c in group]
            travelling = view.travelling(documents, [e for c in group for e in c.batch.live])
            report.tombstones_dropped += travelling.tombstones_dropped
            report.updates_dropped += travelling.updates_dropped
            if lease is None:
                continue
            written = self._rewrite(report, lease, group, travelling)
            if on_written is not None:
                on_written(written)
            saved -= written.tar_size
            if progress is not None:
                progress(written.objects)
            if self.settings.compaction.grace_s == 0:
                for chosen in group:
                    self._delete(report, lease, chosen)
        if lease is None:  # dry run: the new tars would drop the dead members
            saved = sum(c.batch.dead_footprint for c in report.chosen) + emptied_bytes
        report.saved_per_month_usd = monthly_storage_usd(max(saved, 0), rules.prices)

    def _choose(
        self, report: PassReport, found: Survey, view: BucketView, rules: Rules, now: float
    ) -> list[BatchState]:
        """Put the batches to rewrite in ``report.chosen``; return those to delete outright
        (``BucketView.emptied``). A batch whose replaced batches are still there is left."""
        pending = {replaced.by for replaced in found.replaced}
        emptied: list[BatchState] = []
        for batch in found.batches:
            if batch.batch_id in pending:
                continue
            if view.emptied(batch, grace_s=self.settings.compaction.grace_s):
                emptied.append(batch)
                continue
            reason = should_rewrite(batch, rules, now)
            if reason is not None:
                report.chosen.append(Chosen(batch, reason))
        return emptied

    def _listed(self, report: PassReport) -> list[Listed]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix
        )
        items = []
        for page in pages:
            report.requests["LIST"] += 1
            items += [i for i in page.get("Contents", []) if i["Key"].endswith(INDEX_SUFFIX)]
        stats = ReadStats()

        def load(item: ObjectTypeDef) -> Listed:
            key = item["Key"]
            document = load_index(self.client, self.bucket, key, stats=stats)
            return Listed(key, item["LastModified"].timestamp(), document)

        with ThreadPoolExecutor(_SURVEY_THREADS, thread_name_prefix="compaction") as pool:
            listed = list(pool.map(load, items))
        report.requests["GET"] += stats.requests
        return listed

    def _finish_orphan(self, report: PassReport, batch_id: str) -> None:
        """A previous holder died while writing ``batch_id``: without its index the tar is
        not a batch; delete it, and abort the multipart upload of it the holder left open
        (with its index the batch is committed: nothing to do). Only an index known absent
        (404) makes the tar an orphan: on another failure of the lookup the error is raised
        (the batch stays named in the lease for the next pass)."""
        report.requests["GET"] += 1
        try:
            self.client.head_object(Bucket=self.bucket, Key=index_key(self.prefix, batch_id))
        except ClientError as exc:
            if not _absent(exc):
                raise
            orphan = tar_key(self.prefix, batch_id)
            self._abort_uploads(report, orphan)
            self.client.delete_object(Bucket=self.bucket, Key=orphan)
            report.requests["DELETE"] += 1
            report.orphans.append(batch_id)
            logger.info("compaction: unfinished batch %s deleted", batch_id)

    def _abort_uploads(self, report: PassReport, key: str) -> None:
        """Abort every multipart upload open for exactly ``key``; an upstream that cannot
        list or abort them leaves them to the bucket's lifecycle rules (logged)."""
        try:
            answer = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=key)
            report.requests["LIST"] += 1
            for upload in answer.get("Uploads", []):
                if upload.get("Key") != key:
                    continue
                self.client.abort_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=upload["UploadId"]
                )
                report.requests["DELETE"] += 1
                logger.info("compaction: multipart upload of unfinished %s aborted", key)
        except ClientError as exc:
            logger.warning("compaction: multipart uploads of %s not aborted: %s", key, exc)

    def _delete_due(
        self,
        report: PassReport,
        lease: CompactionLease | None,
        found: Survey,
        now: float,
        listed: list[Listed],
        on_written: Callable[[Written], None] | None,
    ) -> None:
        """Delete the replaced batches whose grace period is over. Each compacted batch that
        replaces them goes to ``on_written`` first (again): the pass that wrote it may have
        died between its index and ``on_written``, and the catalogs must name it before the
        batches it replaces are gone."""
        grace = self.settings.compaction.grace_s
        documents = {item.document["batch_id"]: item.document for item in listed}
        learnt: set[str] = set()
        for replaced in found.replaced:
            if replaced.since > now - grace:
                continue
            if lease is not None and on_written is not None and replaced.by not in learnt:
                document = documents[replaced.by]
                tar = document["tar"]
                on_written(Written(replaced.by, tar["key"], tar["size"], 0, 0, 0))
                learnt.add(replaced.by)
            if lease is not None:
                lease.prove()  # a holder that lost the lease deletes nothing more
                delete_batch(
                    self.client,
                    bucket=self.bucket,
                    tar=replaced.tar_key,
                    index=replaced.index_key,
                )
                report.requests["DELETE"] += 2
            report.deleted.append(replaced.batch_id)

    def _delete_emptied(
        self, report: PassReport, lease: CompactionLease | None, batches: list[BatchState]
    ) -> int:
        """Delete (no lease, a dry run: count) the batches with nothing left to carry; their
        tar bytes."""
        for batch in batches:
            document = batch.listed.document
            report.tombstones_dropped += len(document.get("tombstones", ()))
            report.updates_dropped += len(document.get("updates", ()))
            report.emptied.append(batch.batch_id)
            if lease is None:
                continue
            lease.prove()
            delete_batch(
                self.client, bucket=self.bucket, tar=document["tar"]["key"], index=batch.listed.key
            )
            report.requests["DELETE"] += 2
        return sum(batch.tar_size for batch in batches)

    def _delete(self, report: PassReport, lease: CompactionLease, chosen: Chosen) -> None:
        lease.prove()
        tar = chosen.batch.listed.document["tar"]["key"]
        delete_batch(self.client, bucket=self.bucket, tar=tar, index=chosen.batch.listed.key)
        report.requests["DELETE"] += 2
        report.deleted.append(chosen.batch.batch_id)

    def _groups(self, chosen: list[Chosen]) -> list[list[Chosen]]:
        """The chosen batches in groups whose live bytes fit one batch (``batch.max_bytes``):
        several small batches become one."""
        limit = self.settings.batch.max_bytes
        groups: list[list[Chosen]] = []
        size = 0
        for item in chosen:
            if not groups or size + item.batch.live_bytes > limit:
                groups.append([])
                size = 0
            groups[-1].append(item)
            size += item.batch.live_bytes
        return groups

    def _rewrite(
        self,
        report: PassReport,
        lease: CompactionLease,
        group: list[Chosen],
        travelling: Travelling,
    ) -> Written:
        batch_id = new_batch_id(self.writer, next(self._sequence))
        lease.renew(writing=batch_id)  # a crash before the index: the next holder cleans up
        sources = [
            Source(
                c.batch.batch_id,
                c.batch.listed.document["tar"]["key"],
                c.batch.live,
                c.batch.listed.document,
            )
            for c in group
        ]
        stats = ReadStats()
        # Renewed every third of lease_s while the tar is read and uploaded (minutes, perhaps).
        heartbeat = Heartbeat(lease, self.settings.compaction.lease_s / 3)

        def prove() -> None:
            # Immediately before the commit marker: had the lease ended during the tar, its
            # next holder may have deleted the tar as unfinished (docs/compaction.md).
            heartbeat.stop()
            lease.renew(writing=batch_id)

        with heartbeat:
            written = write_batch(
                self.client,
                bucket=self.bucket,
                prefix=self.prefix,
                batch_id=batch_id,
                sources=sources,
                stats=stats,
                tmp_dir=self.tmp_dir,
                upload=self.settings.upload,
                travelling=travelling,
                before_index=prove,
            )
        report.requests["GET"] += written.get_requests
        report.requests["PUT"] += written.put_requests
        report.written.append(written)
        lease.renew()
        return written
