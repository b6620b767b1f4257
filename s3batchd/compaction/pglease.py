"""The compaction lease with the PostgreSQL catalog (``catalog.backend = "postgres"``): a
session-level advisory lock of the fleet's database instead of an object in the bucket.

``pg_try_advisory_lock`` on a key derived from the bucket and ``upstream.prefix``
(``lock_key``), taken on a connection of its own that the pass keeps for its whole length and
closes at the end. PostgreSQL releases the lock when that session ends, however it ends: a
compactor killed with ``kill -9`` (or whose host died) loses it as soon as its server notices
the closed connection (at once on a kill: the kernel closes the socket; a vanished host when
the server's TCP keepalive on the session gives up, which the session sets to about four
``catalog.postgres_timeout_s``: the server's default is hours), not after an expiry
the next compactor must wait out. A refused lock raises ``LeaseHeld`` naming the holder as far
as PostgreSQL tells (its pid, ``application_name`` and client address from ``pg_locks`` and
``pg_stat_activity``, and the owner the holder wrote in ``s3batchd_compaction``).

The batch a holder is writing (``writing``: a tar whose index may never come) lives in the
catalog's ``s3batchd_compaction`` table (created by the catalog's migrations), one row per
bucket and prefix, written only while the lock is held; the next holder reads it when it takes
the lock, as the bucket lease's next holder reads the lease object.

No conditional-write check: the lock keeps compactors apart, not the upstream, and a pass's
other writes (a new batch's tar and index, under a batch id no other writer uses) need no
condition to be right. Every compactor of a bucket must use the same kind of lease: a
compactor configured with the SQLite catalog takes the bucket's lease object and is not kept
apart from one holding the lock. A session lock needs the session: the DSN must reach
PostgreSQL directly or through a pooler in session mode, not transaction mode.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field

import psycopg

from s3batchd.catalog.postgres import first_line
from s3batchd.errors import CatalogUnavailable, LeaseHeld

logger = logging.getLogger(__name__)

_TAKE = """
WITH old AS (
    SELECT writing FROM s3batchd_compaction WHERE bucket = %(bucket)s AND prefix = %(prefix)s
)
INSERT INTO s3batchd_compaction AS cur (bucket, prefix, owner, writing)
VALUES (%(bucket)s, %(prefix)s, %(owner)s, '')
ON CONFLICT (bucket, prefix) DO UPDATE SET owner = excluded.owner
RETURNING (SELECT writing FROM old)
"""
#: Sets ``writing`` only while this very session holds the lock (no row updated: it does
#: not); the proof a holder gives before writing an index or deleting a batch.
_WRITING = """
UPDATE s3batchd_compaction SET writing = %(writing)s
WHERE bucket = %(bucket)s AND prefix = %(prefix)s
  AND EXISTS (
    SELECT 1 FROM pg_locks
    WHERE locktype = 'advisory' AND granted AND objsubid = 1 AND pid = pg_backend_pid()
      AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND classid::bigint = %(high)s AND objid::bigint = %(low)s
  )
"""
#: The session holding a bigint advisory lock: its high and low halves are the lock's
#: ``classid`` and ``objid``, ``objsubid`` 1 (the one-argument form).
_HOLDER = """
SELECT l.pid, a.application_name, host(a.client_addr), c.owner
FROM pg_locks l
LEFT JOIN pg_stat_activity a ON a.pid = l.pid
LEFT JOIN s3batchd_compaction c ON c.bucket = %(bucket)s AND c.prefix = %(prefix)s
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.classid::bigint = %(high)s AND l.objid::bigint = %(low)s
"""


def lock_key(bucket: str, prefix: str) -> int:
    """The advisory lock's key of a bucket's batches under ``prefix``: the first 8 bytes of a
    SHA-256 of both, as a signed bigint (the same on every host and version)."""
    digest = hashlib.sha256(f"s3batchd compaction\0{bucket}\0{prefix}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _lock_row(bucket: str, prefix: str) -> dict[str, object]:
    """The parameters naming the lock's row in ``pg_locks`` (its key's high and low 32 bits are
    ``classid`` and ``objid``) and the bucket's row in ``s3batchd_compaction``."""
    key = lock_key(bucket, prefix) & 0xFFFF_FFFF_FFFF_FFFF
    return {"bucket": bucket, "prefix": prefix, "high": key >> 32, "low": key & 0xFFFF_FFFF}


def lock_holder(
    connection: psycopg.Connection[tuple[object, ...]], bucket: str, prefix: str
) -> str:
    """Who holds the lock of ``bucket``/``prefix``, as far as PostgreSQL tells (``""``: nobody).
    Another role's ``application_name`` and address are hidden without ``pg_read_all_stats``."""
    row = connection.execute(_HOLDER, _lock_row(bucket, prefix)).fetchone()
    if row is None:
        return ""
    pid, application, address, owner = row
    return f"{owner or 'a compactor'} (PostgreSQL pid {pid}, {application!r} from {address})"


@dataclass
class AdvisoryLease:
    """The compaction lease of one bucket as a PostgreSQL advisory lock held by this process
    (the interface of ``lease.CompactionLease``)."""

    dsn: str
    bucket: str
    prefix: str
    owner: str
    timeout_s: float
    """Seconds a statement (and connecting) may take; the connection's keepalive probes too."""
    found_writing: str = ""
    """The batch a previous holder was writing when it lost the lock (``""``: none)."""
    writing: str = ""
    """The batch this holder is writing (kept in the row until its index is written, even
    through ``release`` after a failure: the next holder deletes the tar)."""
    puts: int = 0
    """S3 PUTs the lease spent: none, it lives in PostgreSQL."""
    _connection: psycopg.Connection[tuple[object, ...]] | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        """The lock, for messages."""
        return f"s3://{self.bucket}/{self.prefix} (PostgreSQL advisory lock)"

    def take(self) -> None:
        """Take the lock, or raise ``LeaseHeld`` naming its holder (``CatalogUnavailable``:
        PostgreSQL failed or is out of reach)."""
        connection = self._connect()
        try:
            holder, found = self._lock(connection)
        except psycopg.Error as exc:
            connection.close()
            raise CatalogUnavailable(f"{self.name}: {first_line(exc)}") from exc
        if holder is not None:
            connection.close()
            raise LeaseHeld(f"{self.name}: held by {holder or 'another session'}")
        self._connection = connection
        # Still named in the row until this holder has finished it (it may die first too).
        self.found_writing = self.writing = found
        if found:
            logger.info("compaction: %s taken; the last holder was writing %s", self.name, found)

    def _connect(self) -> psycopg.Connection[tuple[object, ...]]:
        seconds = max(1, round(self.timeout_s))
        try:
            return psycopg.connect(
                self.dsn,
                autocommit=True,
                application_name=f"s3batchd compaction {self.owner}"[:63],
                connect_timeout=seconds,
                # The server's keepalive decides when a vanished holder's lock ends.
                options=(
                    f"-c statement_timeout={int(self.timeout_s * 1000)} "
                    f"-c tcp_keepalives_idle={seconds} -c tcp_keepalives_interval={seconds} "
                    "-c tcp_keepalives_count=3"
                ),
                keepalives=1,
                keepalives_idle=seconds,
                keepalives_interval=seconds,
                keepalives_count=3,
            )
        except psycopg.Error as exc:
            raise CatalogUnavailable(f"{self.name}: cannot connect: {first_line(exc)}") from exc

    def _lock(self, connection: psycopg.Connection[tuple[object, ...]]) -> tuple[str | None, str]:
        """``(None, writing found)`` with the lock taken, else ``(its holder, "")``."""
        key = lock_key(self.bucket, self.prefix)
        row = connection.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
        if row is None or not row[0]:
            return lock_holder(connection, self.bucket, self.prefix), ""
        params = {"bucket": self.bucket, "prefix": self.prefix, "owner": self.owner}
        found = connection.execute(_TAKE, params).fetchone()
        return None, str(found[0] or "") if found is not None else ""

    def renew(self, *, writing: str = "") -> None:
        """Say which batch is being written (``""``: none, its index is written), on the
        lock's own session and only while that session holds the lock; ``LeaseHeld`` if the
        session is gone or holds it no more (another compactor may hold it now)."""
        if self._connection is None:
            raise LeaseHeld(f"{self.name}: not held")
        params = {**_lock_row(self.bucket, self.prefix), "writing": writing}
        try:
            updated = self._connection.execute(_WRITING, params).rowcount
        except psycopg.Error as exc:
            self._drop()
            raise LeaseHeld(f"{self.name}: lost ({first_line(exc)})") from exc
        if updated != 1:
            self._drop()
            raise LeaseHeld(f"{self.name}: lost (the session no longer holds the lock)")
        self.writing = writing

    def prove(self) -> None:
        """``LeaseHeld`` unless the lock's session is alive and still holds the lock: a
        round trip on that session before each delete (the lock may go with the session at
        any moment, and another take it at once)."""
        self.renew(writing=self.writing)

    def release(self) -> None:
        """Unlock and close the session (a batch still being written stays in the row)."""
        connection = self._connection
        if connection is None:
            return
        try:
            connection.execute(
                "SELECT pg_advisory_unlock(%s)", (lock_key(self.bucket, self.prefix),)
            )
        except psycopg.Error as exc:  # the session is gone, and the lock with it
            logger.warning("compaction: %s not unlocked: %s", self.name, first_line(exc))
        self._drop()

    def _drop(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
