"""One attempt at a batch's upload steps, and where attempts run: ``ThreadSteps`` on the
uploader's threads (an upload process runs :func:`run_attempt` itself, ``upload/proc.py``).
Failures come back classified in the :class:`Attempt`, not raised.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from botocore.exceptions import ClientError

from s3batchd.errors import UploadError
from s3batchd.upload.batchupload import BatchUpload, PartsAtOnce
from s3batchd.upload.stats import UploadStats
from s3batchd.upload.upstream import classify

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from s3batchd.config import UploadConfig
    from s3batchd.records import SealedBatch
    from s3batchd.uploadsettings import UploadSettings

__all__ = ["Attempt", "ThreadSteps", "UploadSteps", "run_attempt"]


@dataclass(frozen=True)
class Attempt:
    """What one attempt at a batch's upload steps did (picklable: an upload process sends it
    back to the daemon)."""

    tar_done: bool
    """The tar is in the bucket (now or from an earlier attempt)."""
    error: UploadError | None = None
    """Why the attempt failed; None: the tar and its index are in the bucket."""
    requests: dict[tuple[str, str], int] = field(default_factory=dict)
    """Upstream requests sent, by operation and outcome."""


def run_attempt(
    client: S3Client,
    config: UploadConfig | UploadSettings,
    batch: SealedBatch,
    *,
    tar_done: bool,
    parts_at_once: PartsAtOnce | None = None,
) -> Attempt:
    """Upload the tar (unless ``tar_done``), then its index. Failures are returned, classified,
    not raised."""
    stats = UploadStats()
    steps = BatchUpload(client, config, stats, parts_at_once)
    try:
        if not tar_done:
            try:
                steps.tar(batch)
            except ClientError as exc:
                raise classify(exc, f"upload tar {batch.tar_key}") from exc
            tar_done = True
        try:
            steps.index(batch)
        except ClientError as exc:
            raise classify(exc, f"upload index {batch.index_key}") from exc
    except Exception as exc:  # noqa: BLE001  the uploader retries any failure
        return Attempt(tar_done, classify(exc, f"upload {batch.batch_id}"), stats.snapshot())
    return Attempt(tar_done, None, stats.snapshot())


class UploadSteps(Protocol):
    """Where the upload steps of a batch run (called from the uploader's threads)."""

    def attempt(self, batch: SealedBatch, *, tar_done: bool) -> Attempt:
        """One attempt at uploading ``batch`` (blocking)."""
        ...

    def close(self, *, wait: bool) -> None:
        """Stop; ``wait`` False: attempts still running are abandoned (their batches stay in
        the spool)."""
        ...


class ThreadSteps:
    """The steps on the calling thread, with a client shared by the upload threads."""

    def __init__(
        self, client: S3Client, config: UploadConfig, parts_at_once: PartsAtOnce | None = None
    ) -> None:
        self._client = client
        self._config = config
        self._parts_at_once = parts_at_once

    def attempt(self, batch: SealedBatch, *, tar_done: bool) -> Attempt:
        """One attempt, on this thread."""
        return run_attempt(
            self._client,
            self._config,
            batch,
            tar_done=tar_done,
            parts_at_once=self._parts_at_once,
        )

    def close(self, *, wait: bool) -> None:
        """Nothing to stop: the uploader's threads are the workers."""
