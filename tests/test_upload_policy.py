"""Pure upload decisions: PutObject or multipart, the part size, and retry backoff."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s3batchd.config import UploadConfig
from s3batchd.constants import GB, MAX_PART_BYTES, MAX_PARTS, MB, MIN_PART_BYTES
from s3batchd.upload.uploader import backoff_s, needs_multipart, part_size

TB = 1024 * GB


def parts(size: int, chunk: int) -> int:
    return -(-size // chunk)


def test_needs_multipart_at_the_threshold() -> None:
    config = UploadConfig(multipart_threshold_bytes=16 * MB)
    assert not needs_multipart(0, config)
    assert not needs_multipart(16 * MB - 1, config)
    assert needs_multipart(16 * MB, config)
    assert needs_multipart(5 * GB, config)


def test_part_size_is_the_configured_size_when_it_fits() -> None:
    config = UploadConfig(part_size_bytes=8 * MB)
    assert part_size(0, config) == 8 * MB
    assert part_size(20 * MB, config) == 8 * MB
    assert part_size(8 * MB * MAX_PARTS, config) == 8 * MB  # exactly 10,000 parts


def test_part_size_doubles_to_fit_ten_thousand_parts() -> None:
    config = UploadConfig(part_size_bytes=8 * MB)
    assert part_size(8 * MB * MAX_PARTS + 1, config) == 16 * MB
    assert part_size(16 * MB * MAX_PARTS, config) == 16 * MB
    assert part_size(16 * MB * MAX_PARTS + 1, config) == 32 * MB
    assert part_size(5 * TB, config) == 1 * GB  # the largest S3 object: 5,120 parts of 1 GiB


def test_part_size_clamps_to_the_s3_minimum() -> None:
    # Validation refuses such a config; the pure function still must not go below S3's minimum.
    config = UploadConfig.model_construct(part_size_bytes=1 * MB)
    assert part_size(10 * MB, config) == MIN_PART_BYTES
    with pytest.raises(ValueError, match="part_size_bytes"):
        UploadConfig(part_size_bytes=1 * MB)


def test_part_size_never_exceeds_the_s3_maximum() -> None:
    config = UploadConfig(part_size_bytes=MAX_PART_BYTES)
    assert part_size(10 * MB, config) == MAX_PART_BYTES
    big = UploadConfig(part_size_bytes=4 * GB)
    assert part_size(100 * TB, big) == MAX_PART_BYTES  # doubling stops at the S3 maximum
    unchecked = UploadConfig.model_construct(part_size_bytes=50 * GB)
    assert part_size(10 * MB, unchecked) == MAX_PART_BYTES


@settings(max_examples=300)
@given(
    size=st.integers(min_value=0, max_value=5 * TB),
    configured=st.integers(min_value=MIN_PART_BYTES, max_value=MAX_PART_BYTES),
)
def test_part_size_properties(size: int, configured: int) -> None:
    chunk = part_size(size, UploadConfig(part_size_bytes=configured))
    assert MIN_PART_BYTES <= chunk <= MAX_PART_BYTES
    assert parts(size, chunk) <= MAX_PARTS
    # The configured size, doubled as few times as needed (or capped at the S3 maximum).
    doublings = 0
    while configured << doublings < chunk:
        doublings += 1
    assert chunk in (configured << doublings, MAX_PART_BYTES)
    if doublings and chunk != MAX_PART_BYTES:
        assert parts(size, chunk // 2) > MAX_PARTS


class CeilingRandom(random.Random):
    """Always draws the top of the range, exposing the ceiling backoff_s uses."""

    def uniform(self, a: float, b: float) -> float:
        assert a == 0
        return b


class FloorRandom(random.Random):
    """Always draws the bottom of the range."""

    def uniform(self, a: float, b: float) -> float:
        return a


def test_backoff_ceiling_grows_exponentially_up_to_the_cap() -> None:
    config = UploadConfig(retry_base_ms=200, retry_max_ms=30_000)
    ceilings = [backoff_s(attempt, config, CeilingRandom()) for attempt in range(10)]
    assert ceilings == [0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 30.0, 30.0]
    assert backoff_s(10_000, config, CeilingRandom()) == 30.0  # no overflow for long outages
    assert backoff_s(3, config, FloorRandom()) == 0.0


def test_backoff_is_full_jitter_within_bounds() -> None:
    config = UploadConfig(retry_base_ms=100, retry_max_ms=5_000)
    rng = random.Random(1234)
    for attempt in range(40):
        ceiling = min(5_000, 100 * 2**attempt) / 1000
        draws = [backoff_s(attempt, config, rng) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in draws)
        # Full jitter spreads over the whole range, not just near the ceiling.
        assert min(draws) < ceiling * 0.1
        assert max(draws) > ceiling * 0.9


def test_backoff_cap_below_base() -> None:
    config = UploadConfig(retry_base_ms=1_000, retry_max_ms=300)
    assert backoff_s(0, config, CeilingRandom()) == 0.3
    assert backoff_s(5, config, CeilingRandom()) == 0.3
