"""Batch naming (writer id, batch id, upstream keys) and the JSON index written beside each tar."""

from __future__ import annotations

import functools
import json
import math
import re
import secrets
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from s3batchd.constants import INDEX_FORMAT, INDEX_VERSION
from s3batchd.records import ObjectRecord, Placed

_UNSAFE = re.compile(r"[^A-Za-z0-9.-]+")
_BATCH_ID = re.compile(
    r"^(?P<date>\d{8})T(?P<time>\d{9})Z-(?P<writer>[A-Za-z0-9.-]+)-(?P<seq>\d+)$"
)


@dataclass(frozen=True, slots=True)
class WriterId:
    """Who wrote a batch: host (or pod) name plus a random id per process start."""

    host: str
    instance: str

    @classmethod
    def generate(cls, host: str | None = None) -> WriterId:
        """A fresh writer id for this process."""
        name = _UNSAFE.sub("-", host or socket.gethostname()).strip("-.")[:63] or "host"
        return cls(host=name, instance=secrets.token_hex(4))

    def __str__(self) -> str:
        return f"{self.host}-{self.instance}"


def new_batch_id(writer: WriterId, seq: int, now: float | None = None) -> str:
    """A batch id unique across writers: UTC time, writer id and sequence number."""
    moment = datetime.fromtimestamp(time.time() if now is None else now, tz=UTC)
    stamp = moment.strftime("%Y%m%dT%H%M%S") + f"{moment.microsecond // 1000:03d}"
    return f"{stamp}Z-{writer}-{seq:06d}"


def is_batch_id(text: str) -> bool:
    """Whether ``text`` has the shape of a batch id (used when scanning the spool)."""
    return _BATCH_ID.match(text) is not None


def batch_created(batch_id: str) -> datetime:
    """The creation time encoded in a batch id."""
    match = _BATCH_ID.match(batch_id)
    if match is None:
        raise ValueError(f"not a batch id: {batch_id!r}")
    stamp = match["date"] + match["time"]
    return datetime.strptime(stamp, "%Y%m%d%H%M%S%f").replace(tzinfo=UTC)


def tar_key(prefix: str, batch_id: str) -> str:
    """Upstream key of a batch's tar: ``<prefix>YYYY/MM/DD/<batch id>.tar``."""
    return f"{_stem(prefix, batch_id)}.tar"


def index_key(prefix: str, batch_id: str) -> str:
    """Upstream key of a batch's index, beside its tar."""
    return f"{_stem(prefix, batch_id)}.index.json"


def _stem(prefix: str, batch_id: str) -> str:
    day = batch_id[:8]
    return f"{prefix}{day[:4]}/{day[4:6]}/{day[6:8]}/{batch_id}"


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """One object of a batch as listed in the index."""

    record: ObjectRecord
    member: str
    offset: int


def render_index(
    *,
    bucket: str,
    batch_id: str,
    tar_key: str,
    tar_size: int,
    entries: list[IndexEntry] | None = None,
    fragments: list[bytes] | None = None,
) -> bytes:
    """The index JSON of one batch (deterministic: a retry writes the same bytes).

    ``fragments``: the members already rendered by ``index_fragment`` (the spool does that as
    it appends, so a large index is not encoded in one go, holding the GIL for tens of
    milliseconds, when the batch is uploaded); else ``entries``. Both give the same bytes:
    JSON of a document is the JSON of its parts joined."""
    writer = batch_id.split("Z-", 1)[1].rsplit("-", 1)[0]
    head = {
        "format": INDEX_FORMAT,
        "version": INDEX_VERSION,
        "batch_id": batch_id,
        "created_at": iso_utc(batch_created(batch_id)),
        "writer": writer,
        "tar": {"bucket": bucket, "key": tar_key, "size": tar_size},
    }
    if fragments is None:
        fragments = [index_fragment(entry) for entry in entries or ()]
    marks = (_TOMBSTONE_MARK, _UPDATE_MARK)
    objects = [f for f in fragments if not f.startswith(marks)]
    tombstones = [f[len(_TOMBSTONE_MARK) :] for f in fragments if f.startswith(_TOMBSTONE_MARK)]
    updates = [f[len(_UPDATE_MARK) :] for f in fragments if f.startswith(_UPDATE_MARK)]
    parts = [_dumps(head)[:-1], b',"objects":[', b",".join(objects), b"]"]
    if tombstones:
        parts += [b',"tombstones":[', b",".join(tombstones), b"]"]
    if updates:
        parts += [b',"updates":[', b",".join(updates), b"]"]
    parts.append(b"}\n")
    return b"".join(parts)


#: Prefix of a tombstone's fragment (never the start of a JSON object).
_TOMBSTONE_MARK = b"T"
#: Prefix of an attribute update's fragment.
_UPDATE_MARK = b"U"


def index_fragment(entry: Placed) -> bytes:
    """One member's part of the index: its ``objects`` entry, or its ``tombstones`` or
    ``updates`` entry behind a marker."""
    if entry.record.deleted:
        return _TOMBSTONE_MARK + _dumps(_tombstone(entry))
    if entry.record.update_of is not None:
        return _UPDATE_MARK + _dumps(_update(entry, entry.record.update_of))
    return _dumps(_object(entry))


#: json.dumps with arguments other than the defaults builds an encoder per call; one per PUT
#: showed in the profile.
_ENCODER = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"))


def _dumps(value: object) -> bytes:
    return _ENCODER.encode(value).encode()


def _object(entry: Placed) -> dict[str, object]:
    record = entry.record
    out: dict[str, object] = {
        "key": record.key,
        "member": entry.member,
        "offset": entry.offset,
        "length": record.size,
        "etag": record.etag,
        "content_type": record.content_type,
        "metadata": record.metadata,
        "headers": record.headers,
        "checksums": record.checksums,
        "last_modified": iso_time(record.mtime),
    }
    if record.multipart_etag:
        out["md5"] = record.md5_hex
    return out


def _tombstone(entry: Placed) -> dict[str, object]:
    record = entry.record
    return {
        "key": record.key,
        "member": entry.member,
        "deleted_at": iso_time(record.mtime),
    }


def _update(entry: Placed, update_of: float) -> dict[str, object]:
    record = entry.record
    return {
        "key": record.key,
        "member": entry.member,
        "object_modified": iso_time(update_of),
        "updated_at": iso_time(record.mtime),
        "headers": record.headers,
    }


def iso_utc(moment: datetime) -> str:
    """UTC time as ``YYYY-MM-DDTHH:MM:SS.mmmZ``."""
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def iso_time(timestamp: float) -> str:
    """A Unix time as S3 lists ``LastModified`` (ISO 8601 UTC, milliseconds, Z), as the index
    gives it too: ``iso_utc(datetime.fromtimestamp(timestamp, tz=UTC))``, with the date and
    time of day formatted once per second (a datetime per PUT showed in the profile)."""
    if timestamp < 0:
        return iso_utc(datetime.fromtimestamp(timestamp, tz=UTC))
    # fromtimestamp's own rounding: the fraction to whole microseconds, half to even.
    fraction, whole = math.modf(timestamp)
    micros = round(fraction * 1e6)
    if micros >= 1_000_000:
        whole += 1
        micros -= 1_000_000
    return f"{_second(int(whole))}.{micros // 1000:03d}Z"


@functools.lru_cache(maxsize=64)
def _second(seconds: int) -> str:
    """``YYYY-MM-DDTHH:MM:SS`` of a whole Unix second, UTC."""
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
