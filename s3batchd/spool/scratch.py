"""Scratch tars: a tar built outside the batcher (a compaction rewrite) on its way to the
bucket, written to a file in the spool's ``_tmp/`` instead of memory.

Layout under ``spool.dir``::

    _tmp/compaction-<batch id>.tar        the tar being built and uploaded
    _tmp/compaction-<batch id>.upload-id  its multipart upload's id while one is open

The file is created exclusively and holds an exclusive ``flock`` while its process uses it;
it is removed when the work ends, whichever way it ends. A process killed meanwhile leaves it
behind with its lock released by the kernel: :func:`sweep` removes every such leftover (and
its upload-id file) and leaves the locked files of live processes alone (and an empty one a
few seconds old, whose process may be about to lock it). The CRC32 of the
tar is kept as it is written, so the upload need not read the file again for it.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import time
import zlib
from pathlib import Path
from types import TracebackType

from s3batchd.s3.body import write_all
from s3batchd.spool.files import UPLOAD_ID_SUFFIX

logger = logging.getLogger(__name__)

#: Name of every scratch tar in ``_tmp/``: ``compaction-<batch id>.tar``.
SCRATCH_PREFIX = "compaction-"
SCRATCH_SUFFIX = ".tar"


class ScratchTar:
    """One scratch tar being written: appended to, its size and CRC32 kept."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd
        self.size = 0
        self._crc = 0

    @classmethod
    def create(cls, tmp_dir: Path, batch_id: str) -> ScratchTar:
        """Create ``<tmp_dir>/compaction-<batch_id>.tar`` (``tmp_dir`` too if need be),
        locked for this process."""
        tmp_dir.mkdir(parents=True, exist_ok=True)
        path = tmp_dir / f"{SCRATCH_PREFIX}{batch_id}{SCRATCH_SUFFIX}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BaseException:
            os.close(fd)
            path.unlink()
            raise
        return cls(path, fd)

    @property
    def crc32(self) -> str:
        """CRC32 of what was written so far, as 8 hex digits."""
        return f"{self._crc:08x}"

    def write(self, data: bytes | memoryview) -> None:
        """Append ``data``."""
        write_all(self._fd, data)
        self._crc = zlib.crc32(data, self._crc)
        self.size += len(data)

    def remove(self) -> None:
        """Delete the file (and an upload-id file left beside it), then unlock it."""
        if self._fd < 0:
            return
        for leftover in (self.path, self.path.with_suffix(UPLOAD_ID_SUFFIX)):
            leftover.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = -1

    def __enter__(self) -> ScratchTar:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.remove()


def sweep(tmp_dir: Path) -> list[Path]:
    """Remove the scratch tars of processes that died (unlocked), with their upload-id
    files, and upload-id files left without a tar; return the tars removed."""
    removed: list[Path] = []
    try:
        names = sorted(tmp_dir.glob(f"{SCRATCH_PREFIX}*"))
    except OSError:
        return removed
    for path in names:
        if path.suffix == UPLOAD_ID_SUFFIX:
            if not path.with_suffix(SCRATCH_SUFFIX).exists():
                path.unlink(missing_ok=True)
            continue
        if path.suffix != SCRATCH_SUFFIX or not _unlocked(path):
            continue
        path.with_suffix(UPLOAD_ID_SUFFIX).unlink(missing_ok=True)
        path.unlink(missing_ok=True)
        removed.append(path)
        logger.info("removed %s, left by a process that died while writing it", path)
    return removed


#: An empty scratch tar younger than this may be one whose process is between creating and
#: locking it: it is left for a later sweep.
_FRESH_S = 10.0


def _unlocked(path: Path) -> bool:
    """Whether no live process holds ``path``'s lock (False if it is gone meanwhile)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        status = os.fstat(fd)
        if status.st_size == 0 and time.time() - status.st_mtime < _FRESH_S:
            return False
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False
        raise
    finally:
        os.close(fd)
    return True
