"""Compaction against SeaweedFS: a pass run by ``s3batchd compact`` (or the Compactor it
wraps) rewrites batches with dead bytes, the daemon reads every moved key at its new place, and
after the grace period nothing of a deleted object is left in the bucket."""

from __future__ import annotations

import math
import os
import secrets
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest
from botocore.exceptions import ClientError
from click.testing import CliRunner

from s3batchd.cli.main import main
from s3batchd.compaction.compactor import Compactor
from s3batchd.compaction.lease import Lease, verify_conditional_writes
from s3batchd.config import Settings
from s3batchd.errors import LeaseHeld
from s3batchd.index import index_key, tar_key
from s3batchd.reader import iter_batch
from tests.batches import indexes, keys
from tests.conftest import Daemon, DaemonFactory, wait_for
from tests.faultproxy import FaultProxy

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from s3batchd.cli.seaweed import LocalS3

PREFIX = "s3batchd/"


def _env(daemon: Daemon, **compaction: str) -> dict[str, str]:
    env = {
        "S3BATCHD_UPSTREAM__ENDPOINT_URL": daemon.settings.upstream.endpoint_url,
        "S3BATCHD_SPOOL__DIR": str(daemon.settings.spool.dir),
    }
    env.update({f"S3BATCHD_COMPACTION__{k.upper()}": v for k, v in compaction.items()})
    return env


def _invoke(env: dict[str, str], *args: str) -> str:
    result = CliRunner().invoke(main, list(args), env=env)
    assert result.exit_code == 0, result.output
    return result.output


def _body(n: int, token: str) -> bytes:
    return f"marker-{n:04d}-{token}|".encode() * (40 + n)


def _settings(daemon: Daemon, **compaction: Any) -> Settings:
    config = daemon.settings.compaction.model_copy(update=compaction)
    return daemon.settings.model_copy(update={"compaction": config})


def _batch_keys(s3: S3Client, bucket: str) -> set[str]:
    return {k for k in keys(s3, bucket) if k.startswith(PREFIX) and k.endswith((".tar", ".json"))}


@dataclass
class Written:
    """Objects written through a daemon, 60 % of each batch's deleted."""

    token: str
    bodies: dict[str, bytes]
    etags: dict[str, str]
    deleted: set[str]
    old_batches: dict[str, str]
    """Tar key by batch id of the batches that held the objects."""

    def markers(self) -> list[bytes]:
        """The unique markers of the deleted objects' bodies."""
        return [f"marker-{int(key[2:]):04d}-{self.token}".encode() for key in self.deleted]


def _write_and_delete(daemon: Daemon, s3: S3Client, bucket: str) -> Written:
    client = daemon.client()
    token = secrets.token_hex(4)
    bodies = {f"k/{n:03d}": _body(n, token) for n in range(20)}
    etags = {}
    for n, (key, body) in enumerate(bodies.items()):
        answer = client.put_object(
            Bucket=bucket, Key=key, Body=body, ContentType="text/x-test", Metadata={"n": str(n)}
        )
        etags[key] = answer["ETag"]
    wait_for(lambda: sum(len(d["objects"]) for d in indexes(s3, bucket)) == len(bodies))
    # 60 % of each batch's objects deleted through the daemon.
    deleted: set[str] = set()
    old_batches = {}
    for document in indexes(s3, bucket):
        names = sorted(entry["key"] for entry in document["objects"])
        deleted |= set(names[: math.ceil(len(names) * 0.6)])
        old_batches[document["batch_id"]] = document["tar"]["key"]
    for key in deleted:
        client.delete_object(Bucket=bucket, Key=key)
    wait_for(lambda: sum(len(d.get("tombstones", [])) for d in indexes(s3, bucket)) == len(deleted))
    return Written(token, bodies, etags, deleted, old_batches)


def test_compact_erases_deleted_objects_and_moves_the_live_ones(
    start_daemon: DaemonFactory, s3: S3Client, bucket: str
) -> None:
    daemon = start_daemon()
    client = daemon.client()
    written = _write_and_delete(daemon, s3, bucket)
    bodies, etags, deleted, old_batches = (
        written.bodies,
        written.etags,
        written.deleted,
        written.old_batches,
    )
    live = sorted(set(bodies) - deleted)

    # 11 kB dead save 0.0000003 USD a month: two PUTs (0.00001 USD) do not pay for that.
    default = _invoke(_env(daemon, erase_within_s="0"), "compact", "--bucket", bucket, "--dry-run")
    assert "rewrite (would): 0 batches" in default
    env = _env(daemon, erase_within_s="0", grace_s="3600", payback_days="10000000")
    untouched = _batch_keys(s3, bucket)
    dry = _invoke(env, "compact", "--bucket", bucket, "--dry-run")
    assert f"rewrite (would): {len(old_batches)} batches (erase 0, dead {len(old_batches)})" in dry
    assert "oldest unerased delete or overwrite: " in dry
    before = _batch_keys(s3, bucket)
    assert before == untouched  # a dry run writes nothing
    first = _invoke(env, "compact", "--bucket", bucket)
    assert f"rewrite (did): {len(old_batches)} batches" in first
    assert "deleted (did): 0 replaced batches" in first  # within the grace period
    compacted = [d for d in indexes(s3, bucket) if d["version"] == 2]  # schema-checked
    assert len(compacted) == 1
    assert sorted(compacted[0]["replaces"]) == sorted(old_batches)
    assert before < _batch_keys(s3, bucket)  # the old batches stay readable until the grace

    # The daemon's catalog learns the new places (reindex; the follow loop of issue 24 later).
    _invoke(env, "reindex", f"s3://{bucket}/{PREFIX}")
    second = _invoke({**env, "S3BATCHD_COMPACTION__GRACE_S": "0"}, "compact", "--bucket", bucket)
    assert f"deleted (did): {len(old_batches)} replaced batches" in second
    assert "rewrite (did): 0 batches" in second  # idempotent: nothing more to do
    assert "dead 0 bytes in 0 objects" in second
    assert "oldest unerased" not in second
    for batch_id, old_tar in old_batches.items():
        for gone in (old_tar, index_key(PREFIX, batch_id)):
            with pytest.raises(ClientError):
                s3.head_object(Bucket=bucket, Key=gone)

    # Nothing in the bucket holds a deleted object's marker any more.
    markers = written.markers()
    for key in keys(s3, bucket):
        stored = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert not [m for m in markers if m in stored], key
    # Every live object, by key through the daemon and through the new index.
    for key in live:
        got = client.get_object(Bucket=bucket, Key=key)
        assert got["Body"].read() == bodies[key]
        assert got["ETag"] == etags[key]
        assert got["Metadata"] == {"n": str(int(key[2:]))}
        assert got["ContentType"] == "text/x-test"
    for key in deleted:
        with pytest.raises(ClientError):
            client.get_object(Bucket=bucket, Key=key)
    read = {
        entry["key"]: (data, entry["etag"], entry["metadata"])
        for entry, data in iter_batch(s3, bucket, compacted[0]["tar"]["key"])
    }
    assert read == {key: (bodies[key], etags[key], {"n": str(int(key[2:]))}) for key in live}


def test_an_overwrite_is_dead_and_the_erase_deadline_rewrites_below_the_ratio(
    daemon: Daemon, s3: S3Client, bucket: str
) -> None:
    client = daemon.client()
    for n in range(10):
        client.put_object(Bucket=bucket, Key=f"o/{n}", Body=b"first-%d " % n * 50)
    wait_for(lambda: sum(len(d["objects"]) for d in indexes(s3, bucket)) == 10)
    first_batches = {d["batch_id"] for d in indexes(s3, bucket)}
    client.put_object(Bucket=bucket, Key="o/3", Body=b"second " * 50)
    wait_for(lambda: sum(len(d["objects"]) for d in indexes(s3, bucket)) == 11)

    ratio_only = Compactor(s3, bucket, _settings(daemon, erase_within_s=0, grace_s=0))
    report = ratio_only.run(dry_run=True)
    assert report.survey is not None
    assert report.survey.dead_objects == 1  # the older version of o/3
    assert report.survey.dead_bytes == len(b"first-3 " * 50)
    assert report.chosen == []  # 1 of 10 objects dead: below min_dead_ratio

    deadline = Compactor(s3, bucket, _settings(daemon, erase_within_s=0.001, grace_s=0))
    report = deadline.run()
    assert [(c.batch.batch_id in first_batches, c.reason) for c in report.chosen] == [
        (True, "erase")
    ]
    for key in keys(s3, bucket):
        assert b"first-3 " not in s3.get_object(Bucket=bucket, Key=key)["Body"].read(), key
    objects = {
        entry["key"]: data
        for document in indexes(s3, bucket)
        for entry, data in iter_batch(s3, bucket, document["tar"]["key"])
    }
    assert objects == {f"o/{n}": b"first-%d " % n * 50 for n in range(10) if n != 3} | {
        "o/3": b"second " * 50
    }


def test_two_compactors_one_lease(s3: S3Client, bucket: str, daemon: Daemon) -> None:
    verify_conditional_writes(s3, bucket, PREFIX)  # SeaweedFS honours If-None-Match
    first = Lease(s3, bucket, PREFIX, owner="first", duration_s=600)
    second = Lease(s3, bucket, PREFIX, owner="second", duration_s=600)
    first.take()
    with pytest.raises(LeaseHeld, match="held by first"):
        second.take()
    with pytest.raises(LeaseHeld):
        Compactor(s3, bucket, daemon.settings).run()
    held = first.etag
    first.release()
    with pytest.raises(LeaseHeld, match="not held"):
        first.renew()
    second.take()
    first.etag = held  # a holder that missed the lease's end: If-Match on its old ETag fails
    with pytest.raises(LeaseHeld, match="lost"):
        first.renew()
    second.release()


def test_a_pass_deletes_the_tar_of_a_holder_that_died_before_its_index(
    s3: S3Client, bucket: str, daemon: Daemon
) -> None:
    dead = Lease(s3, bucket, PREFIX, owner="dead", duration_s=-1)  # expired at once
    dead.take()
    batch_id = "20270115T000000000Z-compactor-0123abcd-000001"
    dead.renew(writing=batch_id)
    orphan = tar_key(PREFIX, batch_id)
    s3.put_object(Bucket=bucket, Key=orphan, Body=b"\0" * 10240)
    report = Compactor(s3, bucket, daemon.settings).run()
    assert report.orphans == [batch_id]
    with pytest.raises(ClientError):
        s3.head_object(Bucket=bucket, Key=orphan)


@pytest.mark.parametrize(
    ("method", "target", "step"),
    [
        ("PUT", ".index.json", "after the new tar, before its index"),
        ("DELETE", ".tar", "after the new index, before the deletes"),
        ("DELETE", ".index.json", "during the deletes: an old tar gone, its index not"),
    ],
)
def test_a_compactor_killed_at_each_step_converges_on_the_next_pass(
    start_daemon: DaemonFactory,
    s3: S3Client,
    bucket: str,
    s3_server: LocalS3,
    method: str,
    target: str,
    step: str,
) -> None:
    daemon = start_daemon()
    written = _write_and_delete(daemon, s3, bucket)
    live = set(written.bodies) - written.deleted
    proxy = FaultProxy(int(s3_server.endpoint_url.rsplit(":", 1)[1])).start()
    try:
        # The request of that step is never answered: the command is killed while it waits.
        proxy.set("blackhole", only_method=method, only_target=target)
        env = {
            **os.environ,
            **_env(daemon, erase_within_s="0", grace_s="0", payback_days="10000000"),
            "S3BATCHD_UPSTREAM__ENDPOINT_URL": proxy.url,
            "S3BATCHD_COMPACTION__LEASE_S": "0.001",  # the next pass need not wait for it
        }
        command = [sys.executable, "-m", "s3batchd", "compact", "--bucket", bucket]
        process = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            wait_for(
                lambda: any(
                    line.startswith(f"{method} ") and target in line.split(" ")[1]
                    for line in proxy.request_lines
                ),
                timeout=60,
            )
        finally:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(30)
    finally:
        proxy.stop()

    rules: dict[str, float] = {"erase_within_s": 0, "grace_s": 0, "payback_days": 1e7}
    again = Compactor(s3, bucket, _settings(daemon, **rules, lease_s=0.001)).run()
    assert again.survey is not None, step
    # Killed before its index: the new tar is not a batch and goes; after it: the new batch
    # stands, and the next pass only deletes what it replaces.
    assert len(again.orphans) == (method == "PUT"), step
    assert len(again.written) == (method == "PUT"), step
    # Converged: no replaced batch left, no tar without its index, every live key exactly once
    # across the indexes with its bytes, and nothing of a deleted object anywhere.
    names = keys(s3, bucket)
    tars = {k.removesuffix(".tar") for k in names if k.endswith(".tar")}
    assert tars == {k.removesuffix(".index.json") for k in names if k.endswith(".index.json")}
    assert survey_keys(s3, bucket) == sorted(live), step
    assert (
        Compactor(s3, bucket, _settings(daemon, erase_within_s=0, grace_s=0))
        .run(dry_run=True)
        .chosen
        == []
    ), step
    for key in names:
        stored = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert not [m for m in written.markers() if m in stored], (step, key)


def survey_keys(s3: S3Client, bucket: str) -> list[str]:
    """The keys of every object in every index of the bucket, with their bytes checked."""
    found = []
    for document in indexes(s3, bucket):
        found += [entry["key"] for entry, _ in iter_batch(s3, bucket, document["tar"]["key"])]
    return sorted(found)


def test_the_daemon_compacts_with_compaction_enabled_and_follows_the_moved_keys(
    start_daemon: DaemonFactory, s3: S3Client, bucket: str
) -> None:
    daemon = start_daemon(
        compaction={
            "enabled": True,
            "interval_s": 0.5,
            "erase_within_s": 0,
            "grace_s": 0,
            "payback_days": 1e7,
        }
    )
    written = _write_and_delete(daemon, s3, bucket)

    def erased() -> bool:
        for key in keys(s3, bucket):
            try:
                stored = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            except s3.exceptions.NoSuchKey:
                continue  # deleted by the daemon's pass since the listing
            if [m for m in written.markers() if m in stored]:
                return False
        return True

    wait_for(erased, timeout=60)
    # Passes run while the objects are written and deleted: one or more compacted batches.
    assert {d["version"] for d in indexes(s3, bucket) if d["objects"]} == {2}
    client = daemon.client()
    for key in set(written.bodies) - written.deleted:  # no reindex: the daemon's own pass
        got = client.get_object(Bucket=bucket, Key=key)
        assert got["Body"].read() == written.bodies[key], key
        assert got["ETag"] == written.etags[key], key
    for key in written.deleted:
        with pytest.raises(ClientError):
            client.get_object(Bucket=bucket, Key=key)


def test_two_compactors_at_once_never_lose_or_duplicate_an_object(
    start_daemon: DaemonFactory, s3: S3Client, bucket: str
) -> None:
    daemon = start_daemon()
    written = _write_and_delete(daemon, s3, bucket)
    rules: dict[str, float] = {"erase_within_s": 0, "grace_s": 0, "payback_days": 1e7}
    start = threading.Barrier(2)
    outcomes: list[str] = []

    def compact() -> None:
        start.wait(30)
        try:
            report = Compactor(s3, bucket, _settings(daemon, **rules)).run()
        except LeaseHeld:
            outcomes.append("lease held")
        else:
            outcomes.append(f"rewrote {len(report.chosen)}")

    threads = [threading.Thread(target=compact) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    # One rewrote every batch; the other found the lease held, or ran after it: nothing left.
    assert sorted(outcomes) in (
        sorted([f"rewrote {len(written.old_batches)}", "lease held"]),
        sorted([f"rewrote {len(written.old_batches)}", "rewrote 0"]),
    )
    assert survey_keys(s3, bucket) == sorted(set(written.bodies) - written.deleted)
