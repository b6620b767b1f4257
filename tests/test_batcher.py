"""The batcher: linger, record and byte triggers, group commit, shutdown, one spool per bucket."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import pytest

from s3batchd.batching.batcher import INLINE_APPEND_BYTES, Batcher
from s3batchd.concurrency import Threads
from s3batchd.config import BatchConfig, Durability
from s3batchd.constants import KB, TAR_END
from s3batchd.errors import DiskFull, Draining, S3BatchdError, SlowDown, SpoolError
from s3batchd.index import WriterId, is_batch_id
from s3batchd.records import ObjectRecord, SealedBatch, SpoolEntry
from s3batchd.s3.body import BodyBuffer
from s3batchd.server.errormap import s3_error_of
from s3batchd.spool.disk import SpoolDisk
from s3batchd.spool.files import Recovery, SpoolFile, recover, scan
from s3batchd.spool.tarmember import encode_header, padded
from tests.test_readiness import read_only

THREADS = Threads()
"""Thread pools shared by this module's tests (concurrency.py)."""

pytestmark = pytest.mark.anyio

LONG = 60_000  # ms: a linger that never fires during a test


@pytest.fixture
def anyio_backend() -> str:
    """The batcher is built on asyncio (call_later, tasks)."""
    return "asyncio"


class FakeSink:
    """Collects sealed batches the way the uploader would receive them."""

    def __init__(self) -> None:
        self.batches: list[SealedBatch] = []
        self._changed = asyncio.Event()

    async def submit(self, batch: SealedBatch) -> None:
        assert batch.path.exists()  # handed over sealed and on disk
        self.batches.append(batch)
        self._changed.set()

    async def recovered(self, recovery: Recovery) -> None:
        for batch in recovery.batches:
            assert len(recovery.entries[batch.batch_id]) == batch.records
            await self.submit(batch)

    async def wait_for(self, count: int) -> None:
        with anyio.fail_after(10):
            while len(self.batches) < count:
                self._changed.clear()
                await self._changed.wait()

    @property
    def reasons(self) -> list[str]:
        return [batch.reason for batch in self.batches]


@dataclass
class RecordedDisk:
    """The batcher's disk in a test (a ``SpoolDisk`` per batch, spool/disk.py): real spool
    files whose every sync (fdatasync) is recorded as the file position it covered, after
    ``before_sync`` (a slow or held disk)."""

    syncs: list[int] = field(default_factory=list)
    before_sync: Callable[[], object] = lambda: None
    failing: bool = False
    """Whether fdatasync fails (EIO), as a dying disk's does: SpoolFile.sync's own handling
    of the failure runs."""

    def open(self, directory: Path, *, bucket: str, batch_id: str, prefix: str) -> SpoolDisk:
        spool = _RecordedSpool.create(directory, bucket=bucket, batch_id=batch_id, prefix=prefix)
        assert isinstance(spool, _RecordedSpool)
        spool.disk = self
        return spool


class _RecordedSpool(SpoolFile):
    disk: RecordedDisk

    def sync(self) -> None:
        self.disk.before_sync()
        self.disk.syncs.append(self.position)
        super().sync()

    def _datasync(self) -> None:
        if self.disk.failing:
            raise OSError(errno.EIO, "injected")
        super()._datasync()


@pytest.fixture
def disk() -> RecordedDisk:
    return RecordedDisk()


def make_batcher(
    tmp_path: Path,
    sink: FakeSink,
    *,
    durability: Durability = "fsync",
    linger_ms: int = LONG,
    max_records: int = 10_000,
    max_bytes: int = 64 * 1024 * KB,
    disk: RecordedDisk | None = None,
) -> Batcher:
    return Batcher(
        spool_dir=tmp_path / "spool",
        durability=durability,
        config=BatchConfig(linger_ms=linger_ms, max_records=max_records, max_bytes=max_bytes),
        prefix="p/",
        writer=WriterId(host="test", instance="0001"),
        sink=sink,
        threads=THREADS,
        open_spool=SpoolFile.create if disk is None else disk.open,
    )


def make_record(key: str, data: bytes) -> ObjectRecord:
    return ObjectRecord(
        key=key,
        size=len(data),
        md5_hex=hashlib.md5(data, usedforsecurity=False).hexdigest(),
        mtime=1_763_735_400.0,
    )


async def put(
    batcher: Batcher,
    key: str,
    data: bytes,
    tmp_path: Path,
    *,
    bucket: str = "bkt",
    memory_limit: int = 1024 * KB,
) -> SpoolEntry:
    body = BodyBuffer(memory_limit=memory_limit, spill_dir=tmp_path / "bodies")
    body.write(data)
    try:
        return await batcher.add(bucket, make_record(key, data), body)
    finally:
        body.close()


async def put_answered(batcher: Batcher, key: str, data: bytes, tmp_path: Path) -> SpoolEntry:
    """``put``, its failure raised as the S3 error a client would be answered
    (server/errormap.py)."""
    try:
        return await put(batcher, key, data, tmp_path)
    except S3BatchdError as exc:
        raise s3_error_of(exc) from exc


def keys_in(batch: SealedBatch) -> list[str]:
    return [entry.record.key for entry in scan(batch.path, verify=True).entries]


def assert_holds(batch: SealedBatch, entry: SpoolEntry, data: bytes) -> None:
    assert entry.tar_key == batch.tar_key
    with batch.path.open("rb") as f:
        f.seek(entry.offset)
        assert f.read(entry.length) == data


async def test_linger_seals_a_batch_after_its_first_record(tmp_path: Path) -> None:
    sink = FakeSink()
    batcher = make_batcher(tmp_path, sink, durability="none", linger_ms=100)
    try:
        started = time.monotonic()
        entry = await put(batcher, "a", b"first", tmp_path)
        assert sink.batches == []
        assert batcher.open_batches == 1

        await sink.wait_for(1)

        assert time.monotonic() - started >= 0.1 - 0.005  # asyncio may fire within its resolution
        [batch] = sink.batches
        assert batch.reason == "linger"
        assert batch.records == 1
        assert batch.bucket == "bkt"
        assert batch.path.suffix == ".tar"
        assert is_batch_id(batch.batch_id)
        assert batcher.open_batches == 0
        assert_holds(batch, entry, b"first")

        second = await put(batcher, "b", b"second", tmp_path)  # opens the next batch
        await sink.wait_for(2)
        assert sink.reasons == ["linger", "linger"]
        assert sink.batches[1].batch_id != batch.batch_id
        assert_holds(sink.batches[1], second, b"second")
        assert batcher.sealed_by_reason == {"linger": 2}
    finally:
        await batcher.close()


async def test_max_records_seals_at_once(tmp_path: Path) -> None:
    sink = FakeSink()
    batcher = make_batcher(tmp_path, sink, durability="none", max_records=3, linger_ms=150)
    try:
        entries = [await put(batcher, f"k{i}", f"v{i}".encode(), tmp_path) for i in range(7)]

        # Sealed by count (in the background, so add() did not wait for it), in order.
        await sink.wait_for(2)
        assert sink.reasons == ["records", "records"]
        assert [b.records for b in sink.batches] == [3, 3]
        assert keys_in(sink.batches[0]) == ["k0", "k1", "k2"]
        assert keys_in(sink.batches[1]) == ["k3", "k4", "k5"]
        for i, entry in enumerate(entries[:6]):
            assert_holds(sink.batches[i // 3], entry, f"v{i}".encode())
        assert batcher.open_batches == 1
        # The linger timers of the batches sealed by count were cancelled: only k6 lingers.
        await sink.wait_for(3)
        await anyio.sleep(0.3)
        assert sink.reasons == ["records", "records", "linger"]
        assert keys_in(sink.batches[2]) == ["k6"]
    finally:
        await batcher.close()


async def test_a_seal_does_not_hold_up_the_buckets_next_records(tmp_path: Path) -> None:
    # The seal's fdatasync (of the whole tar) waits until the test lets it go; meanwhile the
    # bucket's next records go into a new batch and are acknowledged.
    release = threading.Event()
    disk = RecordedDisk(before_sync=lambda: release.wait(30))
    sink = FakeSink()
    batcher = make_batcher(tmp_path, sink, durability="none", max_records=2, disk=disk)
    try:
        first = [await put(batcher, f"k{i}", b"x", tmp_path) for i in range(2)]
        with anyio.fail_after(10):  # a hang guard: without the change the next add waits
            later = await put(batcher, "n0", b"y", tmp_path)
        assert sink.batches == []  # the first batch's seal is still in its fdatasync
        assert later.tar_key != first[0].tar_key
        assert batcher.open_bytes > 0  # the sealing batch still counts against the quota
    finally:
        release.set()
        await batcher.close()
    assert sink.reasons == ["records", "shutdown"]
    assert keys_in(sink.batches[0]) == ["k0", "k1"]
    assert keys_in(sink.batches[1]) == ["n0"]


def test_header_size_assumed_below() -> None:
    record = make_record("k00", b"x" * 3000)
    assert len(encode_header(record, "k00")) == 1536


async def test_max_bytes_seals_and_records_never_split(tmp_path: Path) -> None:
    sink = FakeSink()
    max_bytes = 16 * KB
    batcher = make_batcher(tmp_path, sink, max_bytes=max_bytes)
    payloads = {f"k{i:02d}": bytes([i + 1]) * 3000 for i in range(10)}
    try:
        entries = {key: await put(batcher, key, data, tmp_path) for key, data in payloads.items()}
        await batcher.flush()
    finally:
        await batcher.close()

    # Each member takes 1536 (header) + 3072 bytes: three fit in 16 KiB with the end marker,
    # a fourth would not, so it starts the next batch.
    assert [b.records for b in sink.batches] == [3, 3, 3, 1]
    assert sink.reasons == ["bytes", "bytes", "bytes", "flush"]
    assert [key for b in sink.batches for key in keys_in(b)] == list(payloads)
    by_tar = {b.tar_key: b for b in sink.batches}
    for key, entry in entries.items():
        assert_holds(by_tar[entry.tar_key], entry, payloads[key])
    for batch in sink.batches:
        assert batch.size <= max_bytes
        assert batch.size == batch.path.stat().st_size


async def test_large_headers_never_push_a_batch_past_max_bytes(tmp_path: Path) -> None:
    sink = FakeSink()
    max_bytes = 16 * KB
    batcher = make_batcher(tmp_path, sink, max_bytes=max_bytes, durability="none")
    data = b"d" * 5120
    try:
        for i in range(6):
            # About 2 KB of user metadata makes each header 3.5 KB, more than an estimate
            # of three blocks: the second record must not be let in when it does not fit.
            record = ObjectRecord(
                key=f"meta/{i}",
                size=len(data),
                md5_hex=hashlib.md5(data, usedforsecurity=False).hexdigest(),
                metadata={"m": "v" * 1800},
            )
            body = BodyBuffer(memory_limit=1024 * KB, spill_dir=tmp_path / "bodies")
            body.write(data)
            try:
                await batcher.add("bkt", record, body)
            finally:
                body.close()
    finally:
        await batcher.close()
    assert sum(b.records for b in sink.batches) == 6
    for batch in sink.batches:
        assert batch.size <= max_bytes, (batch.size, batch.records)


async def test_a_record_that_would_overflow_starts_a_new_batch(tmp_path: Path) -> None:
    sink = FakeSink()
    batcher = make_batcher(tmp_path, sink, max_bytes=16 * KB)
    try:
        small = await put(batcher, "small", b"s" * 1000, tmp_path)
        big = await put(batcher, "big", b"b" * 12_000, tmp_path)

        await sink.wait_for(1)
        [first] = sink.batches
        assert first.reason == "bytes"
        assert keys_in(first) == ["small"]
        assert small.tar_key == first.tar_key
        assert big.tar_key != first.tar_key
        assert batcher.open_batches == 1  # "big" fits alone, so its batch stays open
    finally:
        await batcher.close()
    assert keys_in(sink.batches[1]) == ["big"]
    assert sink.batches[1].reason == "shutdown"
    assert_holds(sink.batches[1], big, b"b" * 12_000)


async def test_an_oversize_record_gets_a_batch_of_its_own(tmp_path: Path) -> None:
    sink = FakeSink()
    max_bytes = 8 * KB
    batcher = make_batcher(tmp_path, sink, max_bytes=max_bytes)
    huge = bytes(range(256)) * ((INLINE_APPEND_BYTES + 44 * KB) // 256)  # appended in a thread
    try:
        await put(batcher, "before", b"1" * 100, tmp_path)
        entry = await put(batcher, "huge", huge, tmp_path, memory_limit=64 * KB)
        await put(batcher, "after", b"2" * 100, tmp_path)
    finally:
        await batcher.close()

    assert [keys_in(b) for b in sink.batches] == [["before"], ["huge"], ["after"]]
    assert sink.reasons == ["bytes", "bytes", "shutdown"]
    alone = sink.batches[1]
    assert alone.records == 1
    assert alone.size > max_bytes
    assert alone.size == entry.offset + padded(len(huge)) + len(TAR_END)  # first member
    assert_holds(alone, entry, huge)


async def test_concurrent_adds_share_fdatasyncs(tmp_path: Path, disk: RecordedDisk) -> None:
    # A disk where fdatasync takes milliseconds and an append microseconds, as on real
    # hardware (this VM's fdatasync can be as fast as an append, which hides the effect).
    disk.before_sync = lambda: time.sleep(0.02)
    sync_calls = disk.syncs
    sink = FakeSink()
    batcher = make_batcher(tmp_path, sink, durability="fsync", disk=disk)
    count = 200
    entries: dict[int, SpoolEntry] = {}

    async def one(i: int) -> None:
        entries[i] = await put(batcher, f"obj/{i:03d}", f"payload {i}".encode(), tmp_path)

    try:
        async with anyio.create_task_group() as tg:
            for i in range(count):
                tg.start_soon(one, i)
        syncs_before_seal = len(sync_calls)
        state = batcher._buckets["bkt"].current
        assert state is not None
        committer = state.committer
        assert committer.syncs == syncs_before_seal
        # Every add returned only once its bytes were covered by a finished fdatasync.
        assert committer.durable >= max(e.end for e in entries.values())
        assert max(sync_calls) >= max(e.end for e in entries.values())
    finally:
        await batcher.close()

    assert len(entries) == count
    assert 1 <= syncs_before_seal <= count // 20, sync_calls
    assert len({e.offset for e in entries.values()}) == count
    [batch] = sink.batches
    assert batch.records == count
    assert sorted(keys_in(batch)) == [f"obj/{i:03d}" for i in range(count)]


async def test_durability_none_does_not_sync_per_record(tmp_path: Path, disk: RecordedDisk) -> None:
    sync_calls = disk.syncs
    sink = FakeSink()
    batcher = make_batcher(tmp_path, sink, durability="none", disk=disk)
    try:
        for i in range(50):
            await put(batcher, f"k{i}", b"x" * i, tmp_path)
        assert sync_calls == []
    finally:
        await batcher.close()
    assert len(sync_calls) == 1  # the seal makes the whole batch durable before hand-off
    [batch] = sink.batches
    assert sync_calls[0] == batch.size


class FullDiskBody(BodyBuffer):
    """A body whose copy into the spool fails like a full disk."""

    @property
    def in_memory(self) -> bool:
        return False  # appended with write_to, like a spilled body

    def write_to(self, fd: int) -> None:
        os.write(fd, b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")


async def test_failed_append_raises_and_leaves_no_empty_batch(tmp_path: Path) -> None:
    sink = FakeSink()
    batcher = make_batcher(tmp_path, sink)
    body = FullDiskBody(memory_limit=1024 * KB, spill_dir=tmp_path / "bodies")
    body.write(b"abc")
    try:
        with pytest.raises(SpoolError):
            await batcher.add("bkt", make_record("lost", b"abc"), body)
        kept = await put(batcher, "kept", b"def", tmp_path)  # the same batch takes the next one
        await batcher.flush()
        [batch] = sink.batches
        assert keys_in(batch) == ["kept"]
        assert_holds(batch, kept, b"def")

        with pytest.raises(SpoolError):
            await batcher.add("bkt", make_record("lost again", b"abc"), body)
    finally:
        body.close()
        await batcher.close()
    assert len(sink.batches) == 1  # the batch that only saw a failed append is not uploaded
    assert list((tmp_path / "spool").rglob("*.open")) == []


async def test_an_append_that_finds_the_disk_full_raises_disk_full(tmp_path: Path) -> None:
    batcher = make_batcher(tmp_path, FakeSink())
    body = FullDiskBody(memory_limit=1024 * KB, spill_dir=tmp_path / "bodies")
    body.write(b"abc")
    try:
        with pytest.raises(DiskFull) as caught:
            await batcher.add("bkt", make_record("lost", b"abc"), body)
    finally:
        body.close()
        await batcher.close()
    assert "No space left on device" in str(caught.value)
    assert type(caught.value.__cause__) is SpoolError  # what the spool file raised


async def test_close_seals_open_batches_and_refuses_new_records(tmp_path: Path) -> None:
    sink = FakeSink()
    batcher = make_batcher(tmp_path, sink)
    await put(batcher, "a1", b"1", tmp_path, bucket="alpha")
    await put(batcher, "b1", b"2", tmp_path, bucket="beta")

    await batcher.close()

    assert sorted((b.bucket, b.reason, b.records) for b in sink.batches) == [
        ("alpha", "shutdown", 1),
        ("beta", "shutdown", 1),
    ]
    assert batcher.open_batches == 0
    with pytest.raises(Draining):
        await put(batcher, "late", b"3", tmp_path)
    with pytest.raises(SlowDown) as caught:
        await put_answered(batcher, "late", b"3", tmp_path)
    assert caught.value.status_code == 503
    assert caught.value.headers == {"Retry-After": "1"}
    await batcher.close()  # idempotent
    assert len(sink.batches) == 2
    assert list((tmp_path / "spool").rglob("*.open")) == []


async def test_close_without_records_seals_nothing(tmp_path: Path) -> None:
    sink = FakeSink()
    batcher = make_batcher(tmp_path, sink)
    await batcher.close()
    assert sink.batches == []


async def test_one_spool_per_bucket(tmp_path: Path) -> None:
    sink = FakeSink()
    batcher = make_batcher(tmp_path, sink)
    entries: dict[str, list[SpoolEntry]] = {"alpha": [], "beta": []}
    try:
        for i in range(5):
            bucket = "alpha" if i % 2 == 0 else "beta"
            entries[bucket].append(await put(batcher, f"k{i}", b"x", tmp_path, bucket=bucket))

        assert batcher.open_batches == 2
        assert [p.parent.name for p in sorted((tmp_path / "spool").rglob("*.open"))] == [
            "alpha",
            "beta",
        ]
        for bucket, found in entries.items():
            assert {e.bucket for e in found} == {bucket}
            assert len({e.tar_key for e in found}) == 1
        assert entries["alpha"][0].tar_key != entries["beta"][0].tar_key
        await batcher.flush()
    finally:
        await batcher.close()

    by_bucket = {b.bucket: b for b in sink.batches}
    assert set(by_bucket) == {"alpha", "beta"}
    assert keys_in(by_bucket["alpha"]) == ["k0", "k2", "k4"]
    assert keys_in(by_bucket["beta"]) == ["k1", "k3"]
    assert all(b.path.parent.name == b.bucket for b in sink.batches)
    assert sink.reasons == ["flush", "flush"]


async def wait_stranded(batcher: Batcher) -> None:
    with anyio.fail_after(10):
        while not batcher.stranded:  # noqa: ASYNC110  no event to wait on; bounded above
            await asyncio.sleep(0.01)


async def test_a_failed_seal_is_retried_until_the_directory_takes_it(tmp_path: Path) -> None:
    sink = FakeSink()
    batcher = make_batcher(tmp_path, sink, max_records=2)
    await put(batcher, "a", b"one", tmp_path)
    with read_only(tmp_path / "spool" / "bkt"):
        await put(batcher, "b", b"two", tmp_path)  # acknowledged; its seal cannot rename
        await wait_stranded(batcher)
        [stranded] = batcher.stranded.values()
        assert stranded.path.suffix == ".open"
        assert stranded.path.exists()
        assert batcher.open_bytes == stranded.size  # still counted against the quota
        assert sink.batches == []
    await sink.wait_for(1)
    assert keys_in(sink.batches[0]) == ["a", "b"]
    assert batcher.stranded == {}
    assert batcher.open_bytes == 0
    await batcher.close()


async def test_a_batch_stranded_at_shutdown_is_left_to_start_up_recovery(tmp_path: Path) -> None:
    sink = FakeSink()
    batcher = make_batcher(tmp_path, sink, max_records=2)
    await put(batcher, "a", b"one", tmp_path)
    with read_only(tmp_path / "spool" / "bkt"):
        await put(batcher, "b", b"two", tmp_path)
        await wait_stranded(batcher)
        await batcher.close()  # stops retrying
    [left] = (tmp_path / "spool" / "bkt").iterdir()
    assert left.suffix == ".open"
    [recovered] = recover(tmp_path / "spool", prefix="p/")
    assert keys_in(recovered) == ["a", "b"]
    assert sink.batches == []


async def test_a_writer_waiting_for_the_upload_of_a_stranded_batch_gets_it(
    tmp_path: Path,
) -> None:
    sink = FakeSink()
    batcher = make_batcher(tmp_path, sink, max_records=2)
    await put(batcher, "a", b"one", tmp_path)
    body = BodyBuffer(memory_limit=1024 * KB, spill_dir=tmp_path / "bodies")
    body.write(b"two")
    with read_only(tmp_path / "spool" / "bkt"):
        waiting = asyncio.ensure_future(
            batcher.add("bkt", make_record("b", b"two"), body, durability="upload")
        )
        await wait_stranded(batcher)
        assert not waiting.done()
    await sink.wait_for(1)
    batcher.mark_uploaded(sink.batches[0].batch_id)
    with anyio.fail_after(10):
        entry = await waiting  # acknowledged once uploaded, not failed on the way
    assert entry.batch_id == sink.batches[0].batch_id
    body.close()
    await batcher.close()


async def test_append_now_appends_in_memory_without_awaiting_once_a_batch_is_open(
    tmp_path: Path, disk: RecordedDisk
) -> None:
    sink = FakeSink()
    sync_calls = disk.syncs
    batcher = make_batcher(tmp_path, sink, durability="none", disk=disk)
    try:
        record = make_record("k0", b"zero")
        assert batcher.append_now("bkt", record, b"zero", "none") is None  # no batch open yet
        first = await put(batcher, "k1", b"one", tmp_path)  # add() opens it
        record = make_record("k2", b"two")
        appended = batcher.append_now("bkt", record, b"two", "none")
        assert appended is not None
        entry, durable = appended
        assert durable is None  # durability none: nothing to wait for
        assert entry.record is record
        header = len(encode_header(record, "k2"))
        assert (entry.batch_id, entry.offset) == (first.batch_id, first.end + header)
        assert sync_calls == []
        # durability upload and bodies above the inline limit take add()
        assert batcher.append_now("bkt", record, b"two", "upload") is None
        big = make_record("big", bytes(INLINE_APPEND_BYTES + 1))
        assert batcher.append_now("bkt", big, bytes(INLINE_APPEND_BYTES + 1), "none") is None
        await batcher.flush()
        (batch,) = sink.batches
        assert keys_in(batch) == ["k1", "k2"]
        assert_holds(batch, entry, b"two")
    finally:
        await batcher.close()


async def test_append_now_refuses_a_record_that_would_pass_max_bytes(tmp_path: Path) -> None:
    sink = FakeSink()
    batcher = make_batcher(tmp_path, sink, durability="none", max_bytes=8 * KB)
    try:
        await put(batcher, "k1", bytes(KB), tmp_path)
        data = bytes(6 * KB)
        assert batcher.append_now("bkt", make_record("k2", data), data, "none") is None
        assert len(batcher.open_batch_ids) == 1  # the open batch was left as it was
    finally:
        await batcher.close()


async def test_append_now_returns_the_group_commits_future(
    tmp_path: Path, disk: RecordedDisk
) -> None:
    sink = FakeSink()
    sync_calls = disk.syncs
    batcher = make_batcher(tmp_path, sink, durability="fsync", disk=disk)
    try:
        await put(batcher, "k1", b"one", tmp_path)
        appended = batcher.append_now("bkt", make_record("k2", b"two"), b"two", "fsync")
        assert appended is not None
        entry, durable = appended
        assert durable is not None
        await durable
        assert sync_calls and sync_calls[-1] >= entry.end  # a sync covered the append
    finally:
        await batcher.close()


async def test_a_failed_sync_after_append_now_keeps_what_was_durable(
    tmp_path: Path, disk: RecordedDisk
) -> None:
    sink = FakeSink()
    batcher = make_batcher(tmp_path, sink, durability="fsync", disk=disk)
    try:
        await put(batcher, "k1", b"one", tmp_path)  # synced
        disk.failing = True
        appended = batcher.append_now("bkt", make_record("k2", b"two"), b"two", "fsync")
        assert appended is not None
        entry, durable = appended
        assert durable is not None
        with pytest.raises(SpoolError):
            await durable
        disk.failing = False
        await batcher.abandon(entry)
        await sink.wait_for(1)
        assert keys_in(sink.batches[0]) == ["k1"]  # k2 was never acknowledged
        assert batcher.open_batch_ids == []
    finally:
        await batcher.close()
