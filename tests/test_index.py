"""index: the time format (formatted once per second) and members' index fragments (compact
ASCII JSON of their objects), each the same as the plain way."""

from __future__ import annotations

import io
import json
import tarfile
from datetime import UTC, datetime
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from s3batchd.catalog.store import Catalog, entries_from_index
from s3batchd.index import IndexEntry, _object, index_fragment, iso_time, iso_utc, render_index
from s3batchd.records import EMPTY_MD5, ObjectRecord
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
