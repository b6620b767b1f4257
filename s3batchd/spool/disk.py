"""``SpoolDisk``: what the batcher does with the open spool file of a batch, as a protocol.

``spool/files.SpoolFile`` implements it (mypy checks it below); the batcher opens its files
through an ``OpenSpool`` (``SpoolFile.create`` unless told otherwise), so tests of the batcher
can give it a disk of their own (a sync that is slow, held or recorded) instead of patching
``os.fdatasync`` or ``SpoolFile``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from pathlib import Path

    from s3batchd.records import ObjectRecord, SealedBatch, SpoolEntry
    from s3batchd.s3.body import BodyBuffer


class SpoolDisk(Protocol):
    """One open batch's append-only tar file."""

    path: Path
    bucket: str
    batch_id: str
    position: int
    """Bytes written (and not rolled back) so far."""
    records: int

    def append(self, record: ObjectRecord, body: BodyBuffer) -> SpoolEntry:
        """Write one member (rolled back and SpoolError on failure)."""

    def append_bytes(self, record: ObjectRecord, data: bytes) -> SpoolEntry:
        """Write one member held in memory in one write (rolled back and SpoolError on
        failure)."""

    def size_with(self, record: ObjectRecord) -> int:
        """The file's size once ``record`` is appended and the end marker written."""

    def sync(self) -> None:
        """Make everything written so far durable (fdatasync)."""

    def write_end(self) -> None:
        """Write the tar's end marker."""

    def finish(self, reason: str) -> SealedBatch:
        """Seal: end marker, sync, rename to ``.tar``."""

    def reseal_durable(self, durable: int, reason: str) -> SealedBatch | None:
        """Seal what was durable up to ``durable`` after a failure, if anything."""

    def discard(self) -> None:
        """Delete the file (a batch that holds nothing)."""

    def close(self) -> None:
        """Close the file descriptor."""


class OpenSpool(Protocol):
    """Creates ``<directory>/<batch_id>.open`` (``SpoolFile.create``)."""

    def __call__(
        self, directory: Path, *, bucket: str, batch_id: str, prefix: str
    ) -> SpoolDisk: ...


if TYPE_CHECKING:
    from s3batchd.spool.files import SpoolFile

    _file: type[SpoolDisk] = SpoolFile  # the real disk implements the protocol
    _open: OpenSpool = SpoolFile.create
