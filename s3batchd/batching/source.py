"""Where the bytes of a batched object are read from: the catalog, the spool folders, the bucket.

Built once by the pipeline and handed to the read handlers (``s3batchd.handlers.get``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from concurrent.futures import Executor
    from pathlib import Path

    from mypy_boto3_s3 import S3Client

    from s3batchd.catalog.store import Catalog


@dataclass(frozen=True, slots=True)
class ObjectSource:
    """Where object bytes are read from."""

    catalog: Catalog
    spool_dirs: tuple[Path, ...]
    """Where open and sealed batches are (every worker's spool; this process's first)."""
    client: S3Client
    executor: Executor
    """Threads for reads, apart from the spool's (fdatasync must not wait behind a GET)."""
