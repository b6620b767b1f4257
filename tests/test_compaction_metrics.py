"""The daemon's compaction passes on /metrics and in ``s3batchd status``
(compaction.enabled): dead bytes and objects per bucket, their monthly cost, the oldest
unerased delete's age, passes, batches and bytes rewritten, requests spent."""

from __future__ import annotations

from typing import TYPE_CHECKING

from s3batchd.cli.status import fetch, render
from tests.batches import indexes
from tests.conftest import Daemon, DaemonFactory, wait_for
from tests.test_compaction import _write_and_delete

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


def _sample(daemon: Daemon, name: str, **labels: str) -> float | None:
    _, samples = fetch(daemon.admin_url)
    return samples.get(name, {}).get(tuple(sorted(labels.items())))


def test_dead_bytes_objects_cost_and_age_per_bucket_before_any_rewrite(
    start_daemon: DaemonFactory, s3: S3Client, bucket: str
) -> None:
    # A ratio no batch with a live object reaches, no erase deadline: passes rewrite nothing.
    daemon = start_daemon(
        compaction={"enabled": True, "interval_s": 0.3, "min_dead_ratio": 1, "erase_within_s": 0}
    )
    assert _sample(daemon, "s3batchd_compaction_erase_deadline_seconds") is None
    assert "compaction: passes done 0" in render(*fetch(daemon.admin_url))
    written = _write_and_delete(daemon, s3, bucket)
    dead_bytes = sum(len(written.bodies[key]) for key in written.deleted)

    def surveyed() -> bool:
        found = _sample(daemon, "s3batchd_compaction_dead_objects", bucket=bucket)
        return found == len(written.deleted)

    wait_for(surveyed)
    assert _sample(daemon, "s3batchd_compaction_dead_bytes", bucket=bucket) == dead_bytes
    cost = _sample(daemon, "s3batchd_compaction_dead_cost_usd_month", bucket=bucket)
    assert cost is not None
    assert cost > 0
    age = _sample(daemon, "s3batchd_compaction_oldest_unerased_delete_seconds", bucket=bucket)
    assert age is not None
    assert age > 0
    assert _sample(daemon, "s3batchd_compaction_batches_rewritten_total") == 0
    assert _sample(daemon, "s3batchd_compaction_bytes_rewritten_total") == 0
    passes = _sample(daemon, "s3batchd_compaction_passes_total", result="done")
    assert passes is not None
    assert passes >= 1
    listed = _sample(daemon, "s3batchd_compaction_requests_total", operation="LIST")
    assert listed is not None
    assert listed >= passes
    assert {d["version"] for d in indexes(s3, bucket)} == {1}
    status = render(*fetch(daemon.admin_url))
    assert f"dead: {len(written.deleted)} objects" in status, status
    assert "0 batches rewritten" in status, status


def test_rewrites_counted_and_no_dead_bytes_left_after_a_pass(
    start_daemon: DaemonFactory, s3: S3Client, bucket: str
) -> None:
    daemon = start_daemon(
        compaction={
            "enabled": True,
            "interval_s": 0.3,
            "erase_within_s": 3600,
            "grace_s": 0,
            "payback_days": 1e7,
            # Passes run while the deletes come: the last few dead of a compacted batch too.
            "min_dead_ratio": 0.01,
        }
    )
    deadline = _sample(daemon, "s3batchd_compaction_erase_deadline_seconds")
    assert deadline == 3600 + 0.3 + 0  # erase_within_s + interval_s + grace_s
    written = _write_and_delete(daemon, s3, bucket)

    def compacted() -> bool:
        versions = {d["version"] for d in indexes(s3, bucket) if d["objects"]}
        return versions == {2} and (
            _sample(daemon, "s3batchd_compaction_dead_objects", bucket=bucket) == 0
        )

    wait_for(compacted, timeout=60)
    assert _sample(daemon, "s3batchd_compaction_dead_bytes", bucket=bucket) == 0
    assert _sample(daemon, "s3batchd_compaction_dead_cost_usd_month", bucket=bucket) == 0
    age = _sample(daemon, "s3batchd_compaction_oldest_unerased_delete_seconds", bucket=bucket)
    assert age == 0
    rewritten = _sample(daemon, "s3batchd_compaction_batches_rewritten_total")
    assert rewritten is not None
    assert rewritten >= len(written.old_batches)
    new_tars = sum(d["tar"]["size"] for d in indexes(s3, bucket) if d["version"] == 2)
    bytes_rewritten = _sample(daemon, "s3batchd_compaction_bytes_rewritten_total")
    assert bytes_rewritten is not None
    assert bytes_rewritten >= new_tars
    for operation in ("GET", "PUT", "LIST", "DELETE"):
        spent = _sample(daemon, "s3batchd_compaction_requests_total", operation=operation)
        assert spent is not None
        assert spent > 0, operation
    status = render(*fetch(daemon.admin_url))
    assert "compaction: passes done" in status, status
    assert "dead: 0 objects" in status, status


def test_no_compaction_line_or_metrics_when_disabled(daemon: Daemon) -> None:
    assert _sample(daemon, "s3batchd_compaction_passes_total", result="done") is None
    assert "compaction:" not in render(*fetch(daemon.admin_url))
