"""What the daemon's compaction passes found and did, for ``/metrics`` and ``s3batchd status``.

Filled from each pass's ``PassReport`` (compaction/loop.py), read at scrape time
(server/metrics.py). Per bucket, the dead bytes and objects are those the last pass left: the
survey at its start less the batches it rewrote (their replaced tars stay for
``compaction.grace_s``, outside these counts). The oldest unerased delete is kept as the time
of death, so its age grows between passes, and while passes fail or find the lease held.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from s3batchd.compaction.survey import Prices, monthly_storage_usd

if TYPE_CHECKING:
    from s3batchd.compaction.compactor import PassReport

#: Outcomes of a pass (the ``result`` label of ``s3batchd_compaction_passes_total``).
PASS_RESULTS = ("done", "skipped", "failed")
#: Request kinds a pass counts (the ``operation`` label of ``s3batchd_compaction_requests``).
OPERATIONS = ("GET", "PUT", "LIST", "DELETE")


@dataclass(slots=True)
class BucketDead:
    """Dead bytes left in one bucket's current batches after the last pass."""

    dead_bytes: int
    dead_objects: int
    dead_cost_usd_month: float
    oldest_death: float | None
    """Unix time the longest-dead object of those batches died (None: none)."""


@dataclass(slots=True)
class CompactionStats:
    """Counters since the daemon started, and per bucket the state after its last pass."""

    passes: Counter[str] = field(default_factory=Counter)
    batches_rewritten: int = 0
    bytes_rewritten: int = 0
    """Tar bytes of the batches the passes wrote."""
    requests: Counter[str] = field(default_factory=Counter)
    buckets: dict[str, BucketDead] = field(default_factory=dict)

    def record(self, bucket: str, report: PassReport, prices: Prices) -> None:
        """A pass over ``bucket`` finished with ``report``."""
        self.passes["done"] += 1
        self.batches_rewritten += len(report.chosen) if report.written else 0
        self.bytes_rewritten += sum(written.tar_size for written in report.written)
        self.requests.update(report.requests)
        if report.survey is None:
            return
        rewritten = {chosen.batch.batch_id for chosen in report.chosen} if report.written else set()
        left = [b for b in report.survey.batches if b.batch_id not in rewritten]
        deaths = [b.oldest_death for b in left if b.oldest_death is not None]
        self.buckets[bucket] = BucketDead(
            dead_bytes=sum(b.dead_bytes for b in left),
            dead_objects=sum(b.dead_objects for b in left),
            dead_cost_usd_month=monthly_storage_usd(sum(b.dead_footprint for b in left), prices),
            oldest_death=min(deaths, default=None),
        )

    def not_done(self, result: str) -> None:
        """A pass was ``skipped`` (lease held) or ``failed``."""
        self.passes[result] += 1
