"""Prometheus metrics, served on the admin listener at ``/metrics``.

Request metrics are counted as requests pass; pipeline state (batches, uploads, spool, savings)
is read from the components at scrape time, so nothing on the hot path keeps a second copy.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from s3batchd.index import batch_created
from s3batchd.spool import QUARANTINE_DIR

if TYPE_CHECKING:
    from s3batchd.pipeline import Pipeline

#: Upstream operations billed as PUT-class requests by S3.
PUT_CLASS = frozenset(
    {"PutObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload"}
)
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

    def watch(self, pipeline: Pipeline) -> None:
        """Read the pipeline's state at every scrape."""
        self.registry.register(_PipelineCollector(pipeline, self.price))


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
        yield from self._spool(pipeline)
        yield from self._savings(stats.records, requests)

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
