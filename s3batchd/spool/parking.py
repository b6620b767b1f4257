"""Parked batches: sealed batches whose upload failed in a way a retry cannot fix by itself.

A batch whose upload fails non-retriably (NoSuchBucket, AccessDenied, InvalidBucketName, a
KMS refusal, another object under its key) is *parked*: its tar stays in the spool and a small
JSON file beside it, ``<bucket>/<batch id>.parked``, says why, since when, how many attempts
failed and when the next one is due. The uploader keeps parked batches on a timer, not in an
upload worker, so one bucket's refusals never hold up the others' batches; it tries each
again once per wait (``upload.parked_retry_base_s`` doubling up to
``upload.parked_retry_max_s``). The file survives a restart: a batch recovered with one stays
parked until its next attempt is due.

Nothing here drops data by itself: only ``discard`` (``s3batchd parked discard --yes``)
removes a parked batch, and ``export`` copies it (tar, index, state) to a folder first.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from s3batchd.s3.body import write_all
from s3batchd.index import index_key, is_batch_id, render_index, tar_key
from s3batchd.spool.files import (
    PARKED_NEW_SUFFIX,
    PARKED_SUFFIX,
    SEALED_SUFFIX,
    UPLOAD_ID_SUFFIX,
    fsync_dir,
    remove_durably,
    scan,
)

if TYPE_CHECKING:
    from s3batchd.config import UploadConfig
    from s3batchd.errors import UploadError
    from s3batchd.records import SealedBatch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ParkedState:
    """Why a batch is parked and when it is tried again (the ``.parked`` file, as JSON)."""

    reason: str
    """One of ``errors.FAILURE_REASONS``."""
    error: str
    """The last failure, as logged."""
    parked_at: float
    """Unix time of the first failure that parked it."""
    attempts: int
    """Failed attempts since it was parked (at least 1)."""
    next_retry_at: float
    """Unix time of the next attempt."""

    def to_json(self) -> bytes:
        """The file's content."""
        return json.dumps(asdict(self), sort_keys=True).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes) -> ParkedState:
        """Read a file's content; ValueError if it is not one."""
        try:
            found = json.loads(data)
            return cls(
                reason=str(found["reason"]),
                error=str(found["error"]),
                parked_at=float(found["parked_at"]),
                attempts=int(found["attempts"]),
                next_retry_at=float(found["next_retry_at"]),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a parked batch state: {exc}") from exc


def parks(error: UploadError) -> bool:
    """Whether a failed attempt parks its batch: a failure a retry cannot fix by itself, of
    this bucket or batch. Wrong or expired credentials (reason ``credentials``) refuse every
    bucket alike, so parking would isolate nothing and only delay the uploads once they are
    replaced: those batches are retried in the upload worker like a 5xx."""
    return not error.retriable and error.reason != "credentials"


def parked_path(tar_path: Path) -> Path:
    """The state file of the batch whose tar is ``tar_path``."""
    return tar_path.with_suffix(PARKED_SUFFIX)


def retry_wait_s(attempts: int, config: UploadConfig, rng: random.Random) -> float:
    """Seconds until the next attempt after ``attempts`` failed ones: uniform in [w/2, w], w
    = min(cap, base x 2^(attempts-1)); never near 0, so a parked batch is no busy loop."""
    ceiling = min(
        config.parked_retry_max_s, config.parked_retry_base_s * 2 ** min(attempts - 1, 30)
    )
    return rng.uniform(ceiling / 2, ceiling)


def write_state(batch: SealedBatch, state: ParkedState) -> None:
    """Write the batch's state file durably and atomically (a reader sees the old or the new)."""
    target = parked_path(batch.path)
    new = batch.path.with_suffix(PARKED_NEW_SUFFIX)
    fd = os.open(new, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
    try:
        write_all(fd, state.to_json())
        os.fsync(fd)
    finally:
        os.close(fd)
    new.rename(target)
    fsync_dir(target.parent)


def read_state(tar_path: Path) -> ParkedState | None:
    """The state of a parked batch; None if it is not parked. An unreadable file still means
    parked (since now, due now): the batch gets one attempt, which writes a good one."""
    path = parked_path(tar_path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        return ParkedState.from_json(data)
    except ValueError as exc:
        logger.warning("unreadable %s (%s); trying the batch again", path, exc)
        now = time.time()
        return ParkedState("other", f"unreadable state: {exc}", now, 1, now)


def clear_state(batch: SealedBatch) -> None:
    """The batch is no longer parked (uploaded, or being tried again)."""
    remove_durably(parked_path(batch.path))


@dataclass(frozen=True)
class ParkedOnDisk:
    """A parked batch as found in a spool folder (the daemon may be stopped)."""

    bucket: str
    batch_id: str
    tar_path: Path
    size: int
    state: ParkedState


def parked_on_disk(spools: list[Path]) -> list[ParkedOnDisk]:
    """Every parked batch in ``spools`` (each a spool folder: ``<bucket>/<id>.parked``)."""
    found = []
    for spool in spools:
        if not spool.is_dir():
            continue
        for state_path in sorted(spool.glob(f"*/*{PARKED_SUFFIX}")):
            bucket_dir = state_path.parent
            batch_id = state_path.name.removesuffix(PARKED_SUFFIX)
            tar = bucket_dir / (batch_id + SEALED_SUFFIX)
            if bucket_dir.name.startswith("_") or not is_batch_id(batch_id) or not tar.exists():
                continue
            state = read_state(tar)
            if state is not None:
                found.append(
                    ParkedOnDisk(bucket_dir.name, batch_id, tar, tar.stat().st_size, state)
                )
    return found


def find(spools: list[Path], batch_id: str) -> ParkedOnDisk:
    """The parked batch ``batch_id``; LookupError if no spool has it."""
    for parked in parked_on_disk(spools):
        if parked.batch_id == batch_id:
            return parked
    raise LookupError(f"no parked batch {batch_id}")


def export(parked: ParkedOnDisk, directory: Path, prefix: str) -> list[Path]:
    """Copy a parked batch to ``directory``: ``<id>.tar`` (as it would be uploaded),
    ``<id>.index.json`` (its index) and ``<id>.parked.json`` (bucket, keys, state). Refuses
    to overwrite; the files are synced before this returns. The paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    tar = directory / f"{parked.batch_id}.tar"
    index = directory / f"{parked.batch_id}.index.json"
    about = directory / f"{parked.batch_id}.parked.json"
    for path in (tar, index, about):
        if path.exists():
            raise FileExistsError(f"{path} exists")
    keys = {
        "tar_key": tar_key(prefix, parked.batch_id),
        "index_key": index_key(prefix, parked.batch_id),
    }
    index_body = render_index(
        bucket=parked.bucket,
        batch_id=parked.batch_id,
        tar_key=keys["tar_key"],
        tar_size=parked.size,
        entries=scan(parked.tar_path).entries,
        fragments=None,
    )
    details = {"bucket": parked.bucket, "batch_id": parked.batch_id, **keys, **asdict(parked.state)}
    shutil.copyfile(parked.tar_path, tar)
    index.write_bytes(index_body)
    about.write_text(json.dumps(details, indent=2, sort_keys=True) + "\n")
    for path in (tar, index, about):
        with path.open("rb") as written:
            os.fsync(written.fileno())
    fsync_dir(directory)
    return [tar, index, about]


def discard(tar_path: Path) -> None:
    """Delete a parked batch from the spool for good: its tar, state and multipart upload id
    (the tar first: a crash in between leaves no state file without its tar to act on)."""
    remove_durably(tar_path)
    for suffix in (PARKED_SUFFIX, PARKED_NEW_SUFFIX, UPLOAD_ID_SUFFIX):
        remove_durably(tar_path.with_suffix(suffix))
    logger.warning("discarded parked batch %s", tar_path)
