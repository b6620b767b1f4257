"""The compaction lease with ``catalog.backend = "postgres"``: a PostgreSQL advisory lock
(compaction/pglease.py), against a real PostgreSQL server and SeaweedFS. Two compactors at
once: one is refused; a compactor killed with the lock held leaves it to the next one at once
(no expiry to wait out), and the tar it was writing is deleted by that one; a normal pass
leaves the lock free and writes no lease object into the bucket."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from botocore.exceptions import ClientError
from click.testing import CliRunner
from pydantic import SecretStr

from s3batchd.catalog.postgres import PostgresCatalog
from s3batchd.cli.main import main
from s3batchd.compaction.compactor import Compactor
from s3batchd.compaction.lease import LEASE_NAME
from s3batchd.compaction.pglease import AdvisoryLease, lock_holder
from s3batchd.config import Settings
from s3batchd.errors import LeaseHeld
from tests.batches import indexes, keys
from tests.conftest import Daemon, DaemonFactory, wait_for
from tests.daemon_process import DaemonProcess
from tests.faultproxy import FaultProxy
from tests.postgres import LocalPostgres
from tests.test_compaction import PREFIX, _env, _write_and_delete, survey_keys
from tests.test_fleet_postgres import scrape

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from s3batchd.cli.seaweed import LocalS3

RULES: dict[str, Any] = {"erase_within_s": 0, "grace_s": 0, "payback_days": 1e7}


def _migrated(dsn: str) -> str:
    async def migrate() -> None:
        catalog = PostgresCatalog(dsn)
        try:
            await catalog.migrate()
        finally:
            await catalog.close()

    asyncio.run(migrate())
    return dsn


def _pg_settings(daemon: Daemon, dsn: str, **compaction: Any) -> Settings:
    settings = daemon.settings
    catalog = settings.catalog.model_copy(update={"backend": "postgres", "dsn": SecretStr(dsn)})
    rules = settings.compaction.model_copy(update={**RULES, **compaction})
    return settings.model_copy(update={"catalog": catalog, "compaction": rules})


def _sessions(dsn: str) -> list[str]:
    """The ``application_name`` of every compactor's session on the database."""
    with psycopg.connect(dsn, autocommit=True) as connection:
        rows = connection.execute(
            "SELECT application_name FROM pg_stat_activity "
            "WHERE application_name LIKE 's3batchd compaction %'"
        ).fetchall()
    return [str(row[0]) for row in rows]


def _holder(dsn: str, bucket: str) -> str:
    with psycopg.connect(dsn, autocommit=True) as connection:
        return lock_holder(connection, bucket, PREFIX)


def test_two_compactors_at_once_in_postgres_mode_never_lose_or_duplicate_an_object(
    start_daemon: DaemonFactory, s3: S3Client, bucket: str, postgres_dsn: str
) -> None:
    dsn = _migrated(postgres_dsn)
    daemon = start_daemon()
    written = _write_and_delete(daemon, s3, bucket)
    start = threading.Barrier(2)
    outcomes: list[str] = []

    def compact() -> None:
        start.wait(30)
        try:
            report = Compactor(s3, bucket, _pg_settings(daemon, dsn)).run()
        except LeaseHeld as exc:
            assert "PostgreSQL advisory lock" in str(exc)
            outcomes.append("lease held")
        else:
            outcomes.append(f"rewrote {len(report.chosen)}")

    threads = [threading.Thread(target=compact) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    # One rewrote every batch; the other found the lock held, or ran after it: nothing left.
    assert sorted(outcomes) in (
        sorted([f"rewrote {len(written.old_batches)}", "lease held"]),
        sorted([f"rewrote {len(written.old_batches)}", "rewrote 0"]),
    )
    assert survey_keys(s3, bucket) == sorted(set(written.bodies) - written.deleted)
    # No lease object and no conditional-write probe: the lock is PostgreSQL's.
    assert not [k for k in keys(s3, bucket) if LEASE_NAME in k or "compaction.probe" in k]
    assert _holder(dsn, bucket) == ""


def test_a_held_lock_refuses_the_pass_and_the_command_and_a_pass_releases_it(
    start_daemon: DaemonFactory, s3: S3Client, bucket: str, postgres_dsn: str
) -> None:
    dsn = _migrated(postgres_dsn)
    daemon = start_daemon()
    written = _write_and_delete(daemon, s3, bucket)
    first = AdvisoryLease(dsn, bucket, PREFIX, owner="first", timeout_s=2.0)
    first.take()
    with pytest.raises(LeaseHeld, match=r"held by first \(PostgreSQL pid \d+"):
        Compactor(s3, bucket, _pg_settings(daemon, dsn)).run()
    env = {
        **_env(daemon, erase_within_s="0", grace_s="0", payback_days="10000000"),
        "S3BATCHD_CATALOG__BACKEND": "postgres",
        "S3BATCHD_CATALOG__DSN": dsn,
    }
    result = CliRunner().invoke(main, ["compact", "--bucket", bucket], env=env)
    assert result.exit_code == 1, result.output
    assert "held by first (PostgreSQL pid" in result.output
    assert "s3batchd compaction first" in result.output  # its application_name
    first.release()

    report = Compactor(s3, bucket, _pg_settings(daemon, dsn)).run()
    assert len(report.chosen) == len(written.old_batches)
    # Released after the pass: nobody holds it, the session is closed, another takes it.
    assert _holder(dsn, bucket) == ""
    assert _sessions(dsn) == []
    again = AdvisoryLease(dsn, bucket, PREFIX, owner="again", timeout_s=2.0)
    again.take()
    assert again.found_writing == ""  # the pass's batch was committed
    again.release()
    assert survey_keys(s3, bucket) == sorted(set(written.bodies) - written.deleted)


def test_a_compactor_killed_holding_the_lock_leaves_it_to_the_next_at_once(
    start_daemon: DaemonFactory,
    s3: S3Client,
    bucket: str,
    s3_server: LocalS3,
    postgres_dsn: str,
) -> None:
    dsn = _migrated(postgres_dsn)
    daemon = start_daemon()
    written = _write_and_delete(daemon, s3, bucket)
    live = set(written.bodies) - written.deleted
    proxy = FaultProxy(int(s3_server.endpoint_url.rsplit(":", 1)[1])).start()
    try:
        # The index PUT of the new batch is never answered: the command is killed while it
        # waits, holding the lock (the default lease_s of 600 s plays no part).
        proxy.set("blackhole", only_method="PUT", only_target=".index.json")
        env = {
            **os.environ,
            **_env(daemon, erase_within_s="0", grace_s="0", payback_days="10000000"),
            "S3BATCHD_UPSTREAM__ENDPOINT_URL": proxy.url,
            "S3BATCHD_CATALOG__BACKEND": "postgres",
            "S3BATCHD_CATALOG__DSN": dsn,
        }
        command = [sys.executable, "-m", "s3batchd", "compact", "--bucket", bucket]
        process = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            wait_for(
                lambda: any(
                    line.startswith("PUT ") and ".index.json" in line.split(" ")[1]
                    for line in proxy.request_lines
                ),
                timeout=60,
            )
            assert "s3batchd compaction compactor-" in _holder(dsn, bucket)
        finally:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(30)
    finally:
        proxy.stop()

    # The server ends the killed process's session when it reads the closed socket.
    wait_for(lambda: _sessions(dsn) == [])
    again = Compactor(s3, bucket, _pg_settings(daemon, dsn, lease_s=600)).run()
    # The tar the killed compactor wrote, named in s3batchd_compaction, is not a batch: gone.
    assert len(again.orphans) == 1
    assert len(again.written) == 1
    names = keys(s3, bucket)
    tars = {k.removesuffix(".tar") for k in names if k.endswith(".tar")}
    assert tars == {k.removesuffix(".index.json") for k in names if k.endswith(".index.json")}
    assert survey_keys(s3, bucket) == sorted(live)
    assert Compactor(s3, bucket, _pg_settings(daemon, dsn)).run(dry_run=True).chosen == []
    for key in names:
        stored = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert not [m for m in written.markers() if m in stored], key


def test_the_daemons_pass_in_postgres_mode_waits_for_the_lock_then_compacts(
    tmp_path: Path,
    s3_server: LocalS3,
    s3: S3Client,
    postgres_dsn: str,
    postgres_server: LocalPostgres,
    bucket: str,
) -> None:
    dsn = _migrated(postgres_dsn)
    operator = AdvisoryLease(dsn, bucket, PREFIX, owner="operator", timeout_s=2.0)
    operator.take()
    (tmp_path / "a").mkdir()
    daemon = DaemonProcess(
        tmp_path / "a",
        s3_server,
        catalog={"backend": "postgres", "dsn": dsn},
        batch={"linger_ms": 200},
        compaction={"enabled": True, "interval_s": 0.5, **RULES},
    )
    with daemon as a:
        client = a.client()
        bodies = {f"p/{n:02d}": f"locked body {n} ".encode() * (20 + n) for n in range(10)}
        for key, body in bodies.items():
            client.put_object(Bucket=bucket, Key=key, Body=body)
        wait_for(lambda: sum(len(d["objects"]) for d in indexes(s3, bucket)) == len(bodies))
        deleted = sorted(bodies)[:6]
        for key in deleted:
            client.delete_object(Bucket=bucket, Key=key)
        wait_for(lambda: sum(len(d.get("tombstones", [])) for d in indexes(s3, bucket)) == 6)

        def passes(result: str) -> float:
            return scrape(a).get(("s3batchd_compaction_passes_total", (("result", result),)), 0)

        wait_for(lambda: passes("skipped") >= 1, timeout=60)
        assert passes("done") == 0
        assert {d["version"] for d in indexes(s3, bucket)} == {1}
        operator.release()
        wait_for(
            lambda: [d["version"] for d in indexes(s3, bucket) if d["objects"]] == [2], timeout=60
        )
        assert not [k for k in keys(s3, bucket) if LEASE_NAME in k or "compaction.probe" in k]
        for key in sorted(bodies)[6:]:
            assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == bodies[key]
        for key in deleted:
            with pytest.raises(ClientError):
                client.get_object(Bucket=bucket, Key=key)


def test_a_rollback_to_schema_version_1_migrates_again_keeping_the_compaction_table(
    postgres_dsn: str,
) -> None:
    dsn = _migrated(postgres_dsn)
    lease = AdvisoryLease(dsn, "b", PREFIX, owner="first", timeout_s=2.0)
    lease.take()
    lease.renew(writing="20270115T000000000Z-compactor-0123abcd-000001")
    lease.release()
    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute("UPDATE s3batchd_schema SET version = 1")  # the rollback
    _migrated(dsn)  # the release after it: migration 2 again, the table kept
    with psycopg.connect(dsn, autocommit=True) as connection:
        assert connection.execute("SELECT version FROM s3batchd_schema").fetchall() == [(2,)]
    again = AdvisoryLease(dsn, "b", PREFIX, owner="again", timeout_s=2.0)
    again.take()
    assert again.found_writing == "20270115T000000000Z-compactor-0123abcd-000001"
    again.release()
