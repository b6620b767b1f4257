"""A received object body: in memory while small, spilled to a temporary file when large.

The tar header needs the size before the data, and a slow client must not hold the spool, so
a body is received completely before it is appended.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from s3batchd.constants import MB

_COPY_CHUNK = 1 * MB


class BodyBuffer:
    """Bytes received for one object."""

    def __init__(self, *, memory_limit: int, spill_dir: Path) -> None:
        self._memory_limit = memory_limit
        self._spill_dir = spill_dir
        self._chunks: list[bytes] = []
        self._file: BinaryIO | None = None
        self.size = 0

    def write(self, data: bytes) -> None:
        """Append ``data``."""
        if not data:
            return
        self.size += len(data)
        if self._file is not None:
            self._file.write(data)
            return
        self._chunks.append(data)
        if self.size > self._memory_limit:
            self._spill()

    def _spill(self) -> None:
        self._spill_dir.mkdir(parents=True, exist_ok=True)
        self._file = tempfile.TemporaryFile(dir=self._spill_dir)  # noqa: SIM115  closed in close()
        for chunk in self._chunks:
            self._file.write(chunk)
        self._chunks.clear()

    @property
    def in_memory(self) -> bool:
        """Whether the body is held in memory (cheap to copy on the event loop)."""
        return self._file is None

    def getvalue(self) -> bytes:
        """The whole body (reads the temporary file when spilled)."""
        if self._file is None:
            return b"".join(self._chunks)
        self._file.seek(0)
        return self._file.read()

    def chunks(self) -> Iterator[bytes]:
        """The body in pieces of at most 1 MiB (from the temporary file when spilled)."""
        if self._file is None:
            yield from self._chunks
            return
        self._file.flush()
        self._file.seek(0)
        while chunk := self._file.read(_COPY_CHUNK):
            yield chunk

    def write_to(self, fd: int) -> None:
        """Write the whole body to ``fd`` at its current position, retrying short writes."""
        if self._file is None:
            for chunk in self._chunks:
                write_all(fd, chunk)
            return
        self._file.flush()
        self._file.seek(0)
        while chunk := self._file.read(_COPY_CHUNK):
            write_all(fd, chunk)

    def close(self) -> None:
        """Release memory and the temporary file."""
        self._chunks.clear()
        if self._file is not None:
            self._file.close()
            self._file = None


def write_all(fd: int, data: bytes | memoryview) -> None:
    """``os.write`` until every byte is written (a full disk gives a short write first)."""
    written = os.write(fd, data)
    if written == len(data):
        return
    view = memoryview(data)[written:]
    while view:
        written = os.write(fd, view)
        view = view[written:]
