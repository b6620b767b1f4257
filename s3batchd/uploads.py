"""Client multipart uploads kept in the spool until they complete, abort or move upstream.

``<spool.dir>/_multipart/<upload id>/upload.json`` describes an upload (bucket, key, the
CreateMultipartUpload headers, its parts, and the bucket's upload id once it became a real
multipart upload); ``part-NNNNN`` holds a part's bytes. Writes are fsync'd (unless
``spool.durability = "none"``) before a part is acknowledged, like a PUT: a restart loses no
acknowledged part.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from s3batchd.body import BodyBuffer
from s3batchd.spool import fsync_dir

UPLOADS_DIR = "_multipart"
_ID = re.compile(r"^[0-9a-f]{32}$")
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
    """One multipart upload the daemon holds."""

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
    parts: dict[int, Part] = field(default_factory=dict)
    completed: str = ""
    """The CompleteMultipartUpload answer (XML) once completed."""
    reserved: int = 0
    """Bytes of parts being received (not saved)."""
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def size(self) -> int:
        """Bytes of the parts held."""
        return sum(part.size for part in self.parts.values())


class UploadStore:
    """The uploads directory of one spool."""

    def __init__(self, spool_dir: Path, *, sync: bool) -> None:
        self.root = spool_dir / UPLOADS_DIR
        self._sync = sync
        self._cache: dict[str, Upload] = {}
        self._swept = 0.0

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
        self._cache[upload.upload_id] = upload
        return upload

    def get(self, upload_id: str, bucket: str, key: str) -> Upload | None:
        """The upload with this id for ``bucket``/``key``, or None if the daemon has none (it
        may be the bucket's own)."""
        if not _ID.match(upload_id):
            return None
        upload = self._cache.get(upload_id) or self._load(upload_id)
        if upload is None or (upload.bucket, upload.key) != (bucket, key):
            return None
        return upload

    def in_bucket(self, bucket: str) -> list[Upload]:
        """Every upload held for ``bucket`` (from disk), oldest first."""
        if not self.root.is_dir():
            return []
        uploads = []
        for path in self.root.iterdir():
            upload = self._cache.get(path.name) or self._load(path.name)
            if upload is not None and upload.bucket == bucket and not upload.completed:
                uploads.append(upload)
        return sorted(uploads, key=lambda u: (u.key, u.initiated))

    def _load(self, upload_id: str) -> Upload | None:
        try:
            data: dict[str, Any] = json.loads((self.root / upload_id / "upload.json").read_bytes())
        except (FileNotFoundError, NotADirectoryError, ValueError):
            return None
        parts = {int(n): Part(**p) for n, p in data.pop("parts").items()}
        upload = Upload(**data, parts=parts)
        self._cache[upload_id] = upload
        return upload

    def save(self, upload: Upload) -> None:
        """Write ``upload.json`` atomically."""
        data = asdict(upload)
        for name in ("lock", "reserved"):
            data.pop(name)
        directory = self.root / upload.upload_id
        temporary = directory / "upload.json.tmp"
        temporary.write_bytes(json.dumps(data).encode())
        if self._sync:
            _fsync(temporary)
        temporary.replace(directory / "upload.json")
        if self._sync:
            fsync_dir(directory)

    def part_path(self, upload: Upload, number: int) -> Path:
        """Where a part's bytes are kept."""
        return self.root / upload.upload_id / f"part-{number:05d}"

    def write_part(self, upload: Upload, part: Part, body: BodyBuffer) -> None:
        """Keep a part's bytes and record it (replacing an earlier part of that number)."""
        path = self.part_path(upload, part.number)
        temporary = path.with_suffix(".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
        try:
            body.write_to(fd)
            if self._sync:
                os.fdatasync(fd)
        finally:
            os.close(fd)
        temporary.replace(path)
        upload.parts[part.number] = part
        self.save(upload)

    def read_part(self, upload: Upload, number: int) -> bytes:
        """A part's bytes."""
        return self.part_path(upload, number).read_bytes()

    def drop_parts(self, upload: Upload) -> None:
        """Delete the parts' bytes (they went to the bucket, or into a batch)."""
        for number in list(upload.parts):
            self.part_path(upload, number).unlink(missing_ok=True)

    def remove(self, upload: Upload) -> None:
        """Forget an upload."""
        self._cache.pop(upload.upload_id, None)
        shutil.rmtree(self.root / upload.upload_id, ignore_errors=True)

    def _sweep(self) -> None:
        now = time.time()
        if now - self._swept < SWEEP_INTERVAL_S or not self.root.is_dir():
            return
        self._swept = now
        for path in self.root.iterdir():
            upload = self._cache.get(path.name) or self._load(path.name)
            if upload is None:
                continue
            age = now - (path / "upload.json").stat().st_mtime
            if (upload.completed and age > COMPLETED_KEEP_S) or age > ABANDONED_AFTER_S:
                self.remove(upload)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
