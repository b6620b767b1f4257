"""Compaction attacked: the ways it gave (each such test failed on the code before its fix)
and the ways it held.

- A holder that died between a new batch's index and the renewal clearing ``writing`` leaves
  the batch named in the lease; the next holder looks for its index to tell an unfinished tar
  from a committed batch, and must delete the tar only when the index is *absent* (404), never
  on another failure of that lookup (a 503, a 403): the tar of a committed batch, whose index
  replaces batches the next passes delete, would be gone.
- A pass killed between a new index and the catalogs' ``put_index`` of it: the pass that
  deletes the batches it replaces, once their grace period is over, must put it first, or the
  fleet's PostgreSQL catalog names tars that are gone.
- The next holder dies too before it has deleted an unfinished tar: the tar stays named for
  the one after (it was forgotten, and with it copies of objects that may be deleted later:
  the erasure promise broken), in both kinds of lease.
- (held) A key overwritten and another deleted through the daemon while a pass carries their
  old copies into a new batch: the new version and the delete win, through the daemon and in
  the indexes, and the next pass drops the moved copies.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import psycopg
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from click.testing import CliRunner

from s3batchd.cli.main import main
from s3batchd.compaction.compactor import Compactor
from s3batchd.compaction.lease import Lease, lease_key
from s3batchd.compaction.pglease import AdvisoryLease
from s3batchd.config import load_settings
from s3batchd.index import tar_key
from tests.batches import indexes
from tests.conftest import Daemon, DaemonFactory, wait_for
from tests.faultproxy import FaultProxy
from tests.postgres import LocalPostgres
from tests.test_compaction import PREFIX, _settings, _write_and_delete, survey_keys
from tests.test_compaction_fence import _after_new_tar
from tests.test_compaction_pglease import _migrated, _pg_settings
from tests.test_fleet_postgres import fleet_daemon

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from s3batchd.cli.seaweed import LocalS3

RULES: dict[str, Any] = {"erase_within_s": 0, "payback_days": 1e7}


def _through(proxy: FaultProxy, server: LocalS3) -> S3Client:
    client: S3Client = boto3.client(
        "s3",
        endpoint_url=proxy.url,
        aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key,
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 1, "mode": "standard"}),
    )
    return client


def test_a_failed_lookup_of_the_index_never_deletes_a_committed_batch(
    start_daemon: DaemonFactory, s3: S3Client, s3_server: LocalS3, bucket: str
) -> None:
    daemon: Daemon = start_daemon()
    written = _write_and_delete(daemon, s3, bucket)
    live = set(written.bodies) - written.deleted
    # A pass commits a new batch (the old ones stay for their grace period)...
    committed = Compactor(s3, bucket, _settings(daemon, **RULES, grace_s=3600)).run()
    assert len(committed.written) == 1
    batch_id = committed.written[0].batch_id
    # ...and its holder died before the renewal that clears ``writing``.
    dead = Lease(s3, bucket, PREFIX, owner="dead", duration_s=-1)  # expired at once
    dead.take()
    dead.renew(writing=batch_id)

    proxy = FaultProxy(int(s3_server.endpoint_url.rsplit(":", 1)[1])).start()
    try:
        proxy.set("error", status=503, code="SlowDown", only_method="HEAD")
        with pytest.raises(ClientError):
            Compactor(_through(proxy, s3_server), bucket, _settings(daemon, **RULES)).run()
    finally:
        proxy.stop()
    s3.head_object(Bucket=bucket, Key=tar_key(PREFIX, batch_id))  # still there
    lease = json.loads(s3.get_object(Bucket=bucket, Key=lease_key(PREFIX))["Body"].read())
    assert lease["writing"] == batch_id  # still named for the next pass
    # The next pass, the lookup answered, finds the batch committed: nothing deleted.
    again = Compactor(s3, bucket, _settings(daemon, **RULES, grace_s=0)).run()
    assert again.orphans == []
    assert sorted(again.deleted) == sorted(written.old_batches)
    assert survey_keys(s3, bucket) == sorted(live)


def test_an_overwrite_and_a_delete_during_a_pass_win_over_the_moved_copies(
    start_daemon: DaemonFactory, s3: S3Client, s3_server: LocalS3, bucket: str
) -> None:
    daemon: Daemon = start_daemon()
    written = _write_and_delete(daemon, s3, bucket)
    live = sorted(set(written.bodies) - written.deleted)
    overwritten, deleted = live[0], live[1]
    client = daemon.client()
    slow = s3_server.client()
    uploaded: list[str] = []
    before = {d["batch_id"] for d in indexes(s3, bucket)}

    def write_meanwhile() -> None:
        # Between the new tar and its index: the pass carries the old copies of both keys.
        client.put_object(Bucket=bucket, Key=overwritten, Body=b"the new version")
        client.delete_object(Bucket=bucket, Key=deleted)
        wait_for(lambda: {overwritten, deleted} <= _uploaded_keys(s3, bucket, before))
        uploaded.append("both")

    _after_new_tar(slow, write_meanwhile)
    report = Compactor(slow, bucket, _settings(daemon, **RULES, grace_s=0)).run()
    assert uploaded == ["both"]
    assert len(report.written) == 1
    new = report.written[0].batch_id
    carried = next(d for d in indexes(s3, bucket) if d["batch_id"] == new)["objects"]
    assert {overwritten, deleted} <= {e["key"] for e in carried}  # the old copies moved
    assert client.get_object(Bucket=bucket, Key=overwritten)["Body"].read() == b"the new version"
    with pytest.raises(ClientError, match="NoSuchKey"):
        client.get_object(Bucket=bucket, Key=deleted)
    # The indexes alone say the same: the moved copies are dead, and the next pass drops them.
    dry = Compactor(s3, bucket, _settings(daemon, **RULES, grace_s=0)).run(dry_run=True)
    assert dry.survey is not None
    assert dry.survey.dead_objects == 2
    Compactor(s3, bucket, _settings(daemon, **RULES, grace_s=0, min_dead_ratio=0.01)).run()
    assert survey_keys(s3, bucket) == sorted(set(live) - {deleted})
    for key in set(live) - {overwritten, deleted}:
        assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == written.bodies[key]
    # The old tars are gone: the daemon's catalog has learned the compacted batches by now (a
    # follow round or a read's search), the moved old copies among their entries; the new
    # version and the delete still win.
    assert client.get_object(Bucket=bucket, Key=overwritten)["Body"].read() == b"the new version"
    with pytest.raises(ClientError, match="NoSuchKey"):
        client.get_object(Bucket=bucket, Key=deleted)


def _uploaded_keys(s3: S3Client, bucket: str, before: set[str]) -> set[str]:
    """Keys written or deleted in the batches of daemons (not compactors) in the bucket but
    those of ``before``."""
    found: set[str] = set()
    for document in indexes(s3, bucket):
        if "compactor-" in document["batch_id"] or document["batch_id"] in before:
            continue
        found |= {e["key"] for e in document["objects"]}
        found |= {t["key"] for t in document.get("tombstones", ())}
    return found


def test_a_batch_committed_by_a_pass_that_died_before_the_fleet_catalog_learned_it(
    tmp_path: Path,
    s3_server: LocalS3,
    s3: S3Client,
    postgres_dsn: str,
    postgres_server: LocalPostgres,
    bucket: str,
) -> None:
    # A pass dies between its new index and the fleet catalog's put_index of it; a later pass
    # deletes the replaced batches once their grace period is over: the fleet's catalog must
    # learn the new batch before that, or every daemon reads a tar that is gone.
    env = {
        "AWS_ACCESS_KEY_ID": s3_server.access_key,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
        "S3BATCHD_COMPACTION__ERASE_WITHIN_S": "0",
        "S3BATCHD_COMPACTION__PAYBACK_DAYS": "10000000",
        "S3BATCHD_COMPACTION__GRACE_S": "0",
    }
    with fleet_daemon(tmp_path / "a", s3_server, postgres_dsn) as a:
        client = a.client()
        bodies = {f"h/{n:02d}": f"fleet body {n} ".encode() * (20 + n) for n in range(10)}
        for key, body in bodies.items():
            client.put_object(Bucket=bucket, Key=key, Body=body)
        wait_for(lambda: sum(len(d["objects"]) for d in indexes(s3, bucket)) == len(bodies))
        deleted = sorted(bodies)[:6]
        for key in deleted:
            client.delete_object(Bucket=bucket, Key=key)
        wait_for(lambda: sum(len(d.get("tombstones", [])) for d in indexes(s3, bucket)) == 6)

        settings = load_settings(a.config_path)
        rules = settings.compaction.model_copy(update={**RULES, "grace_s": 3600})
        died = Compactor(s3, bucket, settings.model_copy(update={"compaction": rules}))

        def killed(written: Any) -> None:
            raise RuntimeError("killed before the fleet catalog learned the batch")

        with pytest.raises(RuntimeError):
            died.run(on_written=killed)
        config = ["--config", str(a.config_path)]
        result = CliRunner().invoke(main, ["compact", "--bucket", bucket, *config], env=env)
        assert result.exit_code == 0, result.output
        assert "deleted (did): 0 replaced" not in result.output
    # The fleet's catalog names the tar each live key is in now, never one that is gone.
    tars = {document["tar"]["key"] for document in indexes(s3, bucket)}
    with psycopg.connect(postgres_dsn, autocommit=True) as connection:
        for key in sorted(bodies)[6:]:
            row = connection.execute(
                "SELECT tar_key FROM s3batchd_objects WHERE bucket = %s AND key = %s",
                (bucket, key.encode()),
            ).fetchone()
            assert row is not None, key
            assert row[0] in tars, key


def test_an_unfinished_tar_stays_named_through_a_holder_that_died_before_deleting_it(
    s3: S3Client, bucket: str, daemon: Daemon
) -> None:
    # The first holder died writing a batch; the next took the lease and died too, before it
    # deleted that tar. Forgotten, the tar (copies of objects that may be deleted later) would
    # stay for ever, past the erasure promise.
    dead = Lease(s3, bucket, PREFIX, owner="dead", duration_s=-1)  # expired at once
    dead.take()
    batch_id = "20270115T000000000Z-compactor-0123abcd-000001"
    dead.renew(writing=batch_id)
    orphan = tar_key(PREFIX, batch_id)
    s3.put_object(Bucket=bucket, Key=orphan, Body=b"\0" * 10240)
    Lease(s3, bucket, PREFIX, owner="died too", duration_s=-1).take()  # and never released
    report = Compactor(s3, bucket, daemon.settings).run()
    assert report.orphans == [batch_id]
    with pytest.raises(ClientError):
        s3.head_object(Bucket=bucket, Key=orphan)
    lease = json.loads(s3.get_object(Bucket=bucket, Key=lease_key(PREFIX))["Body"].read())
    assert "writing" not in lease  # finished: no longer named


def test_an_unfinished_tar_stays_named_through_a_lock_holder_that_died_before_deleting_it(
    s3: S3Client, bucket: str, daemon: Daemon, postgres_dsn: str
) -> None:
    dsn = _migrated(postgres_dsn)
    dead = AdvisoryLease(dsn, bucket, PREFIX, owner="dead", timeout_s=2.0)
    dead.take()
    batch_id = "20270115T000000000Z-compactor-0123abcd-000002"
    dead.renew(writing=batch_id)
    dead._drop()  # the session ends without a word: the lock goes with it
    orphan = tar_key(PREFIX, batch_id)
    s3.put_object(Bucket=bucket, Key=orphan, Body=b"\0" * 10240)
    second = AdvisoryLease(dsn, bucket, PREFIX, owner="died too", timeout_s=2.0)
    second.take()
    assert second.found_writing == batch_id
    second._drop()
    report = Compactor(s3, bucket, _pg_settings(daemon, dsn)).run()
    assert report.orphans == [batch_id]
    with pytest.raises(ClientError):
        s3.head_object(Bucket=bucket, Key=orphan)
    third = AdvisoryLease(dsn, bucket, PREFIX, owner="third", timeout_s=2.0)
    third.take()
    assert third.found_writing == ""  # finished: no longer named
    third.release()
