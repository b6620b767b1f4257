"""The tar spool: appends land where they say, recovery keeps exactly the complete members."""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from s3batchd.constants import TAR_BLOCK, TAR_END
from s3batchd.errors import SpoolError, SpoolFailedError
from s3batchd.index import index_key, tar_key
from s3batchd.records import ObjectRecord, SpoolEntry
from s3batchd.s3.body import BodyBuffer
from s3batchd.spool import files as spool_module
from s3batchd.spool.files import (
    QUARANTINE_DIR,
    TMP_DIR,
    SpoolFile,
    check_writable,
    recover,
    recover_all,
    remove,
    scan,
)
from s3batchd.spool.tarmember import decode_record, padded

BUCKET = "bucket"
PREFIX = "pre/"
BATCH_ID = "20261121T143000123Z-test-0001-000001"
OTHER_ID = "20261121T143001456Z-test-0001-000002"
LONG_UNICODE_KEY = "журнал/" + "日本語のキー" * 30 + "/ü.bin"
#: (key, size) of the members of the torn-tail spool.
TORN_MEMBERS = [
    ("empty", 0),
    ("one", 1),
    ("block-minus-one", 511),
    ("block", 512),
    ("block-plus-one", 513),
    ("bigger", 3000),
    (LONG_UNICODE_KEY, 700),
]


def payload(size: int, seed: int) -> bytes:
    """Deterministic non-zero bytes, so zero padding is never mistaken for data."""
    return bytes((seed * 31 + i * 7) % 255 + 1 for i in range(size))


def make_record(key: str, data: bytes) -> ObjectRecord:
    return ObjectRecord(
        key=key,
        size=len(data),
        md5_hex=hashlib.md5(data, usedforsecurity=False).hexdigest(),
        metadata={"seq": key[:10]},
        mtime=1_763_735_400.5,
    )


def make_body(data: bytes, tmp_path: Path, memory_limit: int = 1 << 20) -> BodyBuffer:
    body = BodyBuffer(memory_limit=memory_limit, spill_dir=tmp_path / "bodies")
    body.write(data)
    return body


def new_spool(spool_dir: Path, batch_id: str = BATCH_ID, bucket: str = BUCKET) -> SpoolFile:
    return SpoolFile.create(spool_dir / bucket, bucket=bucket, batch_id=batch_id, prefix=PREFIX)


def append(
    spool: SpoolFile, key: str, data: bytes, tmp_path: Path, memory_limit: int = 1 << 20
) -> SpoolEntry:
    body = make_body(data, tmp_path, memory_limit)
    try:
        return spool.append(make_record(key, data), body)
    finally:
        body.close()


def fill(
    spool: SpoolFile, members: list[tuple[str, bytes]], tmp_path: Path
) -> list[tuple[ObjectRecord, SpoolEntry]]:
    return [(make_record(key, data), append(spool, key, data, tmp_path)) for key, data in members]


def listed(path: Path) -> list[tuple[ObjectRecord, bytes]]:
    """Records and data of every member, read with tarfile."""
    out = []
    with tarfile.open(path, mode="r:") as archive:
        for info in archive:
            record = decode_record(info)
            assert record is not None, info.name
            extracted = archive.extractfile(info)
            assert extracted is not None
            out.append((record, extracted.read()))
    return out


def gnu_tar_lists(path: Path) -> list[str]:
    result = subprocess.run(
        ["tar", "--quoting-style=literal", "-tvf", str(path)],
        capture_output=True,
        text=True,
        encoding="utf-8",
        env={**os.environ, "LC_ALL": "C.UTF-8"},
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result.stdout.splitlines()


def test_create_makes_an_empty_open_file(tmp_path: Path) -> None:
    spool = new_spool(tmp_path)
    try:
        assert spool.path == tmp_path / BUCKET / f"{BATCH_ID}.open"
        assert spool.path.stat().st_size == 0
        assert spool.position == 0
        assert spool.records == 0
        assert spool.tar_key == tar_key(PREFIX, BATCH_ID)
        assert spool.index_key == index_key(PREFIX, BATCH_ID)
        assert spool.tar_key == f"pre/2026/11/21/{BATCH_ID}.tar"
        with pytest.raises(FileExistsError):
            new_spool(tmp_path)  # O_EXCL: never reopen (and overwrite) a batch
    finally:
        spool.close()


def test_append_offsets_point_at_the_exact_bytes(tmp_path: Path) -> None:
    spool = new_spool(tmp_path)
    sizes = [0, 1, 511, 512, 513, 3000, 70_000]
    entries = []
    for i, size in enumerate(sizes):
        data = payload(size, i)
        before = spool.position
        # A small memory limit spills the larger bodies to a temporary file first.
        entry = append(spool, f"k/{i}", data, tmp_path, memory_limit=1000)
        assert entry.end == spool.position
        assert entry.offset > before
        assert (entry.offset - before) % TAR_BLOCK == 0
        assert spool.position == entry.offset + padded(size)
        assert spool.position % TAR_BLOCK == 0
        assert spool.records == i + 1
        assert entry.bucket == BUCKET
        assert entry.tar_key == spool.tar_key
        assert entry.member == f"k/{i}"
        assert entry.length == size
        entries.append((entry, data))
    spool.close()

    raw = spool.path.read_bytes()
    assert len(raw) == spool.position
    for entry, data in entries:
        assert raw[entry.offset : entry.offset + entry.length] == data
        assert raw[entry.offset + entry.length : entry.end] == b"\0" * (
            entry.end - entry.offset - entry.length
        )
        if data:
            assert entry.byte_range == f"bytes={entry.offset}-{entry.offset + len(data) - 1}"
        else:
            assert entry.byte_range is None


def test_write_end_and_finish_seal_a_readable_tar(tmp_path: Path) -> None:
    spool = new_spool(tmp_path)
    members = [(f"obj-{i}", payload(i * 100, i)) for i in range(5)]
    written = fill(spool, members, tmp_path)
    position = spool.position
    spool.write_end()
    assert spool.position == position + len(TAR_END)
    spool.sync()

    batch = spool.finish("records")

    assert not spool.path.exists()
    assert batch.path == tmp_path / BUCKET / f"{BATCH_ID}.tar"
    assert batch.path.stat().st_size == batch.size == position + len(TAR_END)
    assert batch.records == 5
    assert batch.reason == "records"
    assert batch.bucket == BUCKET
    assert batch.batch_id == BATCH_ID
    assert batch.tar_key == tar_key(PREFIX, BATCH_ID)
    assert batch.index_key == index_key(PREFIX, BATCH_ID)
    assert listed(batch.path) == [
        (record, data) for (record, _), (_, data) in zip(written, members, strict=True)
    ]
    assert len(gnu_tar_lists(batch.path)) == 5
    spool.close()  # idempotent after finish


def test_size_with_predicts_the_size_after_the_append(tmp_path: Path) -> None:
    spool = new_spool(tmp_path)
    try:
        assert spool.size_with(make_record("a", b"abc")) == 3 * TAR_BLOCK + TAR_BLOCK + 1024
        cases = [
            ("a", b"abc"),
            ("../unsafe/" + "x" * 900, payload(513, 1)),  # synthetic name, long PAX key
            (LONG_UNICODE_KEY, payload(3000, 2)),
            ("empty", b""),
        ]
        for key, data in cases:
            predicted = spool.size_with(make_record(key, data))
            append(spool, key, data, tmp_path)
            assert predicted == spool.position + len(TAR_END), key
        # PAX records of metadata make the header several blocks long; no estimate is used.
        heavy = ObjectRecord(key="h", size=10, md5_hex="0" * 32, metadata={"m": "v" * 1800})
        assert spool.size_with(heavy) >= spool.position + 5 * TAR_BLOCK + TAR_BLOCK + 1024
    finally:
        spool.close()


def test_scan_lists_the_appended_members(tmp_path: Path) -> None:
    spool = new_spool(tmp_path)
    written = fill(
        spool, [(key, payload(size, i)) for i, (key, size) in enumerate(TORN_MEMBERS)], tmp_path
    )
    spool.close()

    for verify in (False, True):
        result = scan(spool.path, verify=verify)
        assert [e.record for e in result.entries] == [record for record, _ in written]
        assert [e.offset for e in result.entries] == [entry.offset for _, entry in written]
        assert [e.member for e in result.entries] == [entry.member for _, entry in written]
        assert result.end == spool.position


def test_scan_of_a_sealed_tar_stops_at_the_end_marker(tmp_path: Path) -> None:
    spool = new_spool(tmp_path)
    fill(spool, [("a", b"1"), ("b", b"22")], tmp_path)
    spool.write_end()
    batch = spool.finish("linger")
    result = scan(batch.path)
    assert [e.record.key for e in result.entries] == ["a", "b"]
    assert result.end == batch.size - len(TAR_END)


@pytest.fixture
def quiet_spool_log(caplog: pytest.LogCaptureFixture) -> None:
    """Recovery logs every truncation; thousands of records only slow the loop down."""
    caplog.set_level(logging.CRITICAL, logger="s3batchd.spool.files")


@pytest.mark.usefixtures("quiet_spool_log")
def test_recover_torn_tail_at_every_byte(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = new_spool(tmp_path / "source")
    members = [(key, payload(size, i)) for i, (key, size) in enumerate(TORN_MEMBERS)]
    written = fill(source, members, tmp_path)
    source.close()
    full = source.path.read_bytes()
    assert len(full) == written[-1][1].end
    # Cuts where a real tar tool double-checks the result: around every header and data edge.
    edges = {0, len(full)}
    starts = [0] + [entry.end for _, entry in written[:-1]]
    for start, (_, entry) in zip(starts, written, strict=True):
        for edge in (start + TAR_BLOCK, entry.offset, entry.offset + entry.length, entry.end):
            edges.update((edge - 1, edge, edge + 1))
    # Durability is not under test here, and 17k fsyncs would dominate the run time.
    monkeypatch.setattr(os, "fsync", lambda fd: None)
    monkeypatch.setattr(os, "fdatasync", lambda fd: None)

    spool_dir = tmp_path / "spool"
    open_path = spool_dir / BUCKET / f"{BATCH_ID}.open"
    sealed_path = open_path.with_suffix(".tar")
    quarantined = spool_dir / QUARANTINE_DIR / f"{BUCKET}--{BATCH_ID}.open"
    open_path.parent.mkdir(parents=True)
    for cut in range(len(full) + 1):
        open_path.write_bytes(full[:cut])
        complete = [
            (record, entry) for record, entry in written if entry.offset + entry.length <= cut
        ]

        batches = recover(spool_dir, prefix=PREFIX)

        assert not open_path.exists(), cut
        if not complete:
            assert batches == [], cut
            if cut == 0:
                assert not quarantined.exists()
            else:
                assert quarantined.read_bytes() == full[:cut]
                quarantined.unlink()
            continue
        [batch] = batches
        end = complete[-1][1].end
        sealed = sealed_path.read_bytes()
        assert batch.path == sealed_path
        assert batch.records == len(complete), cut
        assert batch.size == len(sealed) == end + len(TAR_END), cut
        assert batch.reason == "recovered"
        kept = min(cut, end)
        assert sealed[:kept] == full[:kept], cut
        assert sealed[kept:] == b"\0" * (len(sealed) - kept), cut
        with tarfile.open(sealed_path, mode="r:") as archive:
            infos = archive.getmembers()
            assert [decode_record(i) for i in infos] == [record for record, _ in complete], cut
            assert [i.offset_data for i in infos] == [entry.offset for _, entry in complete]
        if cut in edges:
            assert len(gnu_tar_lists(sealed_path)) == len(complete), cut
        sealed_path.unlink()


def test_recovered_data_reads_back(tmp_path: Path) -> None:
    spool = new_spool(tmp_path)
    members = [(key, payload(size, i)) for i, (key, size) in enumerate(TORN_MEMBERS)]
    written = fill(spool, members, tmp_path)
    spool.close()
    cut = written[-1][1].offset + 10  # inside the last member's data
    with spool.path.open("r+b") as f:
        f.truncate(cut)

    [batch] = recover(tmp_path, prefix=PREFIX)

    expected = [(record, data) for (record, _), (_, data) in zip(written, members, strict=True)]
    assert listed(batch.path) == expected[:-1]


@pytest.mark.parametrize("garbage", [b"\xa5", b"\0"])
def test_recover_drops_a_last_member_whose_data_is_garbage(tmp_path: Path, garbage: bytes) -> None:
    spool = new_spool(tmp_path)
    members = [("first", payload(700, 1)), ("second", payload(1500, 2)), ("last", payload(2000, 3))]
    written = fill(spool, members, tmp_path)
    spool.close()
    last = written[-1][1]
    # The file has its full length (the size reached the disk), but the tail of the data did
    # not: what a crash between a size update and the data blocks leaves behind.
    with spool.path.open("r+b") as f:
        f.seek(last.offset + 1000)
        f.write(garbage * 1000)

    assert len(scan(spool.path).entries) == 3  # the structure alone looks fine
    assert len(scan(spool.path, verify=True).entries) == 2

    [batch] = recover(tmp_path, prefix=PREFIX)

    assert batch.records == 2
    assert batch.size == written[1][1].end + len(TAR_END)
    assert listed(batch.path) == [(written[0][0], members[0][1]), (written[1][0], members[1][1])]
    assert len(gnu_tar_lists(batch.path)) == 2


def test_recover_skips_a_corrupt_member_and_keeps_the_ones_after_it(tmp_path: Path) -> None:
    spool = new_spool(tmp_path)
    members = [(f"k{i}", payload(600, i)) for i in range(4)]
    written = fill(spool, members, tmp_path)
    spool.close()
    original = spool.path.read_bytes()
    with spool.path.open("r+b") as f:
        f.seek(written[1][1].offset)
        f.write(b"X")

    [batch] = recover(tmp_path, prefix=PREFIX)

    kept = [0, 2, 3]
    assert batch.records == 3
    assert listed(batch.path) == [(written[i][0], members[i][1]) for i in kept]
    assert len(gnu_tar_lists(batch.path)) == 3
    start = written[0][1].end
    saved = tmp_path / QUARANTINE_DIR / f"{BUCKET}--{BATCH_ID}.{start}.cut"
    damaged = bytearray(original[start : written[1][1].end])
    damaged[written[1][1].offset - start] = ord("X")
    assert saved.read_bytes() == bytes(damaged)


def test_unreadable_open_file_is_quarantined(tmp_path: Path) -> None:
    bucket_dir = tmp_path / BUCKET
    bucket_dir.mkdir()
    junk = b"this is not a tar file\n" * 100
    (bucket_dir / f"{BATCH_ID}.open").write_bytes(junk)

    assert recover(tmp_path, prefix=PREFIX) == []

    assert not (bucket_dir / f"{BATCH_ID}.open").exists()
    assert (tmp_path / QUARANTINE_DIR / f"{BUCKET}--{BATCH_ID}.open").read_bytes() == junk
    assert recover(tmp_path, prefix=PREFIX) == []  # the quarantine is never scanned


def test_open_file_whose_first_member_is_torn_is_quarantined(tmp_path: Path) -> None:
    spool = new_spool(tmp_path)
    written = fill(spool, [("only", payload(900, 1))], tmp_path)
    spool.close()
    with spool.path.open("r+b") as f:
        f.truncate(written[0][1].offset + 899)

    assert recover(tmp_path, prefix=PREFIX) == []
    assert (tmp_path / QUARANTINE_DIR / f"{BUCKET}--{BATCH_ID}.open").stat().st_size > 0


def test_empty_open_file_is_removed(tmp_path: Path) -> None:
    spool = new_spool(tmp_path)
    spool.close()

    assert recover(tmp_path, prefix=PREFIX) == []

    assert not spool.path.exists()
    assert not (tmp_path / QUARANTINE_DIR).exists()


def test_sealed_tar_is_left_as_is(tmp_path: Path) -> None:
    spool = new_spool(tmp_path)
    fill(spool, [("a", payload(10, 1)), ("b", payload(5000, 2))], tmp_path)
    spool.write_end()
    sealed = spool.finish("linger")
    before = sealed.path.read_bytes()

    [batch] = recover(tmp_path, prefix=PREFIX)

    assert sealed.path.read_bytes() == before
    assert batch.path == sealed.path
    assert batch.size == sealed.size == len(before)
    assert batch.records == 2
    assert batch.reason == "recovered"
    assert (batch.bucket, batch.batch_id, batch.tar_key, batch.index_key) == (
        sealed.bucket,
        sealed.batch_id,
        sealed.tar_key,
        sealed.index_key,
    )


def test_recover_handles_several_buckets_and_ignores_strangers(tmp_path: Path) -> None:
    sealed_spool = new_spool(tmp_path, BATCH_ID, "alpha")
    fill(sealed_spool, [("a", b"a")], tmp_path)
    sealed_spool.write_end()
    sealed_spool.finish("records")
    open_spool = new_spool(tmp_path, OTHER_ID, "alpha")
    fill(open_spool, [("b", b"b"), ("c", b"c")], tmp_path)
    open_spool.close()
    other = new_spool(tmp_path, BATCH_ID, "beta")
    fill(other, [("d", b"d")], tmp_path)
    other.close()
    strangers = [
        tmp_path / "alpha" / "notes.txt",
        tmp_path / "alpha" / "not-a-batch-id.open",
        tmp_path / "alpha" / f"{BATCH_ID}.tmp",
        tmp_path / TMP_DIR / f"{BATCH_ID}.open",
        tmp_path / QUARANTINE_DIR / f"{OTHER_ID}.tar",
        tmp_path / "_internal" / f"{OTHER_ID}.open",  # no bucket name starts with "_"
    ]
    for path in strangers:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"leave me alone")

    batches = recover(tmp_path, prefix=PREFIX)

    assert [(b.bucket, b.batch_id, b.records) for b in batches] == [
        ("alpha", BATCH_ID, 1),
        ("alpha", OTHER_ID, 2),
        ("beta", BATCH_ID, 1),
    ]
    assert all(b.path.suffix == ".tar" for b in batches)
    for path in strangers:
        assert path.read_bytes() == b"leave me alone"


def test_recover_without_a_spool_directory(tmp_path: Path) -> None:
    assert recover(tmp_path / "missing", prefix=PREFIX) == []


class FailingBody(BodyBuffer):
    """Writes part of its data, then fails like a full disk."""

    def __init__(self, data: bytes, tmp_path: Path) -> None:
        super().__init__(memory_limit=1 << 20, spill_dir=tmp_path)
        self.write(data)

    @property
    def in_memory(self) -> bool:
        return False  # appended with write_to, like a spilled body

    def write_to(self, fd: int) -> None:
        os.write(fd, self.getvalue()[: self.size // 2])
        raise OSError(errno.ENOSPC, "No space left on device")


def test_failed_append_rolls_back_and_the_next_append_works(tmp_path: Path) -> None:
    spool = new_spool(tmp_path)
    [(first, first_entry)] = fill(spool, [("first", payload(700, 1))], tmp_path)
    position = spool.position
    failing = make_record("failing", payload(5000, 2))

    with pytest.raises(SpoolError) as caught:
        spool.append(failing, FailingBody(payload(5000, 2), tmp_path))

    assert type(caught.value) is SpoolError
    assert isinstance(caught.value.__cause__, OSError)
    assert caught.value.__cause__.errno == errno.ENOSPC
    assert spool.position == position
    assert spool.records == 1
    assert not spool.failed
    assert spool.path.stat().st_size == position

    data = payload(1234, 3)
    [(third, entry)] = fill(spool, [("third", data)], tmp_path)
    assert entry.offset > position
    assert entry.offset - position < 4 * TAR_BLOCK  # right after the first member, no hole
    spool.write_end()
    batch = spool.finish("records")
    assert batch.records == 2
    assert listed(batch.path) == [(first, payload(700, 1)), (third, data)]
    assert batch.path.read_bytes()[entry.offset : entry.offset + len(data)] == data
    assert first_entry.end == position


class HijackingBody(BodyBuffer):
    """Replaces the spool's descriptor with ``replacement`` while writing, then fails."""

    def __init__(self, data: bytes, tmp_path: Path, replacement: int, *, fail: bool) -> None:
        super().__init__(memory_limit=1 << 20, spill_dir=tmp_path)
        self.write(data)
        self._replacement = replacement
        self._fail = fail

    @property
    def in_memory(self) -> bool:
        return False  # appended with write_to, like a spilled body

    def write_to(self, fd: int) -> None:
        os.write(fd, self.getvalue())
        os.dup2(self._replacement, fd)
        if self._fail:
            raise OSError(errno.EIO, "Input/output error")


def test_append_whose_rollback_fails_poisons_the_file(tmp_path: Path) -> None:
    spool = new_spool(tmp_path)
    fill(spool, [("first", b"1")], tmp_path)
    read_only = os.open(spool.path, os.O_RDONLY)  # ftruncate on it fails
    try:
        body = HijackingBody(b"2" * 100, tmp_path, read_only, fail=True)
        with pytest.raises(SpoolError):
            spool.append(make_record("second", b"2" * 100), body)
    finally:
        os.close(read_only)

    assert spool.failed
    with pytest.raises(SpoolFailedError):
        fill(spool, [("third", b"3")], tmp_path)
    with pytest.raises(SpoolFailedError):
        spool.sync()
    spool.close()


def test_the_first_sync_makes_the_files_directory_entry_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Not create(): it runs under the bucket's lock when a batch rolls over, and a directory
    # fsync there waited behind the previous batch's seal. Nothing is acknowledged as durable
    # before a sync, and the sync covers the entry.
    synced_dirs: list[Path] = []
    real = spool_module.fsync_dir

    def recording(directory: Path) -> None:
        synced_dirs.append(directory)
        real(directory)

    monkeypatch.setattr(spool_module, "fsync_dir", recording)
    spool = new_spool(tmp_path)
    assert synced_dirs == []
    fill(spool, [("a", b"a")], tmp_path)
    spool.sync()
    assert synced_dirs == [tmp_path / BUCKET]
    fill(spool, [("b", b"b")], tmp_path)
    spool.sync()
    assert synced_dirs == [tmp_path / BUCKET]  # once per file
    spool.close()


def test_failed_fdatasync_poisons_the_file(tmp_path: Path) -> None:
    spool = new_spool(tmp_path)
    read_end, write_end = os.pipe()  # fdatasync on a pipe fails with EINVAL
    try:
        body = HijackingBody(b"x" * 10, tmp_path, write_end, fail=False)
        spool.append(make_record("k", b"x" * 10), body)
        with pytest.raises(SpoolFailedError):
            spool.sync()
    finally:
        os.close(read_end)
        os.close(write_end)
    assert spool.failed
    with pytest.raises(SpoolFailedError):
        fill(spool, [("again", b"y")], tmp_path)
    spool.close()


def test_remove_deletes_an_uploaded_batch_once(tmp_path: Path) -> None:
    spool = new_spool(tmp_path)
    fill(spool, [("a", b"a")], tmp_path)
    spool.write_end()
    batch = spool.finish("records")
    remove(batch)
    assert not batch.path.exists()
    remove(batch)  # already gone: nothing to do


def test_check_writable(tmp_path: Path) -> None:
    check_writable(tmp_path / "new" / "spool")
    assert (tmp_path / "new" / "spool").is_dir()
    assert list((tmp_path / "new" / "spool").iterdir()) == []
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(SpoolError, match="not writable"):
        check_writable(blocker / "spool")


def sealed_spool(tmp_path: Path, members: list[tuple[str, bytes]]) -> tuple[Path, list[int]]:
    """A sealed tar of ``members`` and the end of each member."""
    spool = new_spool(tmp_path)
    written = fill(spool, members, tmp_path)
    spool.write_end()
    sealed = spool.finish("linger")
    return sealed.path, [entry.end for _, entry in written]


@pytest.mark.parametrize("inside", ["header", "data", "padding", "end-marker"])
def test_a_truncated_sealed_tar_is_cut_to_its_last_complete_member(
    tmp_path: Path, inside: str, caplog: pytest.LogCaptureFixture
) -> None:
    members = [("first", payload(700, 1)), ("second", payload(1500, 2)), ("lost", payload(2000, 3))]
    path, ends = sealed_spool(tmp_path, members)
    last_start = ends[1]
    cut = {
        "header": last_start + 700,
        "data": ends[2] - 512 - 100,
        "padding": ends[2] - 10,
        "end-marker": ends[2] + 600,
    }[inside]
    with path.open("r+b") as f:
        f.truncate(cut)
    survivors = 3 if inside in ("padding", "end-marker") else 2
    caplog.set_level(logging.INFO, logger="s3batchd.spool.files")

    recovery = recover_all(tmp_path, prefix=PREFIX)

    [batch] = recovery.batches
    assert batch.path == path
    assert batch.records == survivors
    assert batch.size == path.stat().st_size == ends[survivors - 1] + len(TAR_END)
    assert [data for _, data in listed(path)] == [data for _, data in members[:survivors]]
    assert len(gnu_tar_lists(path)) == survivors
    if survivors == 3:
        assert recovery.lost == []
        return
    [lost] = recovery.lost
    # A header cut short names no key (the catalog still knows it: the pipeline's part).
    assert (lost.bucket, lost.batch_id) == (BUCKET, BATCH_ID)
    assert lost.key == (None if inside == "header" else "lost")
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert any(BATCH_ID in message and "lost" in message for message in errors), errors


def sealed_members(path: Path) -> list[tuple[ObjectRecord, bytes]]:
    """Every member of a sealed tar, each read at the offset recovery's entries give."""
    entries = scan(path, verify=True).entries
    with path.open("rb") as f:
        out = []
        for entry in entries:
            f.seek(entry.offset)
            out.append((entry.record, f.read(entry.record.size)))
    return out


def test_a_sealed_tar_with_a_corrupt_member_keeps_every_member_that_verifies(
    tmp_path: Path,
) -> None:
    members = [(f"k{i}", payload(600, i)) for i in range(4)]
    path, ends = sealed_spool(tmp_path, members)
    original = path.read_bytes()
    with path.open("r+b") as f:
        f.seek(ends[1] - 512 + 3)  # inside k1's data
        f.write(b"X")

    recovery = recover_all(tmp_path, prefix=PREFIX)

    [batch] = recovery.batches
    kept = [members[i] for i in (0, 2, 3)]
    assert batch.records == 3
    assert batch.size == path.stat().st_size
    assert [(r.key, data) for r, data in listed(path)] == kept
    assert len(gnu_tar_lists(path)) == 3
    assert [lost.key for lost in recovery.lost] == ["k1"]
    # The entries recovery returns point at the exact bytes, whose MD5 is the ETag.
    entries = recovery.entries[BATCH_ID]
    with path.open("rb") as f:
        for entry, (key, data) in zip(entries, kept, strict=True):
            f.seek(entry.offset)
            assert (entry.record.key, f.read(entry.record.size)) == (key, data)
            assert entry.record.md5_hex == hashlib.md5(data, usedforsecurity=False).hexdigest()
    # The damaged member, header included, is kept for an operator.
    saved = tmp_path / QUARANTINE_DIR / f"{BUCKET}--{BATCH_ID}.{ends[0]}.cut"
    damaged = bytearray(original[ends[0] : ends[1]])
    damaged[ends[1] - 512 + 3 - ends[0]] = ord("X")
    assert saved.read_bytes() == bytes(damaged)


def test_one_corrupt_member_of_a_thousand_loses_only_that_one(tmp_path: Path) -> None:
    members = [(f"k{i:04d}", payload(100 + i % 7, i)) for i in range(1000)]
    path, ends = sealed_spool(tmp_path, members)
    with path.open("r+b") as f:
        f.seek(ends[1] - 512 + 3)  # inside member 2's data
        f.write(b"\0\0")

    recovery = recover_all(tmp_path, prefix=PREFIX)

    [batch] = recovery.batches
    assert batch.records == 999
    assert [lost.key for lost in recovery.lost] == ["k0001"]
    assert [(r.key, data) for r, data in sealed_members(path)] == members[:1] + members[2:]
    assert len(gnu_tar_lists(path)) == 999


def test_bytes_cut_from_a_sealed_tar_are_copied_to_quarantine_first(tmp_path: Path) -> None:
    members = [("first", payload(700, 1)), ("second", payload(1500, 2)), ("third", payload(900, 3))]
    path, ends = sealed_spool(tmp_path, members)
    original = path.read_bytes()
    with path.open("r+b") as f:  # a broken header: the size of what follows is unknown
        f.seek(ends[0] + 10)
        f.write(b"\xff\xff")

    recovery = recover_all(tmp_path, prefix=PREFIX)

    [batch] = recovery.batches
    assert batch.records == 1
    saved = tmp_path / QUARANTINE_DIR / f"{BUCKET}--{BATCH_ID}.{ends[0]}.cut"
    broken = bytearray(original[ends[0] :])
    broken[10:12] = b"\xff\xff"
    assert saved.read_bytes() == bytes(broken)
    assert [lost.key for lost in recovery.lost] == [None]


def test_an_unreadable_sealed_tar_is_quarantined_not_uploaded(tmp_path: Path) -> None:
    path, _ = sealed_spool(tmp_path, [("only", payload(900, 1))])
    with path.open("r+b") as f:
        f.truncate(700)  # inside the only member's header

    recovery = recover_all(tmp_path, prefix=PREFIX)

    assert recovery.batches == []
    assert not path.exists()
    assert (tmp_path / QUARANTINE_DIR / f"{BUCKET}--{BATCH_ID}.tar").stat().st_size == 700
    assert recovery.quarantined == [(BUCKET, BATCH_ID)]
