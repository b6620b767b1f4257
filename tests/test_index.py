"""index.iso_time: the index's and listings' time format, formatted once per second."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from s3batchd.index import iso_time, iso_utc


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
