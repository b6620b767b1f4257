"""Write stamps to the millisecond: ``clock.stamp_ms`` is what an index writes
(``index.iso_time``), and both catalogs' SQL compute the same millisecond for any stamp, so a
compacted index moves a daemon's own exactly-stamped rows whatever their sub-microsecond part.
Before, the catalogs took ``round(stamp * 1000000)``, a product rounded to 0.25 us near 2^31 s:
13 stamps in 100,000 fell in the next millisecond from their index's, and such a key stayed
named at a batch compaction had deleted (NoSuchKey for a live object)."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from hypothesis import given
from hypothesis import strategies as st

from s3batchd.catalog.postgres import _MS as PG_MS
from s3batchd.catalog.store import _MS as SQLITE_MS
from s3batchd.catalog.store import Catalog
from s3batchd.clock import WriteClock, stamp_ms
from s3batchd.index import IndexEntry, iso_time, iso_utc, parse_index, render_index
from s3batchd.records import ObjectRecord

#: Stamps the old formula put in the next millisecond (found among 200,000 random stamps), and
#: two whose fraction is exactly a half microsecond (7,812.5 and 23,437.5 us: ties, rounded half
#: to even as datetime rounds, to 7,812 and 23,438).
AWKWARD = (
    1796670018.5109994,
    1796670236.3299994,
    1796669986.0929995,
    1796670125.8029995,
    1796670018.0078125,
    1796670018.0234375,
)
_stamps = st.floats(min_value=0, max_value=4e9, allow_nan=False)


def _by_datetime_ms(stamp: float) -> int:
    text = iso_utc(datetime.fromtimestamp(stamp, tz=UTC))
    moment = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    return round(moment.timestamp() * 1000)


@given(_stamps)
def test_stamp_ms_is_the_millisecond_an_index_gives(stamp: float) -> None:
    assert stamp_ms(stamp) == _by_datetime_ms(stamp)
    assert iso_time(stamp)[-4:-1] == f"{stamp_ms(stamp) % 1000:03d}"


def test_the_awkward_stamps_are_the_millisecond_an_index_gives() -> None:
    for stamp in AWKWARD:
        assert stamp_ms(stamp) == _by_datetime_ms(stamp), stamp


def _sqlite_ms(stamp: float) -> int:
    db = sqlite3.connect(":memory:")
    try:
        (value,) = db.execute(f"SELECT {SQLITE_MS.format('?1')}", (stamp,)).fetchone()
    finally:
        db.close()
    assert isinstance(value, int)
    return value


@given(_stamps)
def test_sqlite_computes_the_same_millisecond(stamp: float) -> None:
    assert _sqlite_ms(stamp) == stamp_ms(stamp)


def test_sqlite_computes_the_same_millisecond_for_the_awkward_stamps() -> None:
    for stamp in AWKWARD:
        assert _sqlite_ms(stamp) == stamp_ms(stamp), stamp


def test_postgres_computes_the_same_millisecond(postgres_dsn: str) -> None:
    stamps = [*AWKWARD, 0.0, 0.0005, 0.0015, 1.9999995, 1_800_000_000.123456, 4e9 - 1e-6]
    with psycopg.connect(postgres_dsn) as connection:
        for stamp in stamps:
            query = f"SELECT {PG_MS.format('%(s)s::float8')}"
            row = connection.execute(query, {"s": stamp}).fetchone()
            assert row is not None
            assert row[0] == stamp_ms(stamp), stamp


def test_a_compacted_index_moves_a_row_whatever_its_sub_microsecond_stamp(tmp_path: Path) -> None:
    old = "20261207T190018000Z-host-0123abcd-000001"
    new = "20261208T000000000Z-compactor-0123abcd-000001"
    catalog = Catalog(tmp_path / "catalog.sqlite3")
    try:
        for number, stamp in enumerate(AWKWARD):
            key = f"k/{number}"
            own = ObjectRecord(key=key, size=3, md5_hex="a" * 32, mtime=stamp)
            catalog.put_many("b", old, "old.tar", [IndexEntry(own, key, 512)], uploaded=True)
            document = parse_index(
                render_index(
                    bucket="b",
                    batch_id=new,
                    tar_key="new.tar",
                    tar_size=8192,
                    entries=[IndexEntry(own, key, 1536)],
                    replaces=[old],
                )
            )
            catalog.put_index("b", document)
            entry = catalog.get("b", key)
            assert entry is not None
            assert (entry.tar_key, entry.offset) == ("new.tar", 1536), stamp
            assert entry.record.mtime == stamp  # the same write: its exact stamp stays
    finally:
        catalog.close()


def test_the_clock_stamps_whole_microseconds_and_moves_past_what_it_observed() -> None:
    clock = WriteClock()
    stamps = [clock.now() for _ in range(1000)]
    assert stamps == sorted(set(stamps))
    for stamp in stamps:
        assert abs(stamp * 1_000_000 - round(stamp * 1_000_000)) < 0.25
    clock.observe(AWKWARD[0] + 3600 * 24 * 365 * 10)
    after = clock.now()
    assert stamp_ms(after) > stamp_ms(AWKWARD[0] + 3600 * 24 * 365 * 10)
