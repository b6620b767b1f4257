"""Counters of the uploads: upstream requests by operation and outcome, batches, records and
bytes uploaded, failures by reason. Shared by the upload threads (a lock), read by metrics.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from s3batchd.records import SealedBatch

__all__ = ["UploadStats"]


class UploadStats:
    """Counters shared by the upload threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, str]] = Counter()
        self.batches = 0
        self.records = 0
        self.bytes = 0
        self.retries = 0
        self.failures: Counter[str] = Counter()
        """Failed upload attempts, by ``UploadError.reason``."""

    def count(self, operation: str, outcome: str) -> None:
        """One upstream request issued."""
        with self._lock:
            self.requests[operation, outcome] += 1

    def add(self, requests: Mapping[tuple[str, str], int]) -> None:
        """Upstream requests an attempt issued."""
        with self._lock:
            self.requests.update(requests)

    def batch_done(self, batch: SealedBatch) -> None:
        """A batch and its index are in the bucket."""
        with self._lock:
            self.batches += 1
            self.records += batch.records
            self.bytes += batch.size

    def failed(self, reason: str) -> None:
        """One upload attempt failed for ``reason``."""
        with self._lock:
            self.failures[reason] += 1

    def failure_counts(self) -> dict[str, int]:
        """A copy of the failure counters, by reason."""
        with self._lock:
            return dict(self.failures)

    def snapshot(self) -> dict[tuple[str, str], int]:
        """A copy of the request counters (safe to iterate while uploads run)."""
        with self._lock:
            return dict(self.requests)
