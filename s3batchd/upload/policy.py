"""The pure upload decisions (s3transfer's ``requires_multipart_upload`` and
``ChunksizeAdjuster``): whether a tar goes in parts, how big the parts are, how long to wait
before the next attempt.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from s3batchd.constants import MAX_PART_BYTES, MAX_PARTS, MIN_PART_BYTES

if TYPE_CHECKING:
    from s3batchd.config import UploadConfig
    from s3batchd.uploadsettings import UploadSettings

__all__ = ["backoff_s", "needs_multipart", "part_size"]


def needs_multipart(size: int, config: UploadConfig | UploadSettings) -> bool:
    """Whether a tar of ``size`` bytes is uploaded in parts."""
    return size >= config.multipart_threshold_bytes


def part_size(size: int, config: UploadConfig | UploadSettings) -> int:
    """Part size for a ``size``-byte upload: the configured size, clamped to S3's rules and
    doubled until the part count fits in 10,000."""
    chunk = min(max(config.part_size_bytes, MIN_PART_BYTES), MAX_PART_BYTES)
    while -(-size // chunk) > MAX_PARTS:
        chunk *= 2
    return min(chunk, MAX_PART_BYTES)


def backoff_s(attempt: int, config: UploadConfig, rng: random.Random) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(cap, base * 2**attempt)]."""
    ceiling = min(config.retry_max_ms, config.retry_base_ms * 2 ** min(attempt, 30))
    return rng.uniform(0, ceiling) / 1000
