"""The compaction lease of a bucket: one object under ``upstream.prefix`` that a compactor
writes with conditional requests, so that two compactors (two daemons, or ``s3batchd compact``
while a daemon compacts) never rewrite the same batches at once.

Taken with ``If-None-Match: *`` (only if no lease exists) or, once the holder's lease has
expired, with ``If-Match`` on its ETag (only if nobody renewed or took it meanwhile); renewed
and released with ``If-Match`` on the holder's own ETag. Each write that loses the race gets
``412 Precondition Failed`` (or ``409 ConditionalRequestConflict``) from S3. The body says who
holds it, until when, and which batch the holder is writing (``writing``): a holder that died
between the new tar and its index leaves that tar, which the next holder deletes.

An upstream that ignores the conditions would let two holders in: ``verify_conditional_writes``
checks at start that a second ``If-None-Match: *`` write of an object is refused.

``CompactionLease`` is what a pass needs of a lease; ``Lease`` (here) is the lease object, used
with the SQLite catalog, and ``pglease.AdvisoryLease`` a PostgreSQL advisory lock, used with
``catalog.backend = "postgres"`` (docs/compaction.md, "Two compactors at once").
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from botocore.exceptions import ClientError

from s3batchd.errors import CompactionError, LeaseHeld

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

logger = logging.getLogger(__name__)

#: The lease object's name under ``upstream.prefix`` (not an index: listings skip it).
LEASE_NAME = "compaction.lease.json"
_LOST = ("PreconditionFailed", "ConditionalRequestConflict", "412", "409")


def lease_key(prefix: str) -> str:
    """The key of the compaction lease of a bucket whose batches are under ``prefix``."""
    return prefix + LEASE_NAME


def _lost_race(exc: ClientError) -> bool:
    error = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return error.get("Code") in _LOST or status in (409, 412)


def verify_conditional_writes(client: S3Client, bucket: str, prefix: str) -> None:
    """Raise ``CompactionError`` unless the upstream refuses a second ``If-None-Match: *``
    write of one object (the lease relies on it)."""
    key = f"{prefix}compaction.probe-{secrets.token_hex(8)}"
    client.put_object(Bucket=bucket, Key=key, Body=b"1", IfNoneMatch="*")
    try:
        client.put_object(Bucket=bucket, Key=key, Body=b"2", IfNoneMatch="*")
    except ClientError as exc:
        if not _lost_race(exc):
            raise
    else:
        raise CompactionError(
            f"s3://{bucket}: the upstream ignores If-None-Match on PutObject; compaction needs "
            "conditional writes to keep two compactors apart (docs/compaction.md)"
        )
    finally:
        client.delete_object(Bucket=bucket, Key=key)


class CompactionLease(Protocol):
    """A compaction lease as a pass uses it: ``take`` it (``LeaseHeld`` when another holds
    it), ``renew`` it before and after each new batch, naming the batch being written,
    ``release`` it at the end."""

    found_writing: str
    """The batch a previous holder was writing when its lease ended (``""``: none); it stays
    named (``writing``) until the holder's next renewal."""
    writing: str
    """The batch this holder is writing (``""``: none)."""
    puts: int
    """S3 PUT requests the lease spent so far."""

    def take(self) -> None:
        """Take the lease or raise ``LeaseHeld``."""

    def renew(self, *, writing: str = "") -> None:
        """Say which batch is being written; ``LeaseHeld`` if the lease was lost. A
        successful renewal proves the lease held: a holder renews immediately before
        writing an index."""

    def prove(self) -> None:
        """``LeaseHeld`` unless the lease is still held, long enough for one more request
        (renewing it when needed); called before every delete of a batch."""

    def release(self) -> None:
        """Give the lease up."""


@dataclass(slots=True)
class Lease:
    """The compaction lease of one bucket, as held by this process."""

    client: S3Client
    bucket: str
    prefix: str
    owner: str
    duration_s: float
    etag: str = ""
    found_writing: str = ""
    """The batch a previous holder was writing when its lease ended (``""``: none)."""
    writing: str = ""
    """The batch this holder is writing (kept in the lease until its index is written, even
    through ``release`` after a failure: the next holder deletes the tar)."""
    puts: int = 0
    """PUTs of the lease object sent (each try of a conditional write counts)."""
    renewed: float = 0.0
    """``time.monotonic()`` when the last successful write of the lease was sent: it holds
    until ``duration_s`` after that, by the clock of whoever would take it over."""

    @property
    def key(self) -> str:
        """The lease object's key."""
        return lease_key(self.prefix)

    def take(self) -> None:
        """Take the lease, or raise ``LeaseHeld`` naming its holder."""
        sent = time.monotonic()
        try:
            self.etag = self._put({}, IfNoneMatch="*")
            self.renewed = sent
        except ClientError as exc:
            if not _lost_race(exc):
                raise
            self._take_over()

    def _take_over(self) -> None:
        answer = self.client.get_object(Bucket=self.bucket, Key=self.key)
        held: dict[str, Any] = json.loads(answer["Body"].read())
        if float(held.get("expires", 0)) > time.time():
            raise LeaseHeld(
                f"s3://{self.bucket}/{self.key}: held by {held.get('owner')} until "
                f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(held['expires']))}"
            )
        # The batch the last holder was writing stays named until this holder has finished
        # it (it may die first too).
        found = str(held.get("writing", ""))
        sent = time.monotonic()
        try:
            self.etag = self._put({"writing": found} if found else {}, IfMatch=answer["ETag"])
            self.renewed = sent
        except ClientError as exc:
            if _lost_race(exc):
                raise LeaseHeld(f"s3://{self.bucket}/{self.key}: taken by another") from exc
            raise
        self.found_writing = self.writing = found
        logger.info("compaction: lease of s3://%s taken over from %s", self.bucket, held)

    def renew(self, *, writing: str = "") -> None:
        """Extend the lease and say which batch is being written (``""``: none, its index is
        written); ``LeaseHeld`` if it was lost (expired and taken by another)."""
        if not self.etag:  # an empty If-Match would be no condition at all
            raise LeaseHeld(f"s3://{self.bucket}/{self.key}: not held")
        sent = time.monotonic()
        try:
            self.etag = self._put({"writing": writing} if writing else {}, IfMatch=self.etag)
            self.writing = writing
            self.renewed = sent
        except ClientError as exc:
            if _lost_race(exc):
                raise LeaseHeld(f"s3://{self.bucket}/{self.key}: lost") from exc
            raise

    def prove(self) -> None:
        """``LeaseHeld`` unless the lease is held for at least two thirds of ``duration_s``
        more: renewed (a conditional PUT) once a third of it has passed since the last
        renewal, else nothing sent."""
        if not self.etag:
            raise LeaseHeld(f"s3://{self.bucket}/{self.key}: not held")
        if time.monotonic() - self.renewed >= self.duration_s / 3:
            self.renew(writing=self.writing)

    def release(self) -> None:
        """Give the lease up (it expires at once; the object stays for the next taker)."""
        if not self.etag:
            return
        try:
            unfinished = {"writing": self.writing} if self.writing else {}
            self._put(unfinished, IfMatch=self.etag, expires=0.0)
        except ClientError as exc:
            if not _lost_race(exc):
                raise
            logger.warning("compaction: lease of s3://%s was lost before release", self.bucket)
        self.etag = ""

    def _put(
        self, fields: dict[str, str], *, expires: float | None = None, **condition: str
    ) -> str:
        body = {
            "owner": self.owner,
            "expires": time.time() + self.duration_s if expires is None else expires,
            **fields,
        }
        self.puts += 1
        answer = self.client.put_object(
            Bucket=self.bucket,
            Key=self.key,
            Body=json.dumps(body).encode(),
            ContentType="application/json",
            **condition,  # type: ignore[arg-type]
        )
        etag: str = answer["ETag"]
        return etag


class Heartbeat:
    """Renews a lease every ``interval_s`` from a thread of its own while one long step of the
    holder runs (a new tar read and uploaded), so that a healthy slow write keeps the lease:
    the holder calls the lease from no other thread meanwhile, and ``stop`` (joining the
    thread) comes before its own next call. A renewal refused (``LeaseHeld``) ends the
    heartbeat; the holder's next renewal fails the same way. Another failure is logged and the
    next beat renews again."""

    def __init__(self, lease: CompactionLease, interval_s: float) -> None:
        self.lease = lease
        self.interval_s = interval_s
        self.beats = 0
        """Renewals sent."""
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="compaction-lease", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop renewing; returns once no renewal is in flight."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stopping.wait(self.interval_s):
            self.beats += 1
            try:
                self.lease.renew(writing=self.lease.writing)
            except LeaseHeld:
                logger.warning("compaction: lease lost while writing %s", self.lease.writing)
                return
            except Exception:
                logger.exception("compaction: lease not renewed while writing")
