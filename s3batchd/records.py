"""Value objects passed between the front, the spool, the batcher and the uploader."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

#: MD5 of no bytes (a tombstone's data).
EMPTY_MD5 = "d41d8cd98f00b204e9800998ecf8427e"
#: Stored headers an attribute update replaces (PutObjectTagging, PutObjectAcl...): the
#: others stay those of the object's PUT.
UPDATED_HEADERS = ("x-amz-tagging", "x-amz-acl")


def byte_range(offset: int, length: int) -> str | None:
    """``bytes=<first>-<last>`` for a ranged GET of ``length`` bytes at ``offset`` (the
    ``x-s3batchd-range`` header), or None when ``length`` is 0: an empty range cannot be
    asked for."""
    if length == 0:
        return None
    return f"bytes={offset}-{offset + length - 1}"


def updated_headers(headers: dict[str, str], update: dict[str, str]) -> dict[str, str]:
    """An object's stored ``headers`` after an attribute update carrying ``update``."""
    kept = {name: value for name, value in headers.items() if name not in UPDATED_HEADERS}
    kept.update({name: value for name, value in update.items() if name in UPDATED_HEADERS})
    return kept


@dataclass(slots=True)
class ObjectRecord:
    """One object as the client sent it, decoded and verified. A value: never changed once
    built (``dataclasses.replace`` makes a changed copy). Not ``frozen``, as ``SpoolEntry``
    is not: a frozen dataclass's ``__init__`` sets each field through ``object.__setattr__``,
    1.5-2 us per object on the PutObject path against 0.3 (bench/README.md, session 13).
    Neither is hashable (the record holds dicts)."""

    key: str
    """The exact S3 key (percent-decoded once, never normalised)."""
    size: int
    """Decoded payload length in bytes."""
    md5_hex: str
    """Hex MD5 of the payload; the ETag is this value in double quotes."""
    content_type: str = "binary/octet-stream"
    metadata: dict[str, str] = field(default_factory=dict)
    """``x-amz-meta-*`` values by lower-cased name (without the prefix)."""
    headers: dict[str, str] = field(default_factory=dict)
    """Other stored headers (Cache-Control, Content-Disposition, ...) by lower-cased name."""
    checksums: dict[str, str] = field(default_factory=dict)
    """Verified ``x-amz-checksum-*`` values by lower-cased algorithm name (base64)."""
    mtime: float = 0.0
    """When the object was received (Unix time)."""
    multipart_etag: str = ""
    """For an object assembled from a client's multipart upload: S3's multipart ETag
    (``<hex MD5 of the parts' MD5s>-<parts>``, unquoted); empty otherwise."""
    deleted: bool = False
    """A tombstone: the key was deleted (or overwritten in the bucket) at ``mtime``; no data."""
    update_of: float | None = None
    """An attribute update (no data): the object of ``key`` written at this stamp has, since
    ``mtime``, the ``UPDATED_HEADERS`` given in ``headers`` (its tags and canned ACL) and no
    others of them."""

    @property
    def etag(self) -> str:
        """The S3 ETag: the quoted hex MD5, or the multipart form for an assembled upload."""
        return f'"{self.multipart_etag or self.md5_hex}"'


class Placed(Protocol):
    """An object and where its member is in a batch's tar: what its part of the index and its
    catalog row are rendered from (a ``SpoolEntry`` as it is appended, an ``IndexEntry`` read
    back from a tar or an index)."""

    @property
    def record(self) -> ObjectRecord:
        """The object."""

    @property
    def member(self) -> str:
        """Tar member name."""

    @property
    def offset(self) -> int:
        """Offset of the object's data (not its header) inside the tar."""


@dataclass(slots=True)
class SpoolEntry:
    """One object as stored: the record and where it landed in a batch (a value, never
    changed: see ``ObjectRecord`` for why it is not ``frozen``). The one description
    of a written object: its PAX records (``tarmember.encode_header``), its part of the index
    (``index.index_fragment``), its catalog row (``catalog.Catalog.put``) and the PutObject
    answer's headers are each rendered from it in one place."""

    bucket: str
    batch_id: str
    tar_key: str
    """Upstream key of the batch's tar."""
    member: str
    """Tar member name."""
    offset: int
    """Offset of the object's data (not its header) inside the tar."""
    length: int
    end: int
    """Spool file position after the member (its padding included)."""
    record: ObjectRecord
    """The object's attributes."""

    @property
    def byte_range(self) -> str | None:
        """``bytes=first-last`` for a ranged GET, or None for an empty object."""
        return byte_range(self.offset, self.length)


@dataclass(frozen=True, slots=True)
class SealedBatch:
    """A closed tar waiting for upload."""

    bucket: str
    batch_id: str
    path: Path
    tar_key: str
    index_key: str
    size: int
    records: int
    reason: str
    """Why it was sealed: linger, records, bytes, shutdown or recovered."""
    index_fragments: tuple[bytes, ...] | None = None
    """The members' parts of the index, rendered as they were appended, when the process that
    wrote them still has them (else the uploader reads the tar back to render the index)."""
