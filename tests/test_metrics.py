"""Prometheus metrics move as a user expects during a real run."""

from __future__ import annotations

import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import pytest
from botocore.exceptions import ClientError
from prometheus_client.parser import text_string_to_metric_families

from tests.batches import indexed_objects
from tests.conftest import DaemonFactory, wait_for

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


def scrape(admin_url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample as {(name, sorted labels): value}."""
    with urllib.request.urlopen(admin_url + "/metrics", timeout=10) as answer:  # noqa: S310
        text = answer.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_thousand_puts_in_two_batches(
    start_daemon: DaemonFactory, s3: S3Client, bucket: str
) -> None:
    daemon = start_daemon(batch={"max_records": 500, "linger_ms": 60_000})
    client = daemon.client(max_pool_connections=8)
    with ThreadPoolExecutor(8) as pool:
        list(
            pool.map(
                lambda n: client.put_object(Bucket=bucket, Key=f"m/{n}", Body=b"x" * 100),
                range(1000),
            )
        )
    wait_for(lambda: indexed_objects(s3, bucket) == 1000)
    wait_for(lambda: daemon.pipeline.uploader.pending == 0)
    metrics = scrape(daemon.admin_url)
    assert (
        metrics["s3batchd_requests_total", (("operation", "PutObject"), ("status", "200"))] == 1000
    )
    assert metrics["s3batchd_received_bytes_total", ()] == 100_000
    assert metrics["s3batchd_batches_sealed_total", (("reason", "records"),)] == 2
    upstream_puts = metrics[
        "s3batchd_upstream_requests_total", (("operation", "PutObject"), ("outcome", "ok"))
    ]
    assert upstream_puts <= 4
    assert metrics["s3batchd_records_uploaded_total", ()] == 1000
    assert metrics["s3batchd_put_requests_avoided", ()] == 1000 - upstream_puts
    assert metrics["s3batchd_estimated_savings_usd", ()] == (1000 - upstream_puts) * 0.005 / 1000
    assert metrics["s3batchd_ack_latency_seconds_count", ()] == 1000
    assert metrics["s3batchd_event_loop_lag_seconds_count", ()] > 0  # watched while running
    assert metrics["s3batchd_batch_records_sum", ()] == 1000
    assert metrics["s3batchd_spool_bytes", ()] == 0
    assert metrics["s3batchd_pending_batches", ()] == 0


def test_errors_are_counted_by_status(start_daemon: DaemonFactory, bucket: str) -> None:
    daemon = start_daemon()
    client = daemon.client(retries={"total_max_attempts": 1})
    with pytest.raises(ClientError):
        client.get_object(Bucket=bucket, Key="nope")
    metrics = scrape(daemon.admin_url)
    assert metrics["s3batchd_requests_total", (("operation", "GetObject"), ("status", "404"))] == 1


def test_loop_lag_is_sampled_at_the_configured_interval(start_daemon: DaemonFactory) -> None:
    daemon = start_daemon(metrics={"loop_lag_interval_s": 0.01})
    wait_for(lambda: scrape(daemon.admin_url)["s3batchd_event_loop_lag_seconds_count", ()] >= 20)


def test_loop_lag_interval_zero_turns_the_monitor_off(
    start_daemon: DaemonFactory, bucket: str
) -> None:
    daemon = start_daemon(metrics={"loop_lag_interval_s": 0})
    daemon.client().put_object(Bucket=bucket, Key="k", Body=b"x")
    assert scrape(daemon.admin_url)["s3batchd_event_loop_lag_seconds_count", ()] == 0
