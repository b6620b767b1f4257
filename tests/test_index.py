"""index: the time format (formatted once per second), members' index fragments (compact
ASCII JSON of their objects), each the same as the plain way, and the one parser every reader of
an index uses (the catalog's reindex, the reader library, ``s3batchd ls``)."""

from __future__ import annotations

import io
import json
import re
import tarfile
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from s3batchd.catalog.store import Catalog
from s3batchd.errors import IndexFormatError
from s3batchd.index import (
    IndexEntry,
    entries_from_index,
    fragment_object,
    index_fragment,
    iso_time,
    iso_utc,
    parse_index,
    parse_time,
    render_index,
    replaced_batches,
    updated_objects,
)
from s3batchd.records import EMPTY_MD5, ObjectRecord, SpoolEntry, byte_range
from s3batchd.spool.tarmember import decode_record, encode_header
from tests.batches import index_validator


def _by_datetime(timestamp: float) -> str:
    return iso_utc(datetime.fromtimestamp(timestamp, tz=UTC))


@given(st.floats(min_value=-1e9, max_value=4e9, allow_nan=False))
def test_iso_time_is_what_datetime_gives(timestamp: float) -> None:
    assert iso_time(timestamp) == _by_datetime(timestamp)


@given(st.integers(min_value=0, max_value=4_000_000_000), st.integers(0, 999_999))
def test_iso_time_rounds_half_microseconds_as_datetime_does(second: int, micros: int) -> None:
    timestamp = second + (micros + 0.5) / 1e6  # on a rounding edge
    assert iso_time(timestamp) == _by_datetime(timestamp)


def test_iso_time_examples() -> None:
    assert iso_time(0.0) == "1970-01-01T00:00:00.000Z"
    assert iso_time(1_700_000_000.1234) == "2023-11-14T22:13:20.123Z"
    assert iso_time(1_700_000_000.9999996) == "2023-11-14T22:13:21.000Z"  # rounds up a second


_text = st.text(max_size=40)
_maps = st.dictionaries(st.text(max_size=10), _text, max_size=3)
_records = st.builds(
    ObjectRecord,
    key=st.text(min_size=1, max_size=60),
    size=st.integers(0, 2**34),
    md5_hex=st.just("d41d8cd98f00b204e9800998ecf8427e"),
    content_type=_text,
    metadata=_maps,
    headers=_maps,
    checksums=_maps,
    mtime=st.floats(0, 4e9),
    multipart_etag=st.sampled_from(["", "0123456789abcdef0123456789abcdef-3"]),
)


def _object(entry: IndexEntry) -> dict[str, object]:
    """An object's ``objects`` entry as docs/index-format.md lists its fields, in order."""
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


@given(record=_records, member=_text, offset=st.integers(0, 2**40))
def test_an_index_fragment_is_the_json_of_its_object(
    record: ObjectRecord, member: str, offset: int
) -> None:
    entry = IndexEntry(record=record, member=member, offset=offset)
    fragment = index_fragment(entry)
    expected = json.dumps(_object(entry), ensure_ascii=True, separators=(",", ":")).encode()
    assert fragment == expected
    assert json.loads(fragment)["key"] == record.key


def test_updates_travel_through_the_index_in_any_order(tmp_path: Path) -> None:
    old = ObjectRecord(
        key="k", size=1, md5_hex="0" * 32, mtime=100.25, headers={"x-amz-tagging": "a=1"}
    )
    update = ObjectRecord(
        key="k",
        size=0,
        md5_hex=EMPTY_MD5,
        mtime=150.5,
        headers={"x-amz-acl": "private"},
        update_of=100.25,
    )
    stale = ObjectRecord(
        key="k",
        size=0,
        md5_hex=EMPTY_MD5,
        mtime=120.0,
        headers={"x-amz-tagging": "s=1"},
        update_of=100.25,
    )
    header = encode_header(update, "k")  # the update's tar member carries it too
    with tarfile.open(fileobj=io.BytesIO(header + bytes(1024)), mode="r:") as archive:
        info = archive.next()
        assert info is not None
        assert decode_record(info) == update
    document = json.loads(
        render_index(
            bucket="bucket",
            batch_id="20270115T080000000Z-host-68522f62-000007",
            tar_key="p/2027/01/15/20270115T080000000Z-host-68522f62-000007.tar",
            tar_size=4096,
            entries=[IndexEntry(update, "k", 0), IndexEntry(stale, "k", 0)],
        )
    )
    index_validator().validate(document)
    assert document["objects"] == []
    assert document["updates"][0] == {
        "key": "k",
        "member": "k",
        "object_modified": "1970-01-01T00:01:40.250Z",
        "updated_at": "1970-01-01T00:02:30.500Z",
        "headers": {"x-amz-acl": "private"},
    }
    restored = [entry.record for entry in entries_from_index(document)]
    assert restored[0].update_of == 100.25 and restored[0].headers == {"x-amz-acl": "private"}
    for order in ([0, 1, 2], [2, 1, 0], [1, 2, 0]):
        catalog = Catalog(tmp_path / f"{order}.sqlite3")
        writes = [
            IndexEntry(old, "k", 512),
            IndexEntry(restored[0], "k", 0),
            IndexEntry(stale, "k", 0),
        ]
        for n in order:
            catalog.put("b", "batch", "tar", writes[n], uploaded=True)
        found = catalog.get("b", "k")
        assert found is not None
        assert found.record.headers == {"x-amz-acl": "private"}  # the latest update: no tags
        newer = ObjectRecord(key="k", size=2, md5_hex="1" * 32, mtime=200.0)
        catalog.put("b", "batch2", "tar2", IndexEntry(newer, "k", 1024), uploaded=False)
        found = catalog.get("b", "k")
        assert found is not None and found.record.headers == {}  # not the older object's
        catalog.close()


def test_an_update_names_its_object_to_the_millisecond(tmp_path: Path) -> None:
    """The catalog may hold an object's exact stamp (from the spool) and an update naming it
    by its index stamp (truncated to milliseconds), or the other way round; a newer object
    of the key one millisecond later is another object."""
    exact = 1_765_000_000.1234567
    indexed = datetime.fromisoformat(iso_time(exact).replace("Z", "+00:00")).timestamp()
    for object_stamp, named in ((exact, indexed), (indexed, exact)):
        catalog = Catalog(tmp_path / f"{object_stamp}.sqlite3")
        record = ObjectRecord(key="k", size=0, md5_hex=EMPTY_MD5, mtime=object_stamp)
        catalog.put("b", "batch", "tar", IndexEntry(record, "k", 512), uploaded=True)
        tags = {"x-amz-tagging": "a=1"}
        update = ObjectRecord(
            key="k", size=0, md5_hex=EMPTY_MD5, mtime=exact + 1, headers=tags, update_of=named
        )
        catalog.put("b", "batch", "tar", IndexEntry(update, "k", 0), uploaded=True)
        found = catalog.get("b", "k")
        assert found is not None and found.record.headers == tags
        newer = ObjectRecord(key="k", size=0, md5_hex=EMPTY_MD5, mtime=exact + 0.001)
        catalog.put("b", "batch2", "tar2", IndexEntry(newer, "k", 512), uploaded=True)
        found = catalog.get("b", "k")
        assert found is not None and found.record.headers == {}
        catalog.close()


BATCH_ID = "20270115T080000000Z-host-68522f62-000007"


def _index(entries: list[IndexEntry]) -> bytes:
    return render_index(
        bucket="bucket",
        batch_id=BATCH_ID,
        tar_key=f"p/2027/01/15/{BATCH_ID}.tar",
        tar_size=8192,
        entries=entries,
    )


def test_a_rendered_index_parses_back_to_the_entries_it_was_rendered_from() -> None:
    plain = ObjectRecord(
        key="a/b",
        size=3,
        md5_hex="9" * 32,
        content_type="text/plain",
        metadata={"owner": "me"},
        headers={"cache-control": "no-cache", "x-amz-tagging": "a=1"},
        checksums={"crc32": "NSRBwg=="},
        mtime=1_800_000_000.25,
    )
    assembled = ObjectRecord(
        key="big", size=10, md5_hex="1" * 32, mtime=1_800_000_001.5, multipart_etag="2" * 32 + "-3"
    )
    tombstone = ObjectRecord(
        key="gone", size=0, md5_hex=EMPTY_MD5, mtime=1_800_000_002.0, deleted=True
    )
    update = ObjectRecord(
        key="a/b",
        size=0,
        md5_hex=EMPTY_MD5,
        headers={"x-amz-acl": "private"},
        mtime=1_800_000_003.125,
        update_of=1_800_000_000.25,
    )
    entries = [
        IndexEntry(plain, "a/b", 1536),
        IndexEntry(assembled, "big", 3584),
        IndexEntry(tombstone, "gone", 0),
        IndexEntry(update, "a/b", 0),
    ]
    body = _index(entries)
    document = parse_index(body)
    assert document == json.loads(body)
    index_validator().validate(document)
    assert entries_from_index(document) == entries


def test_parse_time_reads_what_iso_time_writes() -> None:
    assert parse_time(iso_time(1_800_000_000.25)) == 1_800_000_000.25
    assert parse_time("1970-01-01T00:00:00.000Z") == 0.0


def _malformed(document: dict[str, object], path: list[object], value: object) -> bytes:
    """``document`` with the field at ``path`` set to ``value`` (removed when it is ...)."""
    changed = json.loads(json.dumps(document))
    place = changed
    for step in path[:-1]:
        place = place[step]
    if value is ...:
        del place[path[-1]]
    else:
        place[path[-1]] = value
    return json.dumps(changed).encode()


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (["format"], "other", "is not an s3batchd index"),
        (["version"], 2, "index version 2"),
        (["version"], True, "index version True"),
        (["batch_id"], ..., "batch_id is missing"),
        (["created_at"], ..., "created_at is missing"),
        (["writer"], 7, "writer is 7, not a str"),
        (["tar", "size"], "8192", "tar: size is '8192', not a int"),
        (["objects"], ..., "objects is missing"),
        (["objects"], {}, "objects is {}, not a list"),
        (["objects", 0], [1], "objects[0] is not an object"),
        (["objects", 0, "key"], ..., "objects[0]: key is missing"),
        (["objects", 0, "key"], "", "objects[0]: key is empty"),
        (["objects", 0, "offset"], -512, "objects[0]: offset is -512, not a size"),
        (["objects", 0, "length"], True, "objects[0]: length is True, not a size"),
        (["objects", 0, "etag"], None, "objects[0]: etag is None, not a str"),
        (["objects", 0, "headers"], {"x": 1}, "objects[0]: headers has values that are not"),
        (["objects", 0, "checksums"], ..., "objects[0]: checksums is missing"),
        (["objects", 0, "last_modified"], 12, "objects[0]: last_modified is 12, not a str"),
        (["objects", 0, "last_modified"], "soon", "last_modified 'soon' is not a timestamp"),
        (["updates"], None, "updates is None, not a list"),
        (["updates", 0, "headers"], ..., "updates[0]: headers is missing"),
        (["updates", 0, "object_modified"], "x", "updates[0]: object_modified 'x' is not"),
        (["tombstones", 0, "deleted_at"], ..., "tombstones[0]: deleted_at is missing"),
    ],
)
def test_parse_index_names_what_is_wrong(path: list[object], value: object, message: str) -> None:
    gone = ObjectRecord(key="gone", size=0, md5_hex=EMPTY_MD5, mtime=2.0, deleted=True)
    update = ObjectRecord(key="k", size=0, md5_hex=EMPTY_MD5, mtime=3.0, update_of=1.0)
    record = ObjectRecord(key="k", size=1, md5_hex="0" * 32, mtime=1.0)
    entries = [IndexEntry(record, "k", 1536), IndexEntry(gone, "g", 0), IndexEntry(update, "k", 0)]
    document = parse_index(_index(entries))
    malformed = _malformed(document, path, value)
    with pytest.raises(IndexFormatError, match=re.escape(message)):
        parse_index(malformed, where="s3://b/x.index.json")
    assert not index_validator().is_valid(json.loads(malformed))  # the schema refuses it too
    with pytest.raises(IndexFormatError, match="is not JSON"):
        parse_index(b"{")


def test_updated_objects_apply_the_latest_update_naming_each_object() -> None:
    first = ObjectRecord(
        key="k",
        size=1,
        md5_hex="0" * 32,
        mtime=100.0,
        headers={"cache-control": "no-cache", "x-amz-tagging": "a=1"},
    )
    second = ObjectRecord(key="k", size=1, md5_hex="1" * 32, mtime=200.0, headers={})

    def update(at: float, of: float, headers: dict[str, str]) -> IndexEntry:
        record = ObjectRecord(
            key="k", size=0, md5_hex=EMPTY_MD5, mtime=at, headers=headers, update_of=of
        )
        return IndexEntry(record, "k", 0)

    entries = [
        IndexEntry(first, "k", 1536),
        update(150.0, 100.0, {"x-amz-tagging": "late=1", "x-amz-acl": "private"}),
        update(120.0, 100.0, {"x-amz-tagging": "early=1"}),  # older: listed later, still older
        IndexEntry(second, "k", 3584),
        update(250.0, 999.0, {"x-amz-tagging": "other=1"}),  # names no object of this batch
    ]
    document = parse_index(_index(entries))
    stored = json.loads(json.dumps(document["objects"]))
    seen = updated_objects(document)
    assert seen[0]["headers"] == {
        "cache-control": "no-cache",
        "x-amz-tagging": "late=1",
        "x-amz-acl": "private",
    }
    assert seen[1] == stored[1]  # no update names it
    assert document["objects"] == stored  # the document is left as it was
    plain = parse_index(_index(entries[:1]))
    assert updated_objects(plain) == plain["objects"]


def test_one_byte_range_for_the_response_header_and_the_reader() -> None:
    assert byte_range(1536, 10) == "bytes=1536-1545"
    assert byte_range(1536, 1) == "bytes=1536-1536"
    assert byte_range(1536, 0) is None
    record = ObjectRecord(key="k", size=3, md5_hex="0" * 32, mtime=1.0)
    spooled = SpoolEntry("b", BATCH_ID, "t.tar", "m", offset=512, length=3, end=1536, record=record)
    assert spooled.byte_range == "bytes=512-514"


def test_fragment_object_is_the_objects_entry_of_a_fragment() -> None:
    record = ObjectRecord(key="k", size=1, md5_hex="0" * 32, mtime=1.0, headers={"a": "b"})
    entry = IndexEntry(record, "k", 1536)
    assert fragment_object(index_fragment(entry)) == _object(entry)
    gone = ObjectRecord(key="k", size=0, md5_hex=EMPTY_MD5, mtime=2.0, deleted=True)
    update = ObjectRecord(key="k", size=0, md5_hex=EMPTY_MD5, mtime=3.0, update_of=1.0)
    assert fragment_object(index_fragment(IndexEntry(gone, "k", 0))) is None
    assert fragment_object(index_fragment(IndexEntry(update, "k", 0))) is None


OLD_BATCHES = [
    "20270115T000000000Z-host-0123abcd-000001",
    "20270115T000001000Z-host-0123abcd-000002",
]


def _compacted(entries: list[IndexEntry], replaces: list[str]) -> bytes:
    return render_index(
        bucket="bucket",
        batch_id=BATCH_ID,
        tar_key=f"p/2027/01/15/{BATCH_ID}.tar",
        tar_size=8192,
        entries=entries,
        replaces=replaces,
    )


def test_a_compacted_batch_has_an_index_of_version_2_listing_what_it_replaces() -> None:
    record = ObjectRecord(key="k", size=1, md5_hex="0" * 32, mtime=1.0)
    plain = parse_index(_index([IndexEntry(record, "k", 1536)]))
    assert plain["version"] == 1
    assert "replaces" not in plain
    assert replaced_batches(plain) == []
    document = parse_index(_compacted([IndexEntry(record, "k", 1536)], OLD_BATCHES[::-1]))
    assert document["version"] == 2
    assert document["replaces"] == OLD_BATCHES  # sorted: deterministic bytes
    assert replaced_batches(document) == OLD_BATCHES
    index_validator().validate(document)
    # Everything of version 1 holds in version 2: the entries are read alike.
    assert entries_from_index(document) == entries_from_index(plain)
    # All members dead, no tombstone: an index with no entries but what it replaces.
    index_validator().validate(parse_index(_compacted([], OLD_BATCHES)))


def test_one_schema_accepts_versions_1_and_2_each_with_its_own_fields() -> None:
    record = ObjectRecord(key="k", size=1, md5_hex="0" * 32, mtime=1.0)
    plain = parse_index(_index([IndexEntry(record, "k", 1536)]))
    compacted = parse_index(_compacted([IndexEntry(record, "k", 1536)], OLD_BATCHES))
    validator = index_validator()
    assert validator.is_valid(plain)
    assert validator.is_valid(compacted)
    # Version 1 has no replaces; version 2 must have it.
    assert not validator.is_valid({**plain, "replaces": OLD_BATCHES})
    assert not validator.is_valid({**compacted, "version": 1})
    without = {name: value for name, value in compacted.items() if name != "replaces"}
    assert not validator.is_valid(without)
    # An empty version 2 index is a rewrite of dead objects only; version 1 holds something.
    assert validator.is_valid({**compacted, "objects": []})
    assert not validator.is_valid({**plain, "objects": []})
    for version in (0, 3, "1", 1.5, None):
        assert not validator.is_valid({**plain, "version": version}), version
        assert not validator.is_valid({**compacted, "version": version}), version


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (..., "index version 2 without replaces"),
        ([], "replaces is empty"),
        ("x", "replaces is 'x', not a list"),
        (["nope"], "replaces[0] is 'nope', not a batch id"),
        ([BATCH_ID], "replaces names the batch itself"),
    ],
)
def test_parse_index_refuses_a_version_2_index_with_bad_replaces(
    value: object, message: str
) -> None:
    record = ObjectRecord(key="k", size=1, md5_hex="0" * 32, mtime=1.0)
    document = parse_index(_compacted([IndexEntry(record, "k", 1536)], OLD_BATCHES))
    malformed = _malformed(document, ["replaces"], value)
    with pytest.raises(IndexFormatError, match=re.escape(message)):
        parse_index(malformed)
    if message != "replaces names the batch itself":  # beyond what a schema can say
        assert not index_validator().is_valid(json.loads(malformed))
    with pytest.raises(IndexFormatError, match="index version 3"):
        parse_index(_malformed(document, ["version"], 3))
