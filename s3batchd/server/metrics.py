"""Prometheus metrics, served on the admin listener at ``/metrics``.

Request metrics are counted as requests pass; pipeline state (batches, uploads, spool, savings)
is read from the components at scrape time, so nothing on the hot path keeps a second copy.

Why one module above 400 lines: every metric's name and help text (what docs, dashboards and
alerts rely on) is declared in one place; the collectors beside them read the components at
scrape time.
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from s3batchd.compaction.stats import OPERATIONS, PASS_RESULTS
from s3batchd.errors import FAILURE_REASONS
from s3batchd.index import batch_created
from s3batchd.spool.files import QUARANTINE_DIR

if TYPE_CHECKING:
    from s3batchd.batching.pipeline import Pipeline
    from s3batchd.compaction.stats import CompactionStats
    from s3batchd.records import SealedBatch
    from s3batchd.upload.follow import Follower

#: Upstream operations billed as PUT-class requests by S3.
PUT_CLASS = frozenset(
    {"PutObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload"}
)
#: Buckets labelled one by one in the parked-batch gauges: those with the most parked batches;
#: the others are summed under ``bucket="_other"`` (no bucket name starts with ``_``), so the
#: number of series stays bounded however many buckets have parked batches.
PARKED_BUCKET_LABELS = 10
OTHER_BUCKETS = "_other"
_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    """Every metric of one daemon process, in its own registry."""

    def __init__(self, *, put_price_per_1000_usd: float) -> None:
        self.registry = CollectorRegistry()
        self.price = put_price_per_1000_usd
        self.requests = Counter(
            "s3batchd_requests",
            "S3 requests answered, by operation (PutObject, GetObject, ...) and HTTP status",
            ["operation", "status"],
            registry=self.registry,
        )
        self.received_bytes = Counter(
            "s3batchd_received_bytes", "Decoded object bytes accepted", registry=self.registry
        )
        self.bucket_checks = Counter(
            "s3batchd_bucket_checks",
            "HeadBucket checks before writes to a bucket, by answer: exists, denied (403: "
            "accepted), missing (writes get NoSuchBucket), unreachable (accepted)",
            ["result"],
            registry=self.registry,
        )
        self.ack_latency = Histogram(
            "s3batchd_ack_latency_seconds",
            "Time from request to acknowledged PutObject",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.upload_latency = Histogram(
            "s3batchd_upload_seconds",
            "Time to upload a batch (tar and index, retries included)",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=self.registry,
        )
        self.loop_lag = Histogram(
            "s3batchd_event_loop_lag_seconds",
            "How late the event loop ran a timer due every metrics.loop_lag_interval_s: while "
            "it is late, every request of the process waits (the floor under the latency tail)",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1),
            registry=self.registry,
        )
        self.batch_records = Histogram(
            "s3batchd_batch_records",
            "Objects per uploaded batch",
            buckets=(1, 10, 100, 1000, 10_000, 100_000),
            registry=self.registry,
        )
        self.batch_bytes = Histogram(
            "s3batchd_batch_bytes",
            "Tar bytes per uploaded batch",
            buckets=(64 * 1024, 1 << 20, 8 << 20, 64 << 20, 512 << 20, 5 << 30),
            registry=self.registry,
        )
        self.body_timeouts = Counter(
            "s3batchd_body_timeouts",
            "Request bodies answered 400 RequestTimeout, by reason: stalled (one wait over "
            "server.body_timeout_s), deadline (too slow for server.body_min_rate_bytes_s), "
            "slow_share (fell behind that rate with every slow slot taken)",
            ["reason"],
            registry=self.registry,
        )
        for reason in ("stalled", "deadline", "slow_share"):
            self.body_timeouts.labels(reason)
        self.slow_bodies = Gauge(
            "s3batchd_slow_bodies",
            "Request bodies behind server.body_min_rate_bytes_s now, each holding one of the "
            "slow slots (1 - server.progressing_reserve of server.max_concurrent_requests)",
            registry=self.registry,
        )
        self.idle_connections_closed = Counter(
            "s3batchd_idle_connections_closed",
            "Idle connections closed to make room for new ones at server.max_connections",
            registry=self.registry,
        )

        self.follow_delay = Histogram(
            "s3batchd_catalog_follow_delay_seconds",
            "Time from an index's upload (its LastModified) to the catalog learning it, for "
            "indexes of other daemons learned by follow rounds (catalog.follow; not backfill)",
            buckets=(0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600),
            registry=self.registry,
        )

    def observe_upload(self, batch: SealedBatch, seconds: float) -> None:
        """A batch was uploaded in ``seconds``."""
        self.upload_latency.observe(seconds)
        self.batch_records.observe(batch.records)
        self.batch_bytes.observe(batch.size)

    def watch(self, pipeline: Pipeline) -> None:
        """Read the pipeline's state at every scrape."""
        self.registry.register(_PipelineCollector(pipeline, self.price))
        if pipeline.follower is not None:
            pipeline.follower.on_learned = self.follow_delay.observe
            self.registry.register(_FollowCollector(pipeline.follower))

    def watch_compaction(self, stats: CompactionStats, *, erase_deadline_s: float | None) -> None:
        """Read the compaction passes' stats at every scrape (``compaction.enabled``);
        ``erase_deadline_s``: ``erase_within_s + interval_s + grace_s`` (the erasure promise),
        None when the deadline is off."""
        self.registry.register(_CompactionCollector(stats, erase_deadline_s))


class _CompactionCollector(Collector):
    """The daemon's compaction passes (compaction.enabled; docs/compaction.md): per bucket
    what the last pass left, counters since start. Buckets appear after their first pass."""

    def __init__(self, stats: CompactionStats, erase_deadline_s: float | None) -> None:
        self._stats = stats
        self._deadline = erase_deadline_s

    def collect(self) -> Iterator[Metric]:
        stats = self._stats
        now = time.time()
        passes = CounterMetricFamily(
            "s3batchd_compaction_passes",
            "Compaction passes over a bucket, by result: done, skipped (another compactor held "
            "the lease), failed (logged)",
            labels=["result"],
        )
        for result in PASS_RESULTS:
            passes.add_metric([result], stats.passes.get(result, 0))
        yield passes
        yield CounterMetricFamily(
            "s3batchd_compaction_batches_rewritten",
            "Batches compaction rewrote without their dead objects",
            value=stats.batches_rewritten,
        )
        yield CounterMetricFamily(
            "s3batchd_compaction_bytes_rewritten",
            "Tar bytes of the batches compaction wrote",
            value=stats.bytes_rewritten,
        )
        requests = CounterMetricFamily(
            "s3batchd_compaction_requests",
            "Requests compaction passes sent to S3 (lease, indexes, live members, new batches, "
            "deletes), by operation: GET, PUT, LIST, DELETE",
            labels=["operation"],
        )
        for operation in OPERATIONS:
            requests.add_metric([operation], stats.requests.get(operation, 0))
        yield requests
        families = {
            "bytes": GaugeMetricFamily(
                "s3batchd_compaction_dead_bytes",
                "Object bytes deleted or overwritten still in the bucket's batches after the "
                "last pass (replaced batches waiting for compaction.grace_s left out), by bucket",
                labels=["bucket"],
            ),
            "objects": GaugeMetricFamily(
                "s3batchd_compaction_dead_objects",
                "Objects deleted or overwritten still in the bucket's batches after the last "
                "pass, by bucket",
                labels=["bucket"],
            ),
            "cost": GaugeMetricFamily(
                "s3batchd_compaction_dead_cost_usd_month",
                "What storing those dead members costs per month in USD "
                "(compaction.storage_price_per_gb_month_usd), by bucket",
                labels=["bucket"],
            ),
            "oldest": GaugeMetricFamily(
                "s3batchd_compaction_oldest_unerased_delete_seconds",
                "Seconds since the longest-dead object still in those batches was deleted or "
                "overwritten (0 when none), by bucket; over "
                "s3batchd_compaction_erase_deadline_seconds the erase promise is broken",
                labels=["bucket"],
            ),
        }
        for bucket, dead in sorted(stats.buckets.items()):
            label = [bucket]
            families["bytes"].add_metric(label, dead.dead_bytes)
            families["objects"].add_metric(label, dead.dead_objects)
            families["cost"].add_metric(label, dead.dead_cost_usd_month)
            died = dead.oldest_death
            families["oldest"].add_metric(label, 0.0 if died is None else max(0.0, now - died))
        yield from families.values()
        if self._deadline is not None:
            yield GaugeMetricFamily(
                "s3batchd_compaction_erase_deadline_seconds",
                "compaction.erase_within_s + compaction.interval_s + compaction.grace_s: a "
                "deleted object's bytes are gone from the bucket within this (absent when "
                "erase_within_s = 0)",
                value=self._deadline,
            )


class _FollowCollector(Collector):
    """The catalog's follow loop (catalog.follow), per followed bucket."""

    def __init__(self, follower: Follower) -> None:
        self._follower = follower

    def collect(self) -> Iterator[Metric]:
        follower = self._follower
        now = time.time()
        states = sorted(follower.buckets.values(), key=lambda state: state.bucket)
        yield CounterMetricFamily(
            "s3batchd_catalog_follow_indexes",
            "Index objects of other daemons learned by following the buckets",
            value=follower.indexes_learned,
        )
        families = {
            "lag": GaugeMetricFamily(
                "s3batchd_catalog_follow_lag_seconds",
                "Age of the newest index learned (now minus its upload time), by bucket",
                labels=["bucket"],
            ),
            "round": GaugeMetricFamily(
                "s3batchd_catalog_follow_round_age_seconds",
                "Seconds since the last successful follow round of the bucket started",
                labels=["bucket"],
            ),
            "answers": GaugeMetricFamily(
                "s3batchd_catalog_follow_up",
                "1 if the catalog answers for the bucket (backfill done, last round "
                "succeeded), else 0 (reads it cannot answer get 503 SlowDown)",
                labels=["bucket"],
            ),
            "done": GaugeMetricFamily(
                "s3batchd_catalog_backfill_done",
                "1 once the bucket's backfill (every index of catalog.retention_s) finished",
                labels=["bucket"],
            ),
            "indexes": GaugeMetricFamily(
                "s3batchd_catalog_backfill_indexes",
                "Index objects the bucket's backfill has learned",
                labels=["bucket"],
            ),
            "objects": GaugeMetricFamily(
                "s3batchd_catalog_backfill_objects",
                "Objects the bucket's backfill has learned",
                labels=["bucket"],
            ),
            "behind": GaugeMetricFamily(
                "s3batchd_catalog_backfill_behind_seconds",
                "How far the bucket's backfill still is from now (the batch time of the newest "
                "index it read); 0 once done",
                labels=["bucket"],
            ),
        }
        for state in states:
            label = [state.bucket]
            if state.newest_uploaded:
                families["lag"].add_metric(label, max(0.0, now - state.newest_uploaded))
            if state.last_round:
                families["round"].add_metric(label, max(0.0, now - state.last_round))
            families["answers"].add_metric(label, int(state.answers))
            families["done"].add_metric(label, int(state.backfilled))
            families["indexes"].add_metric(label, state.backfill_indexes)
            families["objects"].add_metric(label, state.backfill_objects)
            behind = 0.0
            if not state.backfilled:
                since = state.backfill_position or now - follower.retention_s
                behind = max(0.0, now - since)
            families["behind"].add_metric(label, behind)
        yield from families.values()


class _PipelineCollector(Collector):
    def __init__(self, pipeline: Pipeline, price: float) -> None:
        self._pipeline = pipeline
        self._price = price

    def collect(self) -> Iterator[Metric]:
        pipeline = self._pipeline
        stats = pipeline.uploader.stats
        sealed = CounterMetricFamily(
            "s3batchd_batches_sealed", "Batches sealed, by reason", labels=["reason"]
        )
        for reason, count in sorted(pipeline.batcher.sealed_by_reason.items()):
            sealed.add_metric([reason], count)
        yield sealed
        upstream = CounterMetricFamily(
            "s3batchd_upstream_requests",
            "Requests sent to S3, by operation and outcome",
            labels=["operation", "outcome"],
        )
        requests = stats.snapshot()
        for (operation, outcome), count in sorted(requests.items()):
            upstream.add_metric([operation, outcome], count)
        yield upstream
        yield CounterMetricFamily(
            "s3batchd_upload_retries",
            "Failed upload attempts that were retried",
            value=stats.retries,
        )
        yield CounterMetricFamily(
            "s3batchd_batches_uploaded",
            "Batches whose tar and index are in the bucket",
            value=stats.batches,
        )
        yield CounterMetricFamily(
            "s3batchd_records_uploaded", "Objects in uploaded batches", value=stats.records
        )
        yield CounterMetricFamily(
            "s3batchd_bytes_uploaded", "Tar bytes uploaded", value=stats.bytes
        )
        failures = CounterMetricFamily(
            "s3batchd_upload_failures",
            "Failed upload attempts, by reason (" + ", ".join(FAILURE_REASONS) + ")",
            labels=["reason"],
        )
        failed = stats.failure_counts()
        for reason in FAILURE_REASONS:
            failures.add_metric([reason], failed.get(reason, 0))
        yield failures
        yield from self._spool(pipeline)
        yield from _parked(pipeline)
        yield from self._savings(stats.records, requests)
        yield CounterMetricFamily(
            "s3batchd_recovery_lost_objects",
            "Acknowledged objects whose bytes start-up recovery did not find (cut or damaged)",
            value=pipeline.recovery_lost_objects,
        )
        yield from self._health(pipeline)
        yield from _catalog(pipeline)

    def _spool(self, pipeline: Pipeline) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "s3batchd_spool_bytes",
            "Bytes in the spool (open and sealed batches)",
            value=pipeline.spool_bytes,
        )
        yield GaugeMetricFamily(
            "s3batchd_spool_quota_bytes", "spool.max_bytes", value=pipeline.settings.spool.max_bytes
        )
        yield GaugeMetricFamily(
            "s3batchd_open_batches",
            "Batches accepting records",
            value=pipeline.batcher.open_batches,
        )
        yield GaugeMetricFamily(
            "s3batchd_pending_batches",
            "Sealed batches waiting for upload",
            value=pipeline.uploader.pending,
        )
        ids = [*pipeline.batcher.open_batch_ids, *pipeline.uploader.pending_batch_ids]
        oldest = min((batch_created(i).timestamp() for i in ids), default=time.time())
        yield GaugeMetricFamily(
            "s3batchd_spool_oldest_record_age_seconds",
            "Age of the oldest batch not yet uploaded",
            value=max(0.0, time.time() - oldest),
        )
        quarantine = pipeline.settings.spool.dir / QUARANTINE_DIR
        count = sum(1 for _ in quarantine.iterdir()) if quarantine.is_dir() else 0
        yield GaugeMetricFamily(
            "s3batchd_quarantined_files",
            "Spool files recovery could not read (kept for an operator)",
            value=count,
        )

    def _savings(self, records: int, requests: dict[tuple[str, str], int]) -> Iterator[Metric]:
        issued = sum(n for (op, outcome), n in requests.items() if op in PUT_CLASS)
        avoided = records - issued
        yield GaugeMetricFamily(
            "s3batchd_put_requests_avoided",
            "Upstream PUT-class requests avoided: objects uploaded minus PUT-class requests "
            "issued for them (tar, parts, index, retries)",
            value=avoided,
        )
        yield GaugeMetricFamily(
            "s3batchd_estimated_savings_usd",
            "put_requests_avoided x metrics.put_price_per_1000_usd / 1000",
            value=avoided * self._price / 1000,
        )

    def _health(self, pipeline: Pipeline) -> Iterator[Metric]:
        if pipeline.last_reasons is not None:
            yield GaugeMetricFamily(
                "s3batchd_ready",
                "1 if this process can take writes (/readyz?scope=worker is 200), else 0",
                value=int(not pipeline.last_reasons),
            )
        yield GaugeMetricFamily(
            "s3batchd_stranded_batches",
            "Batches whose seal failed, kept as .open files and sealed again until it works "
            "(/readyz fails meanwhile)",
            value=len(pipeline.batcher.stranded),
        )
        if pipeline.upstream_up is not None:  # absent until a probe or an upload says
            yield GaugeMetricFamily(
                "s3batchd_upstream_up",
                "1 if the last upstream probe round or upload attempt reached S3, else 0 "
                "(a retriable failure: refused or timed-out connection, 5xx, throttling)",
                value=int(pipeline.upstream_up),
            )


def parked_by_bucket(pipeline: Pipeline) -> tuple[Tally[str], Tally[str]]:
    """Parked batches and their bytes per bucket label: the ``PARKED_BUCKET_LABELS`` buckets
    with the most parked batches by name, the rest as ``OTHER_BUCKETS``."""
    batches: Tally[str] = Tally()
    sizes: Tally[str] = Tally()
    for parked in pipeline.uploader.parked:
        batches[parked.batch.bucket] += 1
        sizes[parked.batch.bucket] += parked.batch.size
    ranked = sorted(batches, key=lambda bucket: (-batches[bucket], bucket))
    labelled = set(ranked[:PARKED_BUCKET_LABELS])
    label_batches: Tally[str] = Tally()
    label_bytes: Tally[str] = Tally()
    for bucket in ranked:
        label = bucket if bucket in labelled else OTHER_BUCKETS
        label_batches[label] += batches[bucket]
        label_bytes[label] += sizes[bucket]
    return label_batches, label_bytes


def _parked(pipeline: Pipeline) -> Iterator[Metric]:
    batches, sizes = parked_by_bucket(pipeline)
    count = GaugeMetricFamily(
        "s3batchd_parked_batches",
        "Batches whose upload failed non-retriably, kept in the spool and tried again later, by "
        f"bucket (the {PARKED_BUCKET_LABELS} with the most; the others as {OTHER_BUCKETS})",
        labels=["bucket"],
    )
    size = GaugeMetricFamily(
        "s3batchd_parked_bytes", "Tar bytes of the parked batches, by bucket", labels=["bucket"]
    )
    for label in sorted(batches):
        count.add_metric([label], batches[label])
        size.add_metric([label], sizes[label])
    yield count
    yield size


def _catalog(pipeline: Pipeline) -> Iterator[Metric]:
    """Rows of the daemon's SQLite catalog and of the shared PostgreSQL one, and the shared
    catalog's failures (``catalog.backend = "postgres"``)."""
    rows = GaugeMetricFamily(
        "s3batchd_catalog_rows",
        "Objects in the catalog, by backend: sqlite (this daemon's file, counted after each "
        "follow round, else at each expiry round) and postgres (the fleet's, exact below a "
        "million rows, the planner's estimate above)",
        labels=["backend"],
    )
    follower = pipeline.follower
    if follower is not None:  # counted after every follow round: the freshest count
        rows.add_metric(["sqlite"], follower.rows)
    elif pipeline.catalog_rows is not None:
        rows.add_metric(["sqlite"], pipeline.catalog_rows)
    shared = pipeline.shared
    if shared is not None and shared.catalog.rows is not None:
        rows.add_metric(["postgres"], shared.catalog.rows)
    yield rows
    errors = CounterMetricFamily(
        "s3batchd_catalog_errors",
        "Failed calls of the catalog, by backend and operation: postgres (read, list, write, "
        "expire, count, migrate: reads answered 503 SlowDown, writes retried) and sqlite (the "
        "follow loop's list, get, parse, write)",
        labels=["backend", "operation"],
    )
    if follower is not None:
        for operation in ("list", "get", "parse", "write"):
            errors.add_metric(["sqlite", operation], follower.errors.get(operation, 0))
    if shared is not None:
        for operation in ("read", "list", "write", "expire", "count", "migrate"):
            errors.add_metric(["postgres", operation], shared.catalog.errors.get(operation, 0))
    yield errors
    yield GaugeMetricFamily(
        "s3batchd_catalog_pending_batches",
        "Uploaded batches whose rows are not in the PostgreSQL catalog yet (retried while it "
        "fails; 0 with catalog.backend = sqlite)",
        value=0 if shared is None else shared.pending,
    )
    yield CounterMetricFamily(
        "s3batchd_catalog_dropped_batches",
        "Uploaded batches given up by the PostgreSQL catalog's writer: refused for good (index "
        "gone or invalid, rows rejected) or beyond the queue's bound (s3batchd reindex writes "
        "them; 0 with catalog.backend = sqlite)",
        value=0 if shared is None else shared.dropped_batches,
    )
