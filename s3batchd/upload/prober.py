"""The upstream probe behind ``/readyz``'s warnings and the ``s3batchd_upstream_up`` gauge.

Every ``upstream.probe_interval_s`` one round checks each bucket of a bounded set, one after
the other, with a client of its own that gives up after ``upstream.probe_timeout_s`` (one
attempt): the configured ``probe_buckets`` plus the ``probe_max_buckets`` buckets most
recently written to, each forgotten ``probe_forget_s`` after its last batch. The next round
starts ``probe_interval_s`` after this one ended, so rounds never overlap, and a daemon that
wrote one byte to each of 10,000 buckets still sends at most ``probe_max_buckets`` (plus the
configured ones) GETs per interval. Nothing is kept across a restart but the buckets of the
batches recovered from the spool.

What a round finds is a warning, never a reason to fail readiness: the spool absorbs an
outage of the upstream, and taking every pod out of its Services would not end it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

from s3batchd.concurrency import Pool, Threads
from s3batchd.tasks import log_death
from s3batchd.upload.upstream import ProbeResult, check

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from s3batchd.config import UpstreamConfig

logger = logging.getLogger(__name__)


class RecentBuckets:
    """Buckets by when a batch was last written to them: only the ``limit`` newest, and
    none written more than ``forget_s`` ago."""

    def __init__(self, *, limit: int, forget_s: float) -> None:
        self.limit = limit
        self.forget_s = forget_s
        self._written: dict[str, float] = {}
        """Bucket -> monotonic time of its last batch, oldest first (insertion order)."""

    def written(self, bucket: str, now: float | None = None) -> None:
        """A batch of ``bucket`` was written (sealed or recovered) at ``now``."""
        self._written.pop(bucket, None)
        self._written[bucket] = time.monotonic() if now is None else now
        while len(self._written) > self.limit:
            del self._written[next(iter(self._written))]

    def recent(self, now: float | None = None) -> list[str]:
        """The buckets still remembered at ``now``, the most recently written first."""
        cutoff = (time.monotonic() if now is None else now) - self.forget_s
        for bucket, when in list(self._written.items()):
            if when >= cutoff:
                break
            del self._written[bucket]
        return list(reversed(self._written))


class Prober:
    """Probes the upstream in a supervised task of its own, one round at a time."""

    def __init__(
        self,
        config: UpstreamConfig,
        client_factory: Callable[[], S3Client],
        *,
        note: Callable[[bool], None],
        threads: Threads,
    ) -> None:
        """``client_factory``: the probe's client, made at the first round; ``note``: told
        after each round whether S3 answered."""
        self.config = config
        self.buckets = RecentBuckets(limit=config.probe_max_buckets, forget_s=config.probe_forget_s)
        self.warnings: list[str] = []
        """What the last round found wrong, one line per bucket."""
        self._client_factory = client_factory
        self._client: S3Client | None = None
        self._note = note
        self._threads = threads
        self._task: asyncio.Task[None] | None = None

    def targets(self) -> list[str]:
        """The buckets the next round checks."""
        configured = list(self.config.probe_buckets)
        return configured + [b for b in self.buckets.recent() if b not in configured]

    async def round(self) -> list[str]:
        """Check every target once; remember and return the warnings (empty if fine)."""
        results: list[ProbeResult] = []
        for bucket in self.targets():
            probe = partial(check, await self._client_made(), bucket, self.config.prefix)
            results.append(await self._threads.run(Pool.PROBE, probe))
        self.warnings = [_warning(result) for result in results if result.problem is not None]
        if results:
            self._note(any(result.up for result in results))
        return self.warnings

    async def _client_made(self) -> S3Client:
        """The probe's client, made at the first round with a bucket to check (on the probe's
        thread: it reads files, about 50 ms)."""
        if self._client is None:
            self._client = await self._threads.run(Pool.PROBE, self._client_factory)
        return self._client

    def start(self) -> None:
        """Start probing every ``probe_interval_s`` (idempotent; ``0``: never)."""
        if self._task is None and self.config.probe_interval_s > 0:
            self._task = asyncio.get_running_loop().create_task(self._forever())
            self._task.add_done_callback(
                log_death(logger, "upstream probe stopped", on_death=self._died)
            )

    async def _forever(self) -> None:
        while True:
            try:
                await self.round()
            except Exception as exc:
                logger.exception("upstream probe round failed")
                self.warnings = [f"upstream probe failed: {exc}"]
            await asyncio.sleep(self.config.probe_interval_s)

    def _died(self, exc: BaseException) -> None:
        self.warnings = [f"upstream probe stopped: {exc}"]

    async def close(self) -> None:
        """Stop probing (idempotent)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


def _warning(result: ProbeResult) -> str:
    prefix = "upstream unreachable" if not result.up else "upstream refuses"
    return f"{prefix}: {result.problem}"
