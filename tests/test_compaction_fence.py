"""A compactor that loses its lease while writing a batch writes no index and deletes nothing.

The hole: the holder renews the lease naming the batch it writes, uploads the tar (minutes,
perhaps), then writes the index. Had the lease ended during the upload, the next holder found
the batch named, no index, and deleted the tar as an orphan (and rewrote the same batches,
deleting them with ``grace_s = 0``); the first holder then wrote its index, naming objects in
a tar that no longer exists. The first holder is held up here between its tar and its index by
a botocore event handler on its own client (the requests are real, to SeaweedFS), while its
lease ends (the lease object is written expired, as a holder stopped longer than ``lease_s``
leaves it; the advisory lock's session is terminated by the server) and a second compactor
runs a whole pass. And a tar upload longer than ``lease_s`` keeps the lease renewed."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import psycopg
import pytest

from s3batchd.compaction.compactor import Compactor
from s3batchd.compaction.lease import lease_key
from s3batchd.errors import LeaseHeld
from tests.batches import keys
from tests.conftest import Daemon, DaemonFactory, wait_for
from tests.test_compaction import PREFIX, _settings, _write_and_delete, survey_keys
from tests.test_compaction_pglease import _migrated, _pg_settings, _sessions

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from s3batchd.cli.seaweed import LocalS3

RULES: dict[str, Any] = {"erase_within_s": 0, "grace_s": 0, "payback_days": 1e7}


def _after_new_tar(client: S3Client, meanwhile: Callable[[], None]) -> list[str]:
    """Run ``meanwhile`` once, when the first tar PUT of a compacted batch by ``client`` has
    been answered (the tar is in the bucket, its index not yet); the tar keys seen."""
    seen: list[str] = []

    def handler(http_response: Any, **_: Any) -> None:
        url = str(http_response.url).split("?", 1)[0]
        if url.endswith(".tar") and "compactor-" in url and not seen:
            seen.append(url)
            meanwhile()

    client.meta.events.register("after-call.s3.PutObject", handler)
    return seen


def _converged(s3: S3Client, bucket: str, live: set[str]) -> None:
    """No index without its tar (nor a tar without its index), every live key exactly once
    with its bytes."""
    names = keys(s3, bucket)
    tars = {k.removesuffix(".tar") for k in names if k.endswith(".tar")}
    assert {k.removesuffix(".index.json") for k in names if k.endswith(".index.json")} == tars
    assert survey_keys(s3, bucket) == sorted(live)


def test_a_holder_whose_lease_expired_during_its_tar_writes_no_index(
    start_daemon: DaemonFactory, s3: S3Client, s3_server: LocalS3, bucket: str
) -> None:
    daemon: Daemon = start_daemon()
    written = _write_and_delete(daemon, s3, bucket)
    live = set(written.bodies) - written.deleted
    slow = s3_server.client()
    first = Compactor(slow, bucket, _settings(daemon, **RULES, lease_s=1.0))
    second: list[Any] = []

    def expire_and_compact() -> None:
        # The holder stands still past its lease (a stopped process: its heartbeat too), as
        # its lease object says once its expiry is past.
        key = lease_key(PREFIX)
        lease = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        lease["expires"] = time.time() - 1
        s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(lease).encode())
        second.append(Compactor(s3, bucket, _settings(daemon, **RULES)).run())

    seen = _after_new_tar(slow, expire_and_compact)
    with pytest.raises(LeaseHeld):
        first.run()
    assert len(seen) == 1
    # The second found the first's batch unfinished (no index) and rewrote the same batches.
    assert len(second[0].orphans) == 1
    assert len(second[0].written) == 1
    _converged(s3, bucket, live)
    again = Compactor(s3, bucket, _settings(daemon, **RULES)).run()
    assert again.orphans == []
    assert again.written == []
    _converged(s3, bucket, live)


def test_a_holder_whose_lock_session_died_during_its_tar_writes_no_index(
    start_daemon: DaemonFactory,
    s3: S3Client,
    s3_server: LocalS3,
    bucket: str,
    postgres_dsn: str,
) -> None:
    dsn = _migrated(postgres_dsn)
    daemon: Daemon = start_daemon()
    written = _write_and_delete(daemon, s3, bucket)
    live = set(written.bodies) - written.deleted
    slow = s3_server.client()
    first = Compactor(slow, bucket, _pg_settings(daemon, dsn))
    second: list[Any] = []

    def kill_session_and_compact() -> None:
        with psycopg.connect(dsn, autocommit=True) as connection:
            connection.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = %s",
                (f"s3batchd compaction {first.writer}"[:63],),
            )
        wait_for(lambda: _sessions(dsn) == [])
        second.append(Compactor(s3, bucket, _pg_settings(daemon, dsn)).run())

    seen = _after_new_tar(slow, kill_session_and_compact)
    with pytest.raises(LeaseHeld):
        first.run()
    assert len(seen) == 1
    assert len(second[0].orphans) == 1
    assert len(second[0].written) == 1
    _converged(s3, bucket, live)
    again = Compactor(s3, bucket, _pg_settings(daemon, dsn)).run()
    assert again.orphans == []
    assert again.written == []
    _converged(s3, bucket, live)


def test_a_tar_upload_longer_than_the_lease_keeps_it_renewed(
    start_daemon: DaemonFactory, s3: S3Client, s3_server: LocalS3, bucket: str
) -> None:
    daemon: Daemon = start_daemon()
    written = _write_and_delete(daemon, s3, bucket)
    live = set(written.bodies) - written.deleted
    slow = s3_server.client()
    first = Compactor(slow, bucket, _settings(daemon, **RULES, lease_s=6.0))
    outcomes: list[str] = []

    def outlast_the_lease() -> None:
        taken = json.loads(s3.get_object(Bucket=bucket, Key=lease_key(PREFIX))["Body"].read())
        time.sleep(max(taken["expires"] - time.time(), 0) + 0.5)  # past the renewal before
        try:
            Compactor(s3, bucket, _settings(daemon, **RULES)).run()
        except LeaseHeld:
            outcomes.append("lease held")
        else:
            outcomes.append("second compactor ran")

    seen = _after_new_tar(slow, outlast_the_lease)
    report = first.run()
    assert len(seen) == 1
    assert outcomes == ["lease held"]
    assert len(report.written) == 1
    assert report.orphans == []
    _converged(s3, bucket, live)
