"""Batch naming (writer id, batch id, upstream keys) and the JSON index beside each tar: written
(``render_index``, ``index_fragment``) and parsed (``parse_index``, ``entries_from_index``,
``updated_objects``, ``fragment_object``) here only. The format is docs/index-format.md.

Somewhat over 400 lines on purpose: the writer and the one parser of what it writes stay side by
side, so that a change of the format is one diff in one module (issue 22)."""

from __future__ import annotations

import functools
import json
import re
import secrets
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from s3batchd.clock import stamp_ms
from s3batchd.constants import INDEX_FORMAT, INDEX_VERSION, INDEX_VERSION_COMPACTED
from s3batchd.errors import IndexFormatError
from s3batchd.records import EMPTY_MD5, ObjectRecord, Placed, updated_headers

T = TypeVar("T")

_UNSAFE = re.compile(r"[^A-Za-z0-9.-]+")
_BATCH_ID = re.compile(
    r"^(?P<date>\d{8})T(?P<time>\d{9})Z-(?P<writer>[A-Za-z0-9.-]+)-(?P<seq>\d+)$"
)


#: The host part of the writer id of every batch compaction writes (``compactor-<random>``):
#: a reader tells a compacted batch's index from its key (upload/relocate.py).
COMPACTOR_HOST = "compactor"


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


def batch_writer(batch_id: str) -> str:
    """The writer id (``<host>-<instance>``) in a batch id."""
    return batch_id.split("Z-", 1)[1].rsplit("-", 1)[0]


def batch_created(batch_id: str) -> datetime:
    """The creation time encoded in a batch id."""
    match = _BATCH_ID.match(batch_id)
    if match is None:
        raise ValueError(f"not a batch id: {batch_id!r}")
    stamp = match["date"] + match["time"]
    return datetime.strptime(stamp, "%Y%m%d%H%M%S%f").replace(tzinfo=UTC)


#: How the keys of a batch's tar and index end.
TAR_SUFFIX = ".tar"
INDEX_SUFFIX = ".index.json"


def index_batch_id(key: str) -> str | None:
    """The batch id of a batch's index object from its key (None: not one)."""
    if not key.endswith(INDEX_SUFFIX):
        return None
    batch_id = key.rsplit("/", 1)[-1][: -len(INDEX_SUFFIX)]
    return batch_id if is_batch_id(batch_id) else None


def tar_key(prefix: str, batch_id: str) -> str:
    """Upstream key of a batch's tar: ``<prefix>YYYY/MM/DD/<batch id>.tar``."""
    return _stem(prefix, batch_id) + TAR_SUFFIX


def index_key(prefix: str, batch_id: str) -> str:
    """Upstream key of a batch's index, beside its tar."""
    return _stem(prefix, batch_id) + INDEX_SUFFIX


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
    replaces: list[str] | None = None,
) -> bytes:
    """The index JSON of one batch (deterministic: a retry writes the same bytes).

    ``replaces``: the batch ids a compacted batch takes the place of; the index is then version
    2 (``INDEX_VERSION_COMPACTED``), every other batch's stays version 1 so that readers of
    version 1 keep reading what the daemon writes.

    ``fragments``: the members already rendered by ``index_fragment`` (the spool does that as
    it appends, so a large index is not encoded in one go, holding the GIL for tens of
    milliseconds, when the batch is uploaded); else ``entries``. Both give the same bytes:
    JSON of a document is the JSON of its parts joined."""
    writer = batch_writer(batch_id)
    head = {
        "format": INDEX_FORMAT,
        "version": INDEX_VERSION if replaces is None else INDEX_VERSION_COMPACTED,
        "batch_id": batch_id,
        "created_at": iso_utc(batch_created(batch_id)),
        "writer": writer,
        "tar": {"bucket": bucket, "key": tar_key, "size": tar_size},
    }
    if replaces is not None:
        head["replaces"] = sorted(replaces)
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
    return _object_json(entry)


def fragment_object(fragment: bytes) -> dict[str, Any] | None:
    """The ``objects`` entry an ``index_fragment`` holds, None for a tombstone's or an
    attribute update's."""
    if fragment.startswith((_TOMBSTONE_MARK, _UPDATE_MARK)):
        return None
    entry: dict[str, Any] = json.loads(fragment)
    return entry


#: json.dumps with arguments other than the defaults builds an encoder per call; one per PUT
#: showed in the profile.
_ENCODER = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"))


def _dumps(value: object) -> bytes:
    return _ENCODER.encode(value).encode()


#: A string as JSON, exactly as ``_ENCODER`` writes strings (ASCII, escaped).
_quote = json.encoder.encode_basestring_ascii


def _object_json(entry: Placed) -> bytes:
    """An object's ``objects`` entry as compact ASCII JSON: what ``_dumps`` gives for the
    dict of its fields in this order (tests/test_index.py checks it for any record), written
    straight out; the dict and the encoder's walk over it were 6 us of a PutObject, this 3."""
    record = entry.record
    md5 = f',"md5":{_quote(record.md5_hex)}' if record.multipart_etag else ""
    return (
        f'{{"key":{_quote(record.key)},"member":{_quote(entry.member)},'
        f'"offset":{entry.offset},"length":{record.size},'
        f'"etag":{_quote(record.etag)},"content_type":{_quote(record.content_type)},'
        f'"metadata":{_map(record.metadata)},"headers":{_map(record.headers)},'
        f'"checksums":{_map(record.checksums)},"last_modified":"{iso_time(record.mtime)}"{md5}}}'
    ).encode()


def _map(values: Mapping[str, str]) -> str:
    return _ENCODER.encode(values) if values else "{}"


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
    time of day formatted once per second (a datetime per PUT showed in the profile). The
    milliseconds are ``clock.stamp_ms``'s, which every catalog compares stamps by."""
    if timestamp < 0:
        return iso_utc(datetime.fromtimestamp(timestamp, tz=UTC))
    total = stamp_ms(timestamp)
    return f"{_second(total // 1000)}.{total % 1000:03d}Z"


@functools.lru_cache(maxsize=64)
def _second(seconds: int) -> str:
    """``YYYY-MM-DDTHH:MM:SS`` of a whole Unix second, UTC."""
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")


# --- parsing -----------------------------------------------------------------------------------
#
# Everything that reads an index (the catalog's reindex, the reader library, ``s3batchd ls`` and
# ``extract``) checks it here, against the fields docs/index-format.md lists (their types; the
# patterns are the schema's, docs/index.schema.json, which the tests hold every index to).

_TEXT_MAPS = ("metadata", "headers", "checksums")


def parse_index(body: bytes | str, *, where: str = "the document") -> dict[str, Any]:
    """The index document in ``body``, checked as :func:`check_index` does.

    Raises:
        IndexFormatError: ``body`` is not JSON or not an index of this version.
    """
    try:
        document = json.loads(body)
    except ValueError as exc:
        raise IndexFormatError(f"{where} is not JSON: {exc}") from exc
    return check_index(document, where=where)


def check_index(document: object, *, where: str = "the document") -> dict[str, Any]:
    """``document`` itself once it is known to be an index of this format and version: every
    field of docs/index-format.md is there with its type, in ``objects``, ``tombstones`` and
    ``updates`` too. Unknown fields are left alone.

    Raises:
        IndexFormatError: naming the first field that is missing or of another type.
    """
    if not isinstance(document, dict) or document.get("format") != INDEX_FORMAT:
        raise IndexFormatError(f"{where} is not an s3batchd index")
    version = document.get("version")
    if version not in KNOWN_VERSIONS or not _is_int(version):
        raise IndexFormatError(
            f"{where} has index version {version!r}; this s3batchd knows versions "
            f"{INDEX_VERSION} and {INDEX_VERSION_COMPACTED}"
        )
    _need(document, "batch_id", str, where)
    _need_time(document, "created_at", where)
    _need(document, "writer", str, where)
    tar = _need(document, "tar", dict, where)
    _need(tar, "bucket", str, f"{where}: tar")
    _need(tar, "key", str, f"{where}: tar")
    _need_size(tar, "size", f"{where}: tar")
    if version == INDEX_VERSION_COMPACTED:
        _check_replaces(document, where)
    for n, item in enumerate(_list(document, "objects", where, required=True)):
        check_object(item, where=f"{where}: objects[{n}]")
    for n, item in enumerate(_list(document, "tombstones", where)):
        place = f"{where}: tombstones[{n}]"
        _need_key(item, place)
        _need(item, "member", str, place)
        _need_time(item, "deleted_at", place)
    for n, item in enumerate(_list(document, "updates", where)):
        place = f"{where}: updates[{n}]"
        _need_key(item, place)
        _need(item, "member", str, place)
        _need_time(item, "object_modified", place)
        _need_time(item, "updated_at", place)
        _need_texts(item, "headers", place)
    return document


#: Index versions ``parse_index`` accepts: 1, and 2 (a compacted batch, with ``replaces``).
KNOWN_VERSIONS = (INDEX_VERSION, INDEX_VERSION_COMPACTED)


def _check_replaces(document: Mapping[str, Any], where: str) -> None:
    if "replaces" not in document:
        raise IndexFormatError(f"{where} has index version 2 without replaces")
    replaced = _need(document, "replaces", list, where)
    if not replaced:
        raise IndexFormatError(f"{where}: replaces is empty")
    for n, batch_id in enumerate(replaced):
        if not isinstance(batch_id, str) or not is_batch_id(batch_id):
            raise IndexFormatError(f"{where}: replaces[{n}] is {batch_id!r:.100}, not a batch id")
    if document["batch_id"] in replaced:
        raise IndexFormatError(f"{where}: replaces names the batch itself")


def replaced_batches(document: Mapping[str, Any]) -> list[str]:
    """The batch ids a checked index replaces (none for version 1)."""
    if document["version"] != INDEX_VERSION_COMPACTED:
        return []
    replaced: list[str] = document["replaces"]
    return replaced


def check_object(entry: object, *, where: str = "the index entry") -> dict[str, Any]:
    """``entry`` itself once it is known to be an entry of an index's ``objects``.

    Raises:
        IndexFormatError: naming the first field that is missing or of another type.
    """
    if not isinstance(entry, dict):
        raise IndexFormatError(f"{where} is not an object: {entry!r:.200}")
    _need_key(entry, where)
    _need(entry, "member", str, where)
    _need_size(entry, "offset", where)
    _need_size(entry, "length", where)
    _need(entry, "etag", str, where)
    if "md5" in entry:
        _need(entry, "md5", str, where)
    _need(entry, "content_type", str, where)
    for name in _TEXT_MAPS:
        _need_texts(entry, name, where)
    _need_time(entry, "last_modified", where)
    return entry


def parse_time(text: str) -> float:
    """An index timestamp (``2026-11-21T15:29:08.868Z``, as :func:`iso_time` writes it) as
    Unix time."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def updated_objects(document: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The ``objects`` of a checked index as a reader sees them: each with the tags and canned
    ACL of the latest of the index's ``updates`` that names it (by its ``last_modified``), as
    docs/index-format.md says. Objects without one are the entries themselves; the others are
    copies, so the document is not changed."""
    latest: dict[tuple[str, str], Mapping[str, Any]] = {}
    for update in document.get("updates", ()):
        named = (update["key"], update["object_modified"])
        found = latest.get(named)
        # The timestamps have one format: their text sorts as their time.
        if found is None or update["updated_at"] > found["updated_at"]:
            latest[named] = update
    objects: list[dict[str, Any]] = document["objects"]
    if not latest:
        return objects
    seen = []
    for entry in objects:
        update = latest.get((entry["key"], entry["last_modified"]))
        if update is not None:
            entry = {**entry, "headers": updated_headers(entry["headers"], update["headers"])}
        seen.append(entry)
    return seen


def entries_from_index(document: Mapping[str, Any]) -> list[IndexEntry]:
    """The objects, tombstones and attribute updates of a checked index as the entries they
    were rendered from (the catalog's reindex)."""
    entries = []
    for obj in document["objects"]:
        record = ObjectRecord(
            key=obj["key"],
            size=obj["length"],
            md5_hex=obj.get("md5") or obj["etag"].strip('"'),
            content_type=obj["content_type"],
            metadata=obj["metadata"],
            headers=obj["headers"],
            checksums=obj["checksums"],
            mtime=parse_time(obj["last_modified"]),
            multipart_etag=obj["etag"].strip('"') if "md5" in obj else "",
        )
        entries.append(IndexEntry(record=record, member=obj["member"], offset=obj["offset"]))
    for tombstone in document.get("tombstones", ()):
        record = ObjectRecord(
            key=tombstone["key"],
            size=0,
            md5_hex=EMPTY_MD5,
            mtime=parse_time(tombstone["deleted_at"]),
            deleted=True,
        )
        entries.append(IndexEntry(record=record, member=tombstone["member"], offset=0))
    for update in document.get("updates", ()):
        record = ObjectRecord(
            key=update["key"],
            size=0,
            md5_hex=EMPTY_MD5,
            headers=update["headers"],
            mtime=parse_time(update["updated_at"]),
            update_of=parse_time(update["object_modified"]),
        )
        entries.append(IndexEntry(record=record, member=update["member"], offset=0))
    return entries


def _list(
    document: Mapping[str, Any], name: str, where: str, *, required: bool = False
) -> list[Any]:
    if name not in document and not required:
        return []
    return _need(document, name, list, where)


def _need(item: object, name: str, kind: type[T], where: str) -> T:
    if not isinstance(item, dict):
        raise IndexFormatError(f"{where} is not an object: {item!r:.200}")
    value = item.get(name)
    if not isinstance(value, kind):
        shown = "missing" if name not in item else f"{value!r:.100}, not a {kind.__name__}"
        raise IndexFormatError(f"{where}: {name} is {shown}")
    return value


def _need_key(item: object, where: str) -> None:
    if not _need(item, "key", str, where):
        raise IndexFormatError(f"{where}: key is empty")


def _need_size(item: object, name: str, where: str) -> None:
    value = _need(item, name, int, where)
    if isinstance(value, bool) or value < 0:
        raise IndexFormatError(f"{where}: {name} is {value!r}, not a size")


def _need_texts(item: object, name: str, where: str) -> None:
    values = _need(item, name, dict, where)
    if not all(isinstance(value, str) for value in values.values()):
        raise IndexFormatError(f"{where}: {name} has values that are not strings")


def _need_time(item: object, name: str, where: str) -> None:
    text = _need(item, name, str, where)
    try:
        parse_time(text)
    except ValueError as exc:
        raise IndexFormatError(f"{where}: {name} {text!r:.100} is not a timestamp") from exc


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
