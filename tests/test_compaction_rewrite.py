"""How a compaction rewrite builds and uploads its tar, against SeaweedFS: through a scratch
file in the spool's ``_tmp/`` with a bounded part of the batches in memory, in parts above the
multipart threshold, and with nothing left on disk or in the bucket by a compactor killed
while uploading."""

from __future__ import annotations

import hashlib
import os
import secrets
import signal
import subprocess
import sys
import tarfile
import tracemalloc
import zlib
from typing import TYPE_CHECKING

import pytest
from click.testing import CliRunner

from s3batchd.cli.main import main
from s3batchd.compaction.compactor import Compactor
from s3batchd.compaction.rewrite import write_tar
from s3batchd.constants import MB
from s3batchd.errors import CompactionError
from s3batchd.index import IndexEntry
from s3batchd.reader import IntegrityError, Location, ReadStats, iter_batch, iter_many
from s3batchd.records import ObjectRecord
from s3batchd.spool.files import TMP_DIR
from s3batchd.spool.scratch import SCRATCH_PREFIX, ScratchTar, sweep
from tests.batches import indexes, keys
from tests.conftest import Daemon, DaemonFactory, wait_for
from tests.faultproxy import FaultProxy
from tests.test_compaction import _env, _write_and_delete

if TYPE_CHECKING:
    from pathlib import Path

    from mypy_boto3_s3 import S3Client

    from s3batchd.cli.seaweed import LocalS3
    from s3batchd.config import Settings

#: What a rewrite may hold in memory at its peak (Python allocations, tracemalloc), whatever
#: the size of the batches: about (READ_AHEAD + 2) x READ_SPAN of object data, plus the
#: clients' buffers.
MEMORY_BOUND = 40 * MB


#: Batches sealed by size only (and at shutdown), whatever the pace of the test.
_BATCHES = {"max_bytes": 48 * MB, "linger_ms": 600_000, "max_records": 100_000}


def _body(key: str, token: str, size: int) -> bytes:
    pattern = f"{key}-{token}|".encode()
    return (pattern * (size // len(pattern) + 1))[:size]


def _settings(daemon: Daemon, **compaction: float) -> Settings:
    """The daemon's settings for a pass that rewrites every batch with a third of its objects
    dead into one new batch, and deletes the old ones at once."""
    rules = {"erase_within_s": 0, "grace_s": 0, "payback_days": 1e7, "min_dead_ratio": 0.25}
    config = daemon.settings.compaction.model_copy(update={**rules, **compaction})
    batch = daemon.settings.batch.model_copy(update={"max_bytes": 256 * MB})
    return daemon.settings.model_copy(update={"compaction": config, "batch": batch})


def _scratch(daemon: Daemon) -> list[str]:
    tmp = daemon.settings.spool.dir / TMP_DIR
    return sorted(p.name for p in tmp.glob(f"{SCRATCH_PREFIX}*")) if tmp.exists() else []


def _write(
    daemon: Daemon, s3: S3Client, bucket: str, count: int, size: int
) -> tuple[str, dict[str, str]]:
    """PUT ``count`` objects of ``size`` bytes through the daemon, delete every third, stop
    the daemon (it seals and uploads its batches); the token of the bodies and the ETags of
    the others by key."""
    client = daemon.client()
    token = secrets.token_hex(4)
    etags = {}
    for n in range(count):
        key = f"big/{n:03d}"
        answer = client.put_object(
            Bucket=bucket, Key=key, Body=_body(key, token, size), Metadata={"token": token}
        )
        etags[key] = answer["ETag"]
    deleted = [key for n, key in enumerate(sorted(etags)) if n % 3 == 0]
    for key in deleted:
        client.delete_object(Bucket=bucket, Key=key)
        del etags[key]
    daemon.stop()
    assert sum(len(d["objects"]) for d in indexes(s3, bucket)) == count
    assert sum(len(d.get("tombstones", [])) for d in indexes(s3, bucket)) == len(deleted)
    return token, etags


def test_a_rewrite_of_large_batches_holds_a_bounded_part_of_them_in_memory(
    start_daemon: DaemonFactory, s3: S3Client, bucket: str
) -> None:
    # 72 objects of 1 MiB in batches of up to 48 MiB, a third deleted: one new batch of
    # 48 MiB of live objects, uploaded in parts (above the 16 MiB multipart threshold).
    daemon = start_daemon(batch=_BATCHES)
    token, live = _write(daemon, s3, bucket, 72, 1 * MB)
    assert daemon.settings.upload.multipart_threshold_bytes == 16 * MB
    tracemalloc.start()
    try:
        report = Compactor(s3, bucket, _settings(daemon)).run()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(report.written) == 1
    written = report.written[0]
    assert written.tar_size > 48 * MB  # more than the bound: built in memory, it would not fit
    assert peak < MEMORY_BOUND, f"peak {peak / MB:.1f} MiB"
    assert _scratch(daemon) == []  # the scratch tar is gone

    head = s3.head_object(Bucket=bucket, Key=written.tar_key)
    assert head["ContentLength"] == written.tar_size
    assert head["ETag"].endswith(f'-{-(-written.tar_size // (8 * MB))}"')  # 8 MiB parts
    # Every live object in the new batch as it was written: bytes (MD5 verified), ETag and
    # metadata.
    read = {}
    for entry, data in iter_batch(s3, bucket, written.tar_key):
        assert data == _body(entry["key"], token, 1 * MB), entry["key"]
        read[entry["key"]] = (entry["etag"], entry["metadata"])
    assert read == {key: (etag, {"token": token}) for key, etag in live.items()}


def test_a_compactor_killed_while_uploading_leaves_nothing_after_the_next_pass(
    start_daemon: DaemonFactory, s3: S3Client, bucket: str, s3_server: LocalS3
) -> None:
    # A new tar of about 24 MiB: a multipart upload, whose first part never gets an answer.
    daemon = start_daemon(batch=_BATCHES)
    _, live = _write(daemon, s3, bucket, 36, 1 * MB)
    proxy = FaultProxy(int(s3_server.endpoint_url.rsplit(":", 1)[1])).start()
    try:
        proxy.set("blackhole", only_method="PUT", only_target="partNumber=")
        env = {
            **os.environ,
            "S3BATCHD_UPSTREAM__ENDPOINT_URL": proxy.url,
            "S3BATCHD_SPOOL__DIR": str(daemon.settings.spool.dir),
            "S3BATCHD_BATCH__MAX_BYTES": str(256 * MB),
            "S3BATCHD_COMPACTION__ERASE_WITHIN_S": "0",
            "S3BATCHD_COMPACTION__MIN_DEAD_RATIO": "0.25",
            "S3BATCHD_COMPACTION__PAYBACK_DAYS": "10000000",
            "S3BATCHD_COMPACTION__LEASE_S": "0.001",  # the next pass need not wait for it
        }
        command = [sys.executable, "-m", "s3batchd", "compact", "--bucket", bucket]
        process = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            wait_for(lambda: any("partNumber=" in line for line in proxy.request_lines), 120)
        finally:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(30)
    finally:
        proxy.stop()
    # The killed compactor's scratch tar and the id of its multipart upload are left.
    tar, upload_id = _scratch(daemon)
    assert (tar.endswith(".tar"), upload_id) == (True, tar.replace(".tar", ".upload-id"))
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])

    again = Compactor(s3, bucket, _settings(daemon, lease_s=0.001)).run()
    assert len(again.orphans) == 1
    assert len(again.written) == 1
    assert _scratch(daemon) == []
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    found = {e["key"] for e, _ in iter_batch(s3, bucket, again.written[0].tar_key)}
    assert found == set(live)


def test_the_sweep_removes_the_scratch_tars_of_dead_processes_only(tmp_path: Path) -> None:
    tmp = tmp_path / TMP_DIR
    with ScratchTar.create(tmp, "20270115T000000000Z-compactor-0123abcd-000001") as mine:
        mine.write(b"x" * 1024)
        # A dead process's tar and upload id; an upload id left alone.
        dead = tmp / f"{SCRATCH_PREFIX}20270115T000000000Z-compactor-0123abcd-000002.tar"
        dead.write_bytes(b"y" * 1024)
        dead.with_suffix(".upload-id").write_text("id")
        lone = tmp / f"{SCRATCH_PREFIX}20270115T000000000Z-compactor-0123abcd-000003.upload-id"
        lone.write_text("id")
        assert sweep(tmp) == [dead]
        assert sorted(p.name for p in tmp.iterdir()) == [mine.path.name]
        assert mine.size == 1024
        assert mine.crc32 == f"{zlib.crc32(b'x' * 1024):08x}"
    assert list(tmp.iterdir()) == []


def test_iter_many_streams_an_object_longer_than_a_span_and_keeps_the_order(
    s3: S3Client, bucket: str
) -> None:
    blob = secrets.token_bytes(6 * MB)
    s3.put_object(Bucket=bucket, Key="t.tar", Body=blob)

    def at(offset: int, length: int, etag: str | None = None) -> Location:
        md5 = hashlib.md5(blob[offset : offset + length], usedforsecurity=False).hexdigest()
        return Location(bucket, "t.tar", offset, length, etag or f'"{md5}"')

    wanted = [at(4 * MB, 2 * MB), at(0, 100), at(100, 0), at(512, 1000), at(1 * MB, 3 * MB - 7)]
    stats = ReadStats()
    got = []
    for position, pieces in iter_many(s3, wanted, max_span=1 * MB, stats=stats):
        parts = list(pieces)
        assert all(len(part) <= 1 * MB for part in parts)
        got.append((position, len(parts), b"".join(parts)))
    assert [(p, n) for p, n, _ in got] == [(0, 2), (1, 1), (2, 1), (3, 1), (4, 3)]
    assert [data for _, _, data in got] == [
        blob[w.offset : w.end] for w in wanted
    ]  # two streamed, three read with one GET
    assert (stats.requests, stats.objects) == (3, 5)
    # A streamed object is verified at its end, after its pieces.
    wrong = at(1 * MB, 2 * MB, etag='"' + "0" * 32 + '"')
    [(_, pieces)] = list(iter_many(s3, [wrong], max_span=1 * MB))
    assert len(next(pieces)) == 1 * MB
    with pytest.raises(IntegrityError, match="MD5"):
        list(pieces)


def test_write_tar_lays_out_a_tar_that_tarfile_reads_and_refuses_a_short_object(
    tmp_path: Path,
) -> None:
    records = [
        ObjectRecord(key=key, size=len(data), md5_hex=hashlib.md5(data).hexdigest(), mtime=1.0)
        for key, data in (("a", b"x" * 700), ("b/../c", b""), ("d", b"yz"))
    ]
    tombstone = ObjectRecord(key="gone", size=0, md5_hex="0" * 32, mtime=2.0, deleted=True)
    entries = [IndexEntry(record, record.key, 0) for record in [*records, tombstone]]
    datas = [b"x" * 700, b"", b"yz"]
    with ScratchTar.create(tmp_path, "20270115T000000000Z-compactor-0123abcd-000001") as out:
        pieces = ((n, iter([data[:300], data[300:]])) for n, data in enumerate(datas))
        placed = write_tar(out, entries, pieces)
        assert out.size % (20 * 512) == 0
        assert out.crc32 == f"{zlib.crc32(out.path.read_bytes()):08x}"
        with tarfile.open(out.path) as archive:
            members = archive.getmembers()
            read = [archive.extractfile(m).read() for m in members[:3]]  # type: ignore[union-attr]
        assert read == datas
        assert [m.offset_data for m in members] == [entry.offset for entry in placed]
    with ScratchTar.create(tmp_path, "20270115T000000000Z-compactor-0123abcd-000002") as out:
        short = ((n, iter([data[:-1]])) for n, data in enumerate(datas))
        with pytest.raises(CompactionError, match="699 bytes read, 700 expected"):
            write_tar(out, entries, short)


def test_the_command_says_when_it_cannot_build_the_new_tar_in_the_spool(
    daemon: Daemon, s3: S3Client, bucket: str, tmp_path: Path
) -> None:
    written = _write_and_delete(daemon, s3, bucket)
    not_a_directory = tmp_path / "spool-file"
    not_a_directory.write_bytes(b"")
    env = {
        **_env(daemon, erase_within_s="0", payback_days="10000000"),
        "S3BATCHD_SPOOL__DIR": str(not_a_directory),
    }
    result = CliRunner().invoke(main, ["compact", "--bucket", bucket], env=env)
    assert result.exit_code == 1
    assert f"compact s3://{bucket}: building the new tar in spool.dir's _tmp/: " in result.output
    assert str(not_a_directory / TMP_DIR) in result.output
    # Nothing written: the old batches are still the bucket's batches, and no tar went up.
    documents = indexes(s3, bucket)
    assert set(written.old_batches) <= {d["batch_id"] for d in documents}
    assert [d for d in documents if d["version"] == 2] == []
    assert len([k for k in keys(s3, bucket) if k.endswith(".tar")]) == len(documents)
