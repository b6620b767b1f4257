"""The compaction pass inside the daemon (``compaction.enabled = true``): every
``compaction.interval_s``, one pass per bucket the daemon's catalog knows, each on a thread;
the index of each batch it writes goes into the daemon's catalogs (its SQLite one, and the
fleet's PostgreSQL one when configured) before any batch it replaces may be deleted, so its
reads follow the moved keys. A pass that finds the lease held (another daemon, or
``s3batchd compact``) is skipped until the next interval; any other failure is logged and the
loop goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from s3batchd.compaction.compactor import Compactor, rules_of
from s3batchd.compaction.rewrite import Written
from s3batchd.compaction.stats import CompactionStats
from s3batchd.concurrency import Pool, Threads
from s3batchd.errors import LeaseHeld
from s3batchd.reader import load_index
from s3batchd.tasks import log_death

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from s3batchd.catalog.postgres import PostgresCatalog
    from s3batchd.catalog.store import Catalog
    from s3batchd.config import Settings

logger = logging.getLogger(__name__)


class CompactionLoop:
    """One supervised task running passes; ``start`` and ``close`` are idempotent."""

    def __init__(
        self,
        settings: Settings,
        client: S3Client,
        catalog: Catalog,
        *,
        threads: Threads,
        shared: Callable[[], PostgresCatalog | None] = lambda: None,
    ) -> None:
        """``threads``: the process's pools; passes run on ``Pool.COMPACTION``."""
        self._threads = threads
        self._settings = settings
        self._client = client
        self._catalog = catalog
        self._shared = shared
        self._compactors: dict[str, Compactor] = {}
        self._task: asyncio.Task[None] | None = None
        self.stats = CompactionStats()
        """What the passes found and did (``/metrics``, ``s3batchd status``)."""

    def start(self) -> None:
        """Start the loop (the first pass after one interval)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="compaction")
            self._task.add_done_callback(log_death(logger, "compaction loop stopped"))

    async def close(self) -> None:
        """Stop the loop; a pass on its thread finishes its current request and is dropped
        (the next pass of any compactor finishes its work: docs/compaction.md, "Crashes")."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._settings.compaction.interval_s)
            for bucket in await self._threads.run(Pool.COMPACTION, self._catalog.buckets):
                await self.run_once(bucket)

    async def run_once(self, bucket: str) -> None:
        """One pass over ``bucket``; what it wrote goes into the catalogs."""
        compactor = self._compactors.get(bucket)
        if compactor is None:
            compactor = Compactor(self._client, bucket, self._settings)
            self._compactors[bucket] = compactor
        loop = asyncio.get_running_loop()

        def learn(written: Written) -> None:
            # On the pass's thread, before the replaced batches can be deleted.
            document = load_index(self._client, bucket, written.tar_key)
            self._catalog.put_index(bucket, document)
            shared = self._shared()
            if shared is not None:
                asyncio.run_coroutine_threadsafe(shared.put_index(bucket, document), loop).result()

        try:
            report = await self._threads.run(Pool.COMPACTION, compactor.run, on_written=learn)
        except LeaseHeld as exc:
            logger.info("compaction of s3://%s skipped: %s", bucket, exc)
            self.stats.not_done("skipped")
            return
        except Exception:
            logger.exception("compaction of s3://%s failed", bucket)
            self.stats.not_done("failed")
            return
        self.stats.record(bucket, report, rules_of(self._settings).prices)
        logger.info(
            "compaction of s3://%s: %d batches rewritten into %d, %d replaced deleted",
            bucket,
            len(report.chosen),
            len(report.written),
            len(report.deleted),
        )
