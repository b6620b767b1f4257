"""Client multipart uploads kept in the spool until they complete, abort or move upstream.

``<spool.dir>/_multipart/<upload id>/`` holds an upload: ``upload.json`` (bucket, key, the
CreateMultipartUpload headers, and the bucket's upload id once it became a real multipart
upload), and per part ``part-NNNNN`` (its bytes) and ``part-NNNNN.json`` (size, MD5,
checksum). Writes are fsync'd (unless ``spool.durability = "none"``) before a part is
acknowledged, like a PUT: a restart loses no acknowledged part.

With ``server.workers`` > 1 every worker process serves every upload (a client's parts arrive
on any of its connections), so the state lives only on disk, read afresh for each request, and
changes that depend on it (moving the upload to the bucket, completing, aborting, keeping a
part) hold the upload's ``flock`` as well as an in-process lock.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from s3batchd.s3.body import BodyBuffer
from s3batchd.spool.files import fsync_dir

UPLOADS_DIR = "_multipart"
#: Pieces a kept part is read in when it is sent to the bucket.
PIECE_BYTES = 1024 * 1024
_ID = re.compile(r"^[0-9a-f]{32}$")
_PART = re.compile(r"^part-(\d{5})\.json$")
_PART_DATA = re.compile(r"^part-\d{5}$")
#: Completed uploads are remembered this long, so a retried CompleteMultipartUpload gets the
#: same answer.
COMPLETED_KEEP_S = 3600.0
#: Uploads neither completed nor aborted are removed after this long (S3 keeps them until a
#: lifecycle rule aborts them; a sidecar's disk is smaller).
ABANDONED_AFTER_S = 7 * 24 * 3600.0
SWEEP_INTERVAL_S = 60.0


@dataclass(slots=True)
class Part:
    """One uploaded part."""

    number: int
    size: int
    md5_hex: str
    checksum: str = ""
    """Base64 checksum of the upload's algorithm (empty without one)."""
    mtime: float = 0.0


@dataclass(slots=True)
class Upload:
    """One multipart upload the daemon holds, as read from disk."""

    upload_id: str
    bucket: str
    key: str
    initiated: float
    headers: dict[str, str]
    """The CreateMultipartUpload headers to forward if the upload moves to the bucket."""
    checksum_algorithm: str = ""
    """Lower-case algorithm (``crc32`` ...) asked for at creation, or empty."""
    checksum_type: str = ""
    """``COMPOSITE`` or ``FULL_OBJECT`` when asked for at creation, or empty."""
    upstream_id: str = ""
    """The bucket's upload id once the parts passed ``batch.passthrough_bytes``."""
    completed: str = ""
    """The CompleteMultipartUpload answer (XML) once completed."""
    bucket_etags: dict[str, str] = field(default_factory=dict)
    """Parts the daemon held and sent when the upload moved to the bucket: the bucket's ETag
    by ``<part number> <ETag the client was given>`` (they differ when the bucket's ETags are
    not MD5s, e.g. with SSE-KMS)."""
    parts: dict[int, Part] = field(default_factory=dict)

    @property
    def size(self) -> int:
        """Bytes of the parts held."""
        return sum(part.size for part in self.parts.values())


class UploadStore:
    """The uploads directory of one spool (shared by every worker process)."""

    def __init__(self, spool_dir: Path, *, sync: bool) -> None:
        self.root = spool_dir / UPLOADS_DIR
        self._sync = sync
        self._locks: dict[str, asyncio.Lock] = {}
        self._receiving: dict[str, int] = {}
        self._swept = 0.0
        self.executor = ThreadPoolExecutor(2, "s3batchd-parts")
        """Writes (and fdatasyncs) of held parts, off the event loop. Its own threads: the
        default pool's also wait for other workers' upload locks."""

    def close(self) -> None:
        """Stop the part-writing threads (after the writes in progress)."""
        self.executor.shutdown(wait=True)

    def create(
        self,
        bucket: str,
        key: str,
        headers: dict[str, str],
        *,
        checksum_algorithm: str = "",
        checksum_type: str = "",
    ) -> Upload:
        """A new upload, saved."""
        self._sweep()
        upload = Upload(
            secrets.token_hex(16),
            bucket,
            key,
            time.time(),
            headers,
            checksum_algorithm=checksum_algorithm,
            checksum_type=checksum_type,
        )
        (self.root / upload.upload_id).mkdir(parents=True)
        self.save(upload)
        if self._sync:
            fsync_dir(self.root)
        return upload

    def get(self, upload_id: str, bucket: str, key: str) -> Upload | None:
        """The upload with this id for ``bucket``/``key``, or None if the daemon has none (it
        may be the bucket's own)."""
        if not _ID.match(upload_id):
            return None
        upload = self._load(upload_id)
        if upload is None or (upload.bucket, upload.key) != (bucket, key):
            return None
        return upload

    @asynccontextmanager
    async def locked(self, upload_id: str) -> AsyncIterator[Upload | None]:
        """The upload read afresh while this process and every other hold its lock (None if
        it was completed-and-swept or aborted meanwhile)."""
        lock = self._locks.setdefault(upload_id, asyncio.Lock())
        async with lock:
            try:
                fd = os.open(self.root / upload_id / "lock", os.O_RDWR | os.O_CREAT, 0o640)
            except FileNotFoundError:
                yield None
                return
            try:
                await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
                yield self._load(upload_id)
            finally:
                os.close(fd)  # releases the flock

    def receiving(self, upload_id: str, delta: int) -> int:
        """Bytes of parts this process is receiving for the upload (after adding ``delta``)."""
        total = self._receiving.get(upload_id, 0) + delta
        if total:
            self._receiving[upload_id] = total
        else:
            self._receiving.pop(upload_id, None)
        return total

    def in_bucket(self, bucket: str) -> list[Upload]:
        """Every upload held for ``bucket``, oldest first."""
        if not self.root.is_dir():
            return []
        uploads = []
        for path in self.root.iterdir():
            upload = self._load(path.name)
            if upload is not None and upload.bucket == bucket and not upload.completed:
                uploads.append(upload)
        return sorted(uploads, key=lambda u: (u.key, u.initiated))

    def _load(self, upload_id: str) -> Upload | None:
        directory = self.root / upload_id
        try:
            data: dict[str, Any] = json.loads((directory / "upload.json").read_bytes())
            names = [path.name for path in directory.iterdir()]
        except (FileNotFoundError, NotADirectoryError, ValueError):
            return None
        upload = Upload(**data)
        for name in names:
            if _PART.match(name):
                with suppress(FileNotFoundError, ValueError):
                    part = Part(**json.loads((directory / name).read_bytes()))
                    upload.parts[part.number] = part
        return upload

    def save(self, upload: Upload) -> None:
        """Write ``upload.json`` atomically (the parts are files of their own)."""
        data = asdict(upload)
        data.pop("parts")
        self._write(self.root / upload.upload_id / "upload.json", json.dumps(data).encode())

    def _write(self, path: Path, data: bytes) -> None:
        temporary = path.with_name(path.name + ".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
        try:
            os.write(fd, data)
            if self._sync:
                os.fdatasync(fd)
        finally:
            os.close(fd)
        temporary.replace(path)
        if self._sync:
            fsync_dir(path.parent)

    def part_path(self, upload: Upload, number: int) -> Path:
        """Where a part's bytes are kept."""
        return self.root / upload.upload_id / f"part-{number:05d}"

    def write_part(self, upload: Upload, part: Part, body: BodyBuffer) -> None:
        """Keep a part's bytes and record it (replacing an earlier part of that number)."""
        path = self.part_path(upload, part.number)
        temporary = path.with_name(path.name + ".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
        try:
            body.write_to(fd)
            if self._sync:
                os.fdatasync(fd)
        finally:
            os.close(fd)
        temporary.replace(path)
        self._write(path.with_name(path.name + ".json"), json.dumps(asdict(part)).encode())
        upload.parts[part.number] = part

    def read_part(self, upload: Upload, number: int) -> bytes:
        """A part's bytes."""
        return self.part_path(upload, number).read_bytes()

    def held_bytes(self) -> int:
        """Bytes of every part held on disk, by any worker (a directory scan: called for
        UploadPart only, whose parts count against ``spool.max_bytes``)."""
        total = 0
        with suppress(FileNotFoundError):
            for upload_dir in os.scandir(self.root):
                with suppress(OSError):
                    for entry in os.scandir(upload_dir.path):
                        if _PART_DATA.match(entry.name):
                            total += entry.stat().st_size
        return total

    def iter_part(self, upload: Upload, number: int) -> Iterator[bytes]:
        """A part's bytes in pieces of at most 1 MiB."""
        with self.part_path(upload, number).open("rb") as part:
            while piece := part.read(PIECE_BYTES):
                yield piece

    def drop_parts(self, upload: Upload) -> None:
        """Delete the parts (they went to the bucket, or into a batch)."""
        for number in list(upload.parts):
            path = self.part_path(upload, number)
            path.unlink(missing_ok=True)
            path.with_name(path.name + ".json").unlink(missing_ok=True)
        upload.parts.clear()

    def remove(self, upload: Upload) -> None:
        """Forget an upload."""
        self._locks.pop(upload.upload_id, None)
        shutil.rmtree(self.root / upload.upload_id, ignore_errors=True)

    def _sweep(self) -> None:
        now = time.time()
        if now - self._swept < SWEEP_INTERVAL_S or not self.root.is_dir():
            return
        self._swept = now
        for path in self.root.iterdir():
            try:
                age = now - (path / "upload.json").stat().st_mtime
            except FileNotFoundError:
                # A directory without its record (a crash inside create): once it is surely
                # not being created any more, nothing refers to it.
                with suppress(OSError):
                    if path.is_dir() and now - path.stat().st_mtime > COMPLETED_KEEP_S:
                        shutil.rmtree(path, ignore_errors=True)
                continue
            except NotADirectoryError:
                continue
            upload = self._load(path.name)
            if upload is None:
                continue
            if (upload.completed and age > COMPLETED_KEEP_S) or age > ABANDONED_AFTER_S:
                self.remove(upload)
