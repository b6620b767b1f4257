"""index: the time format (formatted once per second) and members' index fragments (compact
ASCII JSON of their objects), each the same as the plain way."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from s3batchd.index import IndexEntry, _object, index_fragment, iso_time, iso_utc
from s3batchd.records import ObjectRecord


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
