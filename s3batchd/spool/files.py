"""The local tar spool: synchronous, append-only tar files, one open file per bucket.

Layout under ``spool.dir``::

    <bucket>/<batch id>.open   a batch being written (tar members, no end marker yet)
    <bucket>/<batch id>.tar    a sealed batch waiting for upload (fsync'd, end marker written)
    <bucket>/<batch id>.upload-id  the id of its multipart upload while one is open
    <bucket>/<batch id>.parked     why its upload failed non-retriably, when it is tried again
                                   (``parking``)
    _quarantine/               files recovery could not read, kept for an operator, and
                               ``<bucket>--<id>.<offset>.cut``: bytes it dropped from a batch
    _tmp/                      large request bodies while they are being received, and
                               compaction's new tars while they are built (``scratch``)

Internal directories start with ``_``, which no bucket name can.

Methods here block; the batcher calls them inline for small appends and through a thread
otherwise. One SpoolFile is only ever used by one task at a time (the batcher's bucket lock).

Why one module above 400 lines: writing, sealing and recovering a spool tar are the two sides
of one format; recovery must accept exactly what ``append`` writes, so they are read together.
"""

from __future__ import annotations

import bisect
import fcntl
import hashlib
import logging
import os
import tarfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO

from s3batchd.constants import TAR_BLOCK, TAR_END
from s3batchd.errors import SpoolError, SpoolFailedError
from s3batchd.index import IndexEntry, index_fragment, index_key, is_batch_id, tar_key
from s3batchd.records import ObjectRecord, SealedBatch, SpoolEntry
from s3batchd.s3.body import BodyBuffer, write_all
from s3batchd.spool.tarmember import decode_record, encode_header, member_name, padded

logger = logging.getLogger(__name__)

OPEN_SUFFIX = ".open"
UPLOAD_ID_SUFFIX = ".upload-id"
PARKED_SUFFIX = ".parked"
#: A parked state being written (renamed over ``.parked`` once synced).
PARKED_NEW_SUFFIX = ".parked-new"
TMP_DIR = "_tmp"
QUARANTINE_DIR = "_quarantine"
SEALED_SUFFIX = ".tar"
_PADDING = b"\0" * 512


def fsync_dir(path: Path) -> None:
    """Make a file creation, rename or removal in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SpoolFile:
    """One open batch: an append-only tar file."""

    def __init__(self, *, path: Path, bucket: str, batch_id: str, prefix: str, fd: int) -> None:
        self.path = path
        self.bucket = bucket
        self.batch_id = batch_id
        self.tar_key = tar_key(prefix, batch_id)
        self.index_key = index_key(prefix, batch_id)
        self.prefix = prefix
        self.position = 0
        """Bytes written (and not rolled back) so far."""
        self.records = 0
        self.failed = False
        self._ends: list[int] = []
        self._fragments: list[bytes] = []
        self._header: tuple[ObjectRecord, int, str, bytes] | None = None
        self._fd = fd
        self._entry_durable = False
        """Whether the directory entry of ``path`` was fsync'd (by the first ``sync()``)."""

    @classmethod
    def create(cls, directory: Path, *, bucket: str, batch_id: str, prefix: str) -> SpoolFile:
        """Create ``<directory>/<batch_id>.open``. Its directory entry becomes durable with
        the file's first ``sync()``, not here: this runs under the bucket's lock when a batch
        rolls over, and a directory fsync then waits for the journal behind the previous
        batch's seal (12-18 ms measured with durability ``none``, every PUT of the bucket
        waiting)."""
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / (batch_id + OPEN_SUFFIX)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
        return cls(path=path, bucket=bucket, batch_id=batch_id, prefix=prefix, fd=fd)

    def append(self, record: ObjectRecord, body: BodyBuffer) -> SpoolEntry:
        """Write one member whose body is streamed from ``body`` (large or spilled); on
        failure roll the file back to where it was and raise SpoolError."""
        if self.failed:
            raise SpoolFailedError(f"{self.path} failed earlier and takes no more writes")
        name, header = self._header_for(record)
        start = self.position
        try:
            write_all(self._fd, header)
            body.write_to(self._fd)
            write_all(self._fd, _PADDING[: -record.size % TAR_BLOCK])
        except OSError as exc:
            self._roll_back(start)
            raise SpoolError(f"cannot append to {self.path}: {exc}") from exc
        return self._appended(record, name, start, len(header))

    def append_bytes(self, record: ObjectRecord, data: bytes) -> SpoolEntry:
        """Write one member held in memory: header, data and padding in one write. On
        failure roll the file back to where it was and raise SpoolError."""
        if self.failed:
            raise SpoolFailedError(f"{self.path} failed earlier and takes no more writes")
        name, header = self._header_for(record)
        start = self.position
        try:
            write_all(self._fd, b"".join((header, data, _PADDING[: -record.size % TAR_BLOCK])))
        except OSError as exc:
            self._roll_back(start)
            raise SpoolError(f"cannot append to {self.path}: {exc}") from exc
        return self._appended(record, name, start, len(header))

    def _appended(self, record: ObjectRecord, name: str, start: int, header: int) -> SpoolEntry:
        """Account for the member just written; where it landed (its index part kept)."""
        offset = start + header
        self.position = end = offset + padded(record.size)
        self.records += 1
        self._ends.append(end)
        entry = SpoolEntry(
            self.bucket, self.batch_id, self.tar_key, name, offset, record.size, end, record
        )
        self._fragments.append(index_fragment(entry))
        return entry

    def _roll_back(self, start: int) -> None:
        try:
            os.ftruncate(self._fd, start)
            os.lseek(self._fd, start, os.SEEK_SET)
        except OSError:
            self.failed = True
            logger.exception("cannot roll back %s; it takes no more writes", self.path)

    def size_with(self, record: ObjectRecord) -> int:
        """Tar size, end marker included, if ``record`` were appended next.

        The header is encoded for real: PAX records (long keys, metadata) can make it several
        blocks long, and an estimate would let a batch grow past ``max_bytes``.
        """
        _, header = self._header_for(record)
        return self.position + len(header) + padded(record.size) + len(TAR_END)

    def _header_for(self, record: ObjectRecord) -> tuple[str, bytes]:
        """The member name and header of ``record`` as the next member (encoded once for the
        size check and the append that follows it)."""
        cached = self._header
        if cached is not None and cached[0] is record and cached[1] == self.records:
            return cached[2], cached[3]
        name = member_name(record.key, self.records)
        header = encode_header(record, name)
        self._header = (record, self.records, name, header)
        return name, header

    def sync(self) -> None:
        """fdatasync the file (and, the first time, its directory, so the file is found after a
        crash). A failure is fatal for this file (fsyncgate)."""
        if self.failed:
            raise SpoolFailedError(f"{self.path} failed earlier")
        try:
            self._datasync()
            if not self._entry_durable:
                fsync_dir(self.path.parent)
                self._entry_durable = True
        except OSError as exc:
            self.failed = True
            raise SpoolFailedError(f"fdatasync of {self.path} failed: {exc}") from exc

    def _datasync(self) -> None:
        """The system call under ``sync`` (a test's disk overrides it to fail like a disk)."""
        os.fdatasync(self._fd)

    def write_end(self) -> None:
        """Append the end-of-archive marker (two zero blocks); the file takes no more members."""
        try:
            write_all(self._fd, TAR_END)
        except OSError as exc:
            self._roll_back(self.position)
            raise SpoolError(f"cannot seal {self.path}: {exc}") from exc
        self.position += len(TAR_END)

    def finish(self, reason: str) -> SealedBatch:
        """Close a file whose end marker is written and synced, and rename it to ``.tar``."""
        self.close()
        sealed_path = self.path.with_suffix(SEALED_SUFFIX)
        self.path.rename(sealed_path)
        fsync_dir(sealed_path.parent)
        sealed = _sealed(
            sealed_path,
            self.bucket,
            self.batch_id,
            self.prefix,
            self.position,
            self.records,
            reason,
        )
        return replace(sealed, index_fragments=tuple(self._fragments[: self.records]))

    def reseal_durable(self, durable: int, reason: str) -> SealedBatch | None:
        """After a failure: keep the members that ended at or before ``durable`` (they were
        synced), seal them, and return the batch; None (file removed) when none was."""
        self.failed = True
        records = bisect.bisect_right(self._ends, durable)
        if records == 0:
            self.discard()
            return None
        end = self._ends[records - 1]
        os.ftruncate(self._fd, end)
        os.lseek(self._fd, end, os.SEEK_SET)
        write_all(self._fd, TAR_END)
        os.fdatasync(self._fd)
        self.position, self.records = end + len(TAR_END), records
        return self.finish(reason)

    def discard(self) -> None:
        """Close and delete a file that holds no record."""
        self.close()
        self.path.unlink(missing_ok=True)
        fsync_dir(self.path.parent)

    def close(self) -> None:
        """Close the file descriptor (idempotent)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


@dataclass(frozen=True, slots=True)
class Scan:
    """The complete members found at the start of a tar file."""

    entries: list[IndexEntry]
    end: int
    """Offset just after the last complete member, its zero padding included (beyond the file
    size when a crash cut the padding short: resealing fills it in)."""
    stopped: ObjectRecord | None = None
    """The member the scan stopped at because its data was cut short (None: it stopped at the
    end marker, the end of the file or an unreadable header)."""
    spans: list[tuple[int, int]] = field(default_factory=list)
    """Where each of ``entries`` lies in the file: its header's first byte, its end."""
    damaged: list[tuple[ObjectRecord, int, int]] = field(default_factory=list)
    """With ``verify``: complete members whose data does not match their MD5 (record, first
    byte of the header, end), skipped."""


def scan(path: Path, *, verify: bool = False) -> Scan:
    """Read the members of a (possibly torn) spool tar.

    Stops at the end marker and at the first incomplete or unreadable member. With ``verify``,
    a complete member whose data does not match its recorded MD5 is left out of ``entries``
    and listed in ``damaged`` (its header gave its size, so the members after it are found).
    """
    entries: list[IndexEntry] = []
    spans: list[tuple[int, int]] = []
    damaged: list[tuple[ObjectRecord, int, int]] = []
    end = 0
    with path.open("rb") as raw:
        file_size = os.fstat(raw.fileno()).st_size
        try:
            archive = tarfile.open(fileobj=raw, mode="r:")  # noqa: SIM115  closed below
        except tarfile.ReadError:
            return Scan(entries, 0)
        try:
            for info in _members(archive):
                record = decode_record(info)
                data_end = info.offset_data + info.size
                if record is None:
                    break
                if data_end > file_size:
                    return Scan(entries, end, record, spans, damaged)
                start, end = end, info.offset_data + padded(info.size)
                if verify and not _md5_matches(raw, info.offset_data, record):
                    damaged.append((record, start, end))
                    continue
                entries.append(IndexEntry(record=record, member=info.name, offset=info.offset_data))
                spans.append((start, end))
        finally:
            archive.close()
    return Scan(entries, end, None, spans, damaged)


def _members(archive: tarfile.TarFile) -> list[tarfile.TarInfo]:
    found: list[tarfile.TarInfo] = []
    while True:
        try:
            info = archive.next()
        except (tarfile.TarError, UnicodeDecodeError, ValueError):
            return found
        if info is None:
            return found
        found.append(info)


def _md5_matches(stream: BinaryIO, offset: int, record: ObjectRecord) -> bool:
    stream.seek(offset)
    digest = hashlib.md5(usedforsecurity=False)
    remaining = record.size
    while remaining:
        chunk = stream.read(min(remaining, 1 << 20))
        if not chunk:
            return False
        digest.update(chunk)
        remaining -= len(chunk)
    return digest.hexdigest() == record.md5_hex


@dataclass(frozen=True, slots=True)
class LostObject:
    """An object of a sealed batch (so acknowledged) whose bytes recovery found cut short or
    damaged."""

    bucket: str
    batch_id: str
    key: str | None
    """None when the member's header itself is unreadable."""


@dataclass(frozen=True, slots=True)
class Recovery:
    """What ``recover_all`` found."""

    batches: list[SealedBatch]
    """Batches to upload: sealed as they were, or cut to their complete members and sealed."""
    lost: list[LostObject]
    """Members of sealed batches that were cut or damaged (their objects were acknowledged)."""
    quarantined: list[tuple[str, str]]
    """(bucket, batch id) of files moved to ``_quarantine/`` (no readable member)."""
    entries: dict[str, list[IndexEntry]] = field(default_factory=dict)
    """The verified members of each of ``batches`` by batch id, at their offsets in its file
    as it is now (the catalog's rows for it, without reading the file again)."""


def recover(spool_dir: Path, *, prefix: str) -> list[SealedBatch]:
    """The batches of ``recover_all``."""
    return recover_all(spool_dir, prefix=prefix).batches


def recover_all(spool_dir: Path, *, prefix: str) -> Recovery:
    """Make every batch left by an earlier run uploadable.

    Every file, open or sealed, keeps its complete, MD5-verified members: the scan stops at
    the first member cut short or with an unreadable header, and skips (its header giving
    its size) a complete member whose data does not match its MD5. A sealed tar with nothing
    else (every member verified, then the end marker) is returned as it is. In any other
    file, the bytes recovery is about to drop (skipped members, the tail after the last
    complete member) are first copied to ``_quarantine/`` (``_save_cut``), then the file is
    rewritten without the skipped members, cut after the last complete one and sealed. A
    sealed tar's members were all acknowledged, so losing some is logged as an error and
    reported in ``lost``. A file with no readable member is removed if empty and moved to
    ``_quarantine/`` otherwise.
    """
    recovery = Recovery([], [], [])
    if not spool_dir.is_dir():
        return recovery
    for bucket_dir in sorted(p for p in spool_dir.iterdir() if p.is_dir()):
        if bucket_dir.name.startswith("_"):
            continue
        for path in sorted(bucket_dir.iterdir()):
            batch = _recover_file(path, bucket_dir.name, spool_dir, prefix, recovery)
            if batch is not None:
                recovery.batches.append(batch)
    return recovery


def reseal_stranded(path: Path, *, bucket: str, spool_dir: Path, prefix: str) -> Recovery:
    """Seal the ``.open`` file of a batch whose seal failed, as start-up recovery would: its
    complete, verified members, the rest quarantined. A rename that went through before the
    failure left the ``.tar``, taken as it is if intact. The batch (if anything is left to
    upload) is in ``batches``, its members in ``entries``.

    Raises:
        OSError: the spool still refuses (the caller tries again later).
    """
    recovery = Recovery([], [], [])
    sealed_path = path.with_suffix(SEALED_SUFFIX)
    if not path.exists() and sealed_path.exists():
        fsync_dir(sealed_path.parent)  # the rename may not be durable yet
        path = sealed_path
    elif not path.exists():
        logger.error("stranded batch %s is gone; nothing to seal", path)
        return recovery
    sealed = _recover_file(path, bucket, spool_dir, prefix, recovery)
    if sealed is not None:
        recovery.batches.append(sealed)
    for lost in recovery.lost:  # acknowledged, so logged as recovery logs them
        logger.error("stranded batch %s: s3://%s/%s is lost", lost.batch_id, bucket, lost.key)
    return recovery


def _recover_file(
    path: Path, bucket: str, spool_dir: Path, prefix: str, recovery: Recovery
) -> SealedBatch | None:
    batch_id = path.name.removesuffix(OPEN_SUFFIX).removesuffix(SEALED_SUFFIX)
    if path.suffix in (UPLOAD_ID_SUFFIX, PARKED_SUFFIX, PARKED_NEW_SUFFIX):
        return None  # read by the uploader before it uploads (or parks) the batch again
    if not is_batch_id(batch_id) or path.suffix not in (OPEN_SUFFIX, SEALED_SUFFIX):
        logger.warning("ignoring unexpected file in the spool: %s", path)
        return None
    result = scan(path, verify=True)
    size = path.stat().st_size
    sealed = path.suffix == SEALED_SUFFIX
    clean_tail = _zeros_after(path, result.end)
    if sealed:
        for record, _, _ in result.damaged:
            recovery.lost.append(LostObject(bucket, batch_id, record.key))
        if not clean_tail:
            _log_sealed_loss(path, result, size)
            recovery.lost.append(LostObject(bucket, batch_id, _key_of(result.stopped)))
        elif not result.damaged and size >= result.end + len(TAR_END):  # intact
            recovery.entries[batch_id] = result.entries
            return _sealed(path, bucket, batch_id, prefix, size, len(result.entries), "recovered")
    if not result.entries:
        if _discard(path, spool_dir):
            recovery.quarantined.append((bucket, batch_id))
        return None
    _save_cut(path, bucket, batch_id, spool_dir, result, size if not clean_tail else None)
    if result.damaged:
        result = _rewrite(path, bucket, batch_id, spool_dir, result)
    recovery.entries[batch_id] = result.entries
    return _reseal(path, bucket, batch_id, prefix, result)


def _save_cut(
    path: Path, bucket: str, batch_id: str, spool_dir: Path, result: Scan, size: int | None
) -> None:
    """Copy, durably, the bytes recovery is about to drop from ``path`` to
    ``_quarantine/<bucket>--<batch id>.<offset>.cut``, one file per range, named by where it
    started in ``path``: each damaged member (header and data, so ``tar -t`` lists it) and,
    when ``size`` is given (something but zeros follows the last complete member), the tail
    from there to ``size``."""
    ranges = [(start, end, record.key) for record, start, end in result.damaged]
    if size is not None:
        ranges.append((result.end, size, _key_of(result.stopped) or "an unreadable header"))
    if not ranges:
        return
    quarantine = _quarantine_dir(spool_dir)
    with path.open("rb") as source:
        for start, end, what in ranges:
            target = quarantine / f"{bucket}--{batch_id}.{start}.cut"
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
            try:
                _copy_range(source, start, end, fd)
                os.fsync(fd)
            finally:
                os.close(fd)
            logger.error(
                "%s: bytes %d-%d (from member %s) do not verify; copied to %s",
                path,
                start,
                end,
                what,
                target,
            )
    fsync_dir(quarantine)


def _quarantine_dir(spool_dir: Path) -> Path:
    quarantine = spool_dir / QUARANTINE_DIR
    if not quarantine.is_dir():
        quarantine.mkdir(exist_ok=True)
        fsync_dir(spool_dir)
    return quarantine


def _copy_range(source: BinaryIO, start: int, end: int, fd: int) -> None:
    source.seek(start)
    remaining = end - start
    while remaining > 0:
        chunk = source.read(min(remaining, 1 << 20))
        if not chunk:
            return  # the file ends first (a tail cut short)
        write_all(fd, chunk)
        remaining -= len(chunk)


def _rewrite(path: Path, bucket: str, batch_id: str, spool_dir: Path, result: Scan) -> Scan:
    """Replace ``path`` (atomically, durably) by its verified members alone, without an end
    marker: the damaged ones are skipped (their bytes were saved by ``_save_cut``). Returns
    the scan of the new file."""
    tmp_dir = spool_dir / TMP_DIR
    tmp_dir.mkdir(exist_ok=True)
    tmp = tmp_dir / f"{bucket}--{path.name}.rewrite"
    entries: list[IndexEntry] = []
    spans: list[tuple[int, int]] = []
    position = 0
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
    try:
        with path.open("rb") as source:
            for entry, (start, end) in zip(result.entries, result.spans, strict=True):
                _copy_range(source, start, end, fd)
                entries.append(replace(entry, offset=position + entry.offset - start))
                spans.append((position, position + end - start))
                position += end - start
        # The last member's padding may be cut short in the source: ``_reseal`` fills it in.
        os.fsync(fd)
    finally:
        os.close(fd)
    tmp.rename(path)
    fsync_dir(path.parent)
    logger.warning(
        "rewrote %s without its %d damaged members: %d members kept",
        path,
        len(result.damaged),
        len(entries),
    )
    return Scan(entries, position, None, spans)


def _log_sealed_loss(path: Path, result: Scan, size: int) -> None:
    logger.error(
        "sealed batch %s is damaged after byte %d of %d (member %s cut or corrupt): the "
        "objects after its %d complete members were acknowledged and are lost",
        path,
        result.end,
        size,
        _key_of(result.stopped) or "with an unreadable header",
        len(result.entries),
    )


def _key_of(record: ObjectRecord | None) -> str | None:
    return None if record is None else record.key


def _zeros_after(path: Path, end: int) -> bool:
    """Whether nothing but zeros (an end marker, maybe cut short) follows ``end``."""
    with path.open("rb") as handle:
        handle.seek(end)
        while chunk := handle.read(1 << 16):
            if chunk.count(0) != len(chunk):
                return False
    return True


def _reseal(path: Path, bucket: str, batch_id: str, prefix: str, result: Scan) -> SealedBatch:
    size = path.stat().st_size
    if size != result.end:
        logger.warning("truncating torn tail of %s: %d -> %d bytes", path, size, result.end)
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.ftruncate(fd, result.end)  # also zero-fills padding a crash cut short
        os.lseek(fd, result.end, os.SEEK_SET)
        write_all(fd, TAR_END)
        os.fdatasync(fd)
    finally:
        os.close(fd)
    sealed_path = path.with_suffix(SEALED_SUFFIX)
    if sealed_path != path:
        path.rename(sealed_path)
        fsync_dir(sealed_path.parent)
    total = result.end + len(TAR_END)
    logger.info("recovered %s with %d records", sealed_path, len(result.entries))
    return _sealed(sealed_path, bucket, batch_id, prefix, total, len(result.entries), "recovered")


def _sealed(
    path: Path, bucket: str, batch_id: str, prefix: str, size: int, records: int, reason: str
) -> SealedBatch:
    return SealedBatch(
        bucket=bucket,
        batch_id=batch_id,
        path=path,
        tar_key=tar_key(prefix, batch_id),
        index_key=index_key(prefix, batch_id),
        size=size,
        records=records,
        reason=reason,
    )


def _discard(path: Path, spool_dir: Path) -> bool:
    """Remove an empty file (False) or quarantine one with bytes (True)."""
    if path.stat().st_size == 0:
        path.unlink()
        return False
    quarantine = _quarantine_dir(spool_dir)
    target = quarantine / f"{path.parent.name}--{path.name}"
    path.rename(target)
    fsync_dir(quarantine)
    fsync_dir(path.parent)
    logger.error("no readable member in %s; moved to %s", path, target)
    return True


def remove(batch: SealedBatch) -> None:
    """Delete an uploaded batch's local file durably."""
    remove_durably(batch.path)


def upload_id_path(batch: SealedBatch) -> Path:
    """Where the id of the batch's multipart upload is kept while the upload is open."""
    return batch.path.with_suffix(UPLOAD_ID_SUFFIX)


def write_durably(path: Path, data: bytes) -> None:
    """Create ``path`` with ``data``, fsync it and its directory."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(path.parent)


def remove_durably(path: Path) -> None:
    """Delete ``path`` (if present) and fsync its directory."""
    try:
        path.unlink()
    except FileNotFoundError:
        return
    fsync_dir(path.parent)


def lock_spool(spool_dir: Path) -> BinaryIO:
    """Hold an exclusive lock on the spool for this process (released when the file closes).

    Raises:
        SpoolError: another process uses the spool.
    """
    handle = (spool_dir / "_lock").open("ab")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        handle.close()
        raise SpoolError(f"{spool_dir} is used by another s3batchd process") from exc
    return handle


def batches_on_disk(spool_dir: Path) -> list[Path]:
    """Batch files (open or sealed) still in the spool."""
    return [
        path
        for bucket_dir in spool_dir.iterdir()
        if bucket_dir.is_dir() and not bucket_dir.name.startswith("_")
        for path in bucket_dir.iterdir()
        if path.suffix in (OPEN_SUFFIX, SEALED_SUFFIX)
    ]


def check_writable(spool_dir: Path) -> None:
    """Create the spool directory and prove a file can be written and synced there."""
    try:
        spool_dir.mkdir(parents=True, exist_ok=True)
        probe = spool_dir / ".probe"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise SpoolError(f"spool directory {spool_dir} is not writable: {exc}") from exc
