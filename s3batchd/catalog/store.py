"""The local catalog: which batch, offset and attributes each key this daemon wrote has.

SQLite from the standard library, one row per (bucket, key): the latest PUT of a key wins, as
in S3 (an older record never replaces a newer one, so rebuilding from old batches is safe).
"Latest" is the larger write stamp (``clock.write_time``, which never goes backwards within a
daemon), then the larger batch id for two daemons' writes stamped alike.
Rows expire after ``catalog.retention_s``. The catalog is an index of the spool and of the
index objects, never the only copy: it is rebuilt from recovered batches at start and from
index objects by ``s3batchd reindex``. A catalog file found corrupt when opened is moved aside
(``catalog.sqlite3.corrupt-<time>``) and a new one created.

Why one module above 400 lines: the SQLite schema, its statements and the latest-write rules
they encode (upserts, tombstones, attribute updates, compaction's moves) change together.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import sqlite3
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from s3batchd.errors import DiskFull
from s3batchd.index import IndexEntry, entries_from_index, replaced_batches
from s3batchd.records import ObjectRecord, Placed, updated_headers

logger = logging.getLogger(__name__)
T = TypeVar("T")

CATALOG_DIR = "_catalog"
#: Longest time an object stays queued before the pipeline flushes it.
FLUSH_DELAY_S = 0.05
#: Rows per query of ``Catalog.iter_keys``.
_PAGE_ROWS = 256
#: Queued objects kept for the next flush after failed ones (beyond it the oldest are dropped
#: from the catalog, never from the spool or the index: ``s3batchd reindex`` restores them).
MAX_RETAINED = 50_000
#: Corrupt catalogs kept beside the new one (``catalog.sqlite3.corrupt-<time>``).
CORRUPT_KEPT = 3

_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    bucket TEXT NOT NULL,
    key TEXT NOT NULL,
    batch_id TEXT NOT NULL,
    tar_key TEXT NOT NULL,
    member TEXT NOT NULL,
    offset INTEGER NOT NULL,
    length INTEGER NOT NULL,
    md5 TEXT NOT NULL,
    content_type TEXT NOT NULL,
    metadata TEXT NOT NULL,
    headers TEXT NOT NULL,
    checksums TEXT NOT NULL,
    mtime REAL NOT NULL,
    uploaded INTEGER NOT NULL DEFAULT 0,
    etag TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (bucket, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS objects_batch ON objects (batch_id);
CREATE INDEX IF NOT EXISTS objects_mtime ON objects (mtime);
CREATE TABLE IF NOT EXISTS tombstones (
    bucket TEXT NOT NULL,
    key TEXT NOT NULL,
    mtime REAL NOT NULL,
    PRIMARY KEY (bucket, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS tombstones_mtime ON tombstones (mtime);
CREATE TABLE IF NOT EXISTS updates (
    bucket TEXT NOT NULL,
    key TEXT NOT NULL,
    object_mtime REAL NOT NULL,
    mtime REAL NOT NULL,
    headers TEXT NOT NULL,
    PRIMARY KEY (bucket, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS updates_mtime ON updates (mtime);
"""
#: Columns added after the first release, for catalogs created before them.
_MIGRATIONS = {"etag": "ALTER TABLE objects ADD COLUMN etag TEXT NOT NULL DEFAULT ''"}

#: A write stamp to the millisecond, as SQL: an index gives stamps to the millisecond
#: (``index.iso_time``), the spool exactly, and a catalog holds both (its own writes and those
#: it learns from indexes). Every comparison of stamps is of these (``stamp_ms``), so a key
#: resolves alike on every daemon. Whole microseconds first, as iso_time rounds them.
_MS = (
    "(CAST({0} AS INTEGER) * 1000000 + CAST(({0} - CAST({0} AS INTEGER)) * 1000000 AS INTEGER)"
    " + (CASE WHEN ({0} - CAST({0} AS INTEGER)) * 1000000"
    " - CAST(({0} - CAST({0} AS INTEGER)) * 1000000 AS INTEGER) > 0.5"
    " OR (({0} - CAST({0} AS INTEGER)) * 1000000"
    " - CAST(({0} - CAST({0} AS INTEGER)) * 1000000 AS INTEGER) = 0.5"
    " AND CAST(({0} - CAST({0} AS INTEGER)) * 1000000 AS INTEGER) % 2 = 1)"
    " THEN 1 ELSE 0 END)) / 1000"
)
"""``clock.stamp_ms`` of a stamp column or parameter ``{0}``, in SQLite: the fraction of the
second (exact) to whole microseconds, half to even, then cut (never ``round(x * 1000000)``: a
product rounded to 0.25 us, and SQLite rounds halves away from zero)."""
_UPSERT = f"""
INSERT INTO objects (bucket, key, batch_id, tar_key, member, offset, length, md5, content_type,
                     metadata, headers, checksums, mtime, uploaded, etag)
SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?
WHERE NOT EXISTS (
    SELECT 1 FROM tombstones t
    WHERE t.bucket = ?1 AND t.key = ?2 AND {_MS.format("t.mtime")} >= {_MS.format("?13")}
)
ON CONFLICT (bucket, key) DO UPDATE SET
    batch_id = excluded.batch_id, tar_key = excluded.tar_key, member = excluded.member,
    offset = excluded.offset, length = excluded.length, md5 = excluded.md5,
    content_type = excluded.content_type, metadata = excluded.metadata,
    headers = excluded.headers, checksums = excluded.checksums, mtime = excluded.mtime,
    uploaded = excluded.uploaded, etag = excluded.etag
WHERE {_MS.format("excluded.mtime")} > {_MS.format("objects.mtime")}
   OR ({_MS.format("excluded.mtime")} = {_MS.format("objects.mtime")}
       AND excluded.batch_id >= objects.batch_id)
"""  # noqa: S608  constants only
#: A tombstone hides every object of its key written at or before it (to the millisecond),
#: in any order of arrival.
_TOMBSTONE = f"""
INSERT INTO tombstones (bucket, key, mtime) VALUES (?, ?, ?)
ON CONFLICT (bucket, key) DO UPDATE SET mtime = excluded.mtime
WHERE {_MS.format("excluded.mtime")} > {_MS.format("tombstones.mtime")}
"""  # noqa: S608  constants only
_BURY = (
    "DELETE FROM objects WHERE bucket = ? AND key = ? "  # noqa: S608  constants only
    f"AND {_MS.format('mtime')} <= {_MS.format('?3')}"
)
#: The latest attribute update of a key (PutObjectTagging, PutObjectAcl...), in any order of
#: arrival. It applies to the object it names (by write stamp) only: a newer PUT of the key
#: has no tags or ACL but its own.
_UPDATE = """
INSERT INTO updates (bucket, key, object_mtime, mtime, headers) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (bucket, key) DO UPDATE SET
    object_mtime = excluded.object_mtime, mtime = excluded.mtime, headers = excluded.headers
WHERE excluded.mtime > updates.mtime
"""
#: Objects with their latest attribute update's headers (NULL when none applies). An update
#: names its object by the object's stamp to the millisecond: an index gives stamps truncated
#: to milliseconds (``index.iso_time``), the spool exactly, and a catalog may hold one from
#: each. (Whole microseconds first, as iso_time rounds them: an integer below 2**53.)
#: A compacted batch (index version 2) holds the same write of a key at a new place: the row of
#: that write in a batch it replaces moves there. The write stamps are compared to the
#: millisecond (the index truncates them, the spool gives them exactly, as in ``_SELECT``); the
#: row keeps its stamp, ETag and attributes, so a move is never taken for a newer write.
_MOVE = f"""
UPDATE objects SET batch_id = ?1, tar_key = ?2, member = ?3, offset = ?4, uploaded = 1
WHERE bucket = ?5 AND key = ?6 AND batch_id IN (SELECT value FROM json_each(?7))
AND {_MS.format("mtime")} = {_MS.format("?8")}
"""  # noqa: S608  constants only
_SELECT = f"""
SELECT o.*, u.headers FROM objects o LEFT JOIN updates u
ON u.bucket = o.bucket AND u.key = o.key
AND {_MS.format("u.object_mtime")} = {_MS.format("o.mtime")}
"""  # noqa: S608  constants only


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    """One object as the catalog knows it."""

    bucket: str
    batch_id: str
    tar_key: str
    member: str
    offset: int
    record: ObjectRecord
    uploaded: bool


#: How handlers find the object a read of (bucket, key) serves (``Pipeline.lookup``).
Lookup = Callable[[str, str], Awaitable[CatalogEntry | None]]


@dataclass(frozen=True, slots=True)
class CatalogWrite:
    """One object (or tombstone) to record."""

    bucket: str
    batch_id: str
    tar_key: str
    entry: Placed
    uploaded: bool


def retained(writes: list[T]) -> list[T]:
    """The newest ``MAX_RETAINED`` of writes kept for retry after failed transactions."""
    if len(writes) <= MAX_RETAINED:
        return writes
    logger.error(
        "catalog: %d objects dropped after failed writes (they are in their batches' indexes; "
        "s3batchd reindex restores them)",
        len(writes) - MAX_RETAINED,
    )
    return writes[-MAX_RETAINED:]


def count_rows(path: Path) -> int:
    """Objects in the catalog at ``path``, counted through a read-only connection of its own
    (WAL: writers and the daemon's connection are not held up; a count of ten million rows
    reads an index for about a second). Blocking."""
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return int(db.execute("SELECT count(*) FROM objects").fetchone()[0])
    finally:
        db.close()


def catalog_path(spool_dir: Path, configured: str = "") -> Path:
    """``catalog.path`` if set, else inside the spool, in a directory no bucket name can take."""
    return Path(configured) if configured else spool_dir / CATALOG_DIR / "catalog.sqlite3"


class Catalog:
    """The catalog database. Safe to share between the event loop and one writer thread:
    every use of the connection holds ``_db_lock``; queuing a row (``put``) only takes
    ``_pending_lock``, held for an append, so a flush in progress elsewhere never holds up
    the PUT that queues the next row."""

    def __init__(
        self, path: Path, *, busy_timeout_s: float = 0.5, auto_checkpoint: bool = True
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        # Several processes open one catalog at once (server.workers): switching a new database
        # to WAL takes an exclusive lock SQLite does not wait for, so the set-up is serialised
        # (and so is moving a corrupt catalog aside).
        with path.with_name(path.name + ".setup-lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                self._db = _open(path, busy_timeout_s, auto_checkpoint=auto_checkpoint)
            except sqlite3.DatabaseError as exc:
                if not _is_corrupt(exc):
                    raise
                # A cache of the spool and the indexes: start over rather than not start.
                aside = _move_aside(path)
                logger.warning(
                    "catalog %s is corrupt (%s): moved aside to %s; a new one is rebuilt from "
                    "the spool (objects already uploaded: s3batchd reindex restores them)",
                    path,
                    exc,
                    aside,
                )
                self._db = _open(path, busy_timeout_s, auto_checkpoint=auto_checkpoint)
        self._pending: list[tuple[Any, ...]] = []
        self._db_lock = threading.RLock()
        self._pending_lock = threading.Lock()

    def close(self) -> None:
        """Close the database."""
        with self._db_lock:
            self.flush()
            self._db.close()

    def put(
        self, bucket: str, batch_id: str, tar_key: str, entry: Placed, *, uploaded: bool
    ) -> None:
        """Record an object (ignored if the catalog already has a newer one for the key, or a
        newer tombstone), or a tombstone (hiding older objects of the key).

        Objects are queued and written in one transaction by ``flush``, which every read
        calls first (and the pipeline calls within ``FLUSH_DELAY_S``, and before a batch goes
        to the uploader): one SQLite transaction per PUT cost more than the rest of the
        catalog's work. The catalog is rebuilt from the spool at start, so a crash loses
        nothing that was not already on disk."""
        if entry.record.deleted or entry.record.update_of is not None:
            self.put_all([CatalogWrite(bucket, batch_id, tar_key, entry, uploaded)])
            return
        row = _row(bucket, batch_id, tar_key, entry, uploaded=uploaded)
        with self._pending_lock:
            self._pending.append(row)

    @property
    def pending(self) -> int:
        """Objects queued for the next ``flush``."""
        return len(self._pending)

    def flush(self) -> None:
        """Write the queued objects (one transaction). When it fails (another process held
        the write lock too long, the disk is full: DiskFull) they stay queued for the next
        flush."""
        with self._db_lock:
            with self._pending_lock:
                rows, self._pending = self._pending, []
            if not rows:
                return
            try:
                with self._transaction():
                    self._db.executemany(_UPSERT, rows)
            except sqlite3.Error as exc:
                self._requeue(rows)
                if exc.sqlite_errorcode == sqlite3.SQLITE_FULL:
                    raise DiskFull(f"catalog {self.path}: {exc}") from exc
                raise

    def try_flush(self) -> bool:
        """``flush`` unless another thread is using the connection (then False, nothing
        done): for the event loop, which must not wait for the catalog's thread."""
        if not self._db_lock.acquire(blocking=False):
            return False
        try:
            self.flush()
        finally:
            self._db_lock.release()
        return True

    def checkpoint(self) -> None:
        """Copy the write-ahead log into the database (PASSIVE: readers are not waited for),
        for a connection opened without ``auto_checkpoint``."""
        with self._db_lock:
            self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def _requeue(self, rows: list[tuple[Any, ...]]) -> None:
        with self._pending_lock:
            self._pending = retained(rows + self._pending)

    def _apply(
        self, bucket: str, batch_id: str, tar_key: str, entry: Placed, *, uploaded: bool
    ) -> None:
        record = entry.record
        if record.deleted:
            self._db.execute(_TOMBSTONE, (bucket, record.key, record.mtime))
            self._db.execute(_BURY, (bucket, record.key, record.mtime))
        elif record.update_of is not None:
            update = (bucket, record.key, record.update_of, record.mtime, _json(record.headers))
            self._db.execute(_UPDATE, update)
        else:
            self._db.execute(_UPSERT, _row(bucket, batch_id, tar_key, entry, uploaded=uploaded))

    def put_many(
        self,
        bucket: str,
        batch_id: str,
        tar_key: str,
        entries: Iterable[IndexEntry],
        *,
        uploaded: bool,
    ) -> None:
        """Record every object of a batch in one transaction."""
        self.put_all(CatalogWrite(bucket, batch_id, tar_key, entry, uploaded) for entry in entries)

    def put_all(self, writes: Iterable[CatalogWrite]) -> None:
        """Record objects and tombstones in order, in one transaction (all or none)."""
        with self._db_lock:
            self.flush()
            with self._transaction():
                for write in writes:
                    self._apply(
                        write.bucket,
                        write.batch_id,
                        write.tar_key,
                        write.entry,
                        uploaded=write.uploaded,
                    )

    def put_index(self, bucket: str, document: dict[str, Any]) -> list[IndexEntry]:
        """Record a checked index document (``index.parse_index``) of ``bucket``, in one
        transaction: its objects, tombstones and attribute updates as ``put_many`` does, and
        for a compacted batch (version 2, ``replaces``) the rows of the replaced batches' same
        writes moved to it first. What ``s3batchd reindex`` and a follow loop call for each
        index they read; returns the entries recorded."""
        batch_id: str = document["batch_id"]
        tar_key: str = document["tar"]["key"]
        entries = entries_from_index(document)
        replaced = json.dumps(replaced_batches(document))
        with self._db_lock:
            self.flush()
            with self._transaction():
                moved: set[int] = set()
                if replaced != "[]":
                    for number, entry in enumerate(entries):
                        if entry.record.deleted or entry.record.update_of is not None:
                            continue
                        cursor = self._db.execute(
                            _MOVE,
                            (
                                batch_id,
                                tar_key,
                                entry.member,
                                entry.offset,
                                bucket,
                                entry.record.key,
                                replaced,
                                entry.record.mtime,
                            ),
                        )
                        if cursor.rowcount:
                            moved.add(number)
                # A moved row is the same write, already at its new place: its exact stamp
                # stays (the index gives it to the millisecond).
                for number, entry in enumerate(entries):
                    if number not in moved:
                        self._apply(bucket, batch_id, tar_key, entry, uploaded=True)
        return entries

    def replace_batch(
        self, bucket: str, batch_id: str, tar_key: str, entries: Iterable[IndexEntry]
    ) -> list[str]:
        """Make the catalog hold exactly ``entries`` of a recovered batch (none: a quarantined
        one), in one transaction: rows of members recovery cut off or found damaged go, so
        their keys are never served from bytes that are not there. Returns those keys."""
        writes = [CatalogWrite(bucket, batch_id, tar_key, entry, False) for entry in entries]
        with self._db_lock:
            self.flush()
            with self._transaction():
                before = {
                    row[0]
                    for row in self._db.execute(
                        "SELECT key FROM objects WHERE batch_id = ? AND bucket = ?",
                        (batch_id, bucket),
                    )
                }
                # All of them first: a key written twice in the batch whose newer member was
                # lost falls back to the older one (an upsert would keep the newer row).
                self._db.execute(
                    "DELETE FROM objects WHERE batch_id = ? AND bucket = ?", (batch_id, bucket)
                )
                for write in writes:
                    self._apply(bucket, batch_id, tar_key, write.entry, uploaded=False)
                after = {
                    row[0]
                    for row in self._db.execute(
                        "SELECT key FROM objects WHERE batch_id = ? AND bucket = ?",
                        (batch_id, bucket),
                    )
                }
        return sorted(before - after)

    def mark_uploaded(self, batch_id: str) -> None:
        """The batch and its index are in the bucket: read its objects from there."""
        with self._db_lock:
            self.flush()
            self._db.execute("UPDATE objects SET uploaded = 1 WHERE batch_id = ?", (batch_id,))

    def forget_batch(self, batch_id: str) -> int:
        """A parked batch was discarded: forget the objects still pointing into it (reads and
        listings no longer show them); how many."""
        with self._db_lock:
            self.flush()
            cursor = self._db.execute("DELETE FROM objects WHERE batch_id = ?", (batch_id,))
            return cursor.rowcount

    def get(self, bucket: str, key: str) -> CatalogEntry | None:
        """The latest object under ``key``, or None."""
        with self._db_lock:
            self.flush()
            row = self._db.execute(
                _SELECT + "WHERE o.bucket = ? AND o.key = ?", (bucket, key)
            ).fetchone()
        return None if row is None else _entry(row)

    def tombstone(self, bucket: str, key: str) -> float | None:
        """The stamp of the latest delete of ``key`` this catalog knows, or None."""
        with self._db_lock:
            self.flush()
            row = self._db.execute(
                "SELECT mtime FROM tombstones WHERE bucket = ? AND key = ?", (bucket, key)
            ).fetchone()
        return None if row is None else float(row[0])

    def tombstones(self, bucket: str, keys: list[str]) -> dict[str, float]:
        """The stamp of the latest delete of each of ``keys`` this catalog knows (one query
        per 500 keys)."""
        found: dict[str, float] = {}
        with self._db_lock:
            self.flush()
            for start in range(0, len(keys), 500):
                chunk = keys[start : start + 500]
                marks = ", ".join("?" * len(chunk))
                rows = self._db.execute(
                    f"SELECT key, mtime FROM tombstones WHERE bucket = ? AND key IN ({marks})",  # noqa: S608  placeholders only
                    (bucket, *chunk),
                )
                found.update((key, float(mtime)) for key, mtime in rows)
        return found

    def iter_keys(self, bucket: str, prefix: str, after: str) -> Iterator[CatalogEntry]:
        """Objects of ``bucket`` whose key starts with ``prefix`` and sorts after ``after``,
        in S3 order (UTF-8 byte order, which is SQLite's BINARY collation). Read in pages of
        ``_PAGE_ROWS``, each its own query: no cursor stays open on the shared connection
        between two pages, while the writer thread may use it."""
        while True:
            with self._db_lock:
                self.flush()
                # A range scan plus a check in Python: SQLite's substr() stops at a NUL, which
                # S3 keys may contain.
                rows = self._db.execute(
                    _SELECT + "WHERE o.bucket = ? AND o.key > ? AND o.key >= ? "
                    "ORDER BY o.key LIMIT ?",
                    (bucket, after, prefix, _PAGE_ROWS),
                ).fetchall()
            for row in rows:
                entry = _entry(row)
                if not entry.record.key.startswith(prefix):
                    return
                yield entry
            if len(rows) < _PAGE_ROWS:
                return
            after = _entry(rows[-1]).record.key

    def expire(self, older_than: float, limit: int = 2000) -> int:
        """Forget up to ``limit`` objects written before ``older_than`` (Unix time); returns
        how many. Bounded so a call never holds the catalog long; repeated calls catch up."""
        with self._db_lock:
            self.flush()
            cursor = self._db.execute(
                "DELETE FROM objects WHERE (bucket, key) IN "
                "(SELECT bucket, key FROM objects WHERE mtime < ? LIMIT ?)",
                (older_than, limit),
            )
            for table in ("tombstones", "updates"):
                self._db.execute(
                    f"DELETE FROM {table} WHERE (bucket, key) IN "  # noqa: S608  a constant
                    f"(SELECT bucket, key FROM {table} WHERE mtime < ? LIMIT ?)",
                    (older_than, limit),
                )
            return cursor.rowcount

    def newest_stamp(self) -> float:
        """The largest write stamp (``mtime``) of any object, tombstone or attribute update,
        0 when none (lookups in the ``mtime`` indexes)."""
        with self._db_lock:
            self.flush()
            stamps = [
                self._db.execute(f"SELECT max(mtime) FROM {table}").fetchone()[0]  # noqa: S608  a constant
                for table in ("objects", "tombstones", "updates")
            ]
        return max((float(stamp) for stamp in stamps if stamp is not None), default=0.0)

    def known_batches(self, bucket: str, batch_ids: Iterable[str]) -> set[str]:
        """Those of ``batch_ids`` of which the catalog holds an object (lookups in the
        ``objects_batch`` index): a restart with the catalog kept need not read their
        indexes again."""
        with self._db_lock:
            self.flush()
            return {
                batch_id
                for batch_id in batch_ids
                if self._db.execute(
                    "SELECT 1 FROM objects WHERE batch_id = ? AND bucket = ? LIMIT 1",
                    (batch_id, bucket),
                ).fetchone()
                is not None
            }

    def buckets(self) -> list[str]:
        """The buckets the catalog has objects of (the in-daemon compaction's passes)."""
        with self._db_lock:
            self.flush()
            rows = self._db.execute("SELECT DISTINCT bucket FROM objects ORDER BY bucket")
            return [str(row[0]) for row in rows.fetchall()]

    def count(self) -> int:
        """Rows in the catalog."""
        with self._db_lock:
            self.flush()
            return int(self._db.execute("SELECT count(*) FROM objects").fetchone()[0])

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            self._roll_back()
            return
        try:
            self._db.execute("COMMIT")
        except sqlite3.Error:
            self._roll_back()  # never leave the connection inside a transaction
            raise

    def _roll_back(self) -> None:
        # A statement or a COMMIT that found the disk full has rolled the transaction back
        # already: a ROLLBACK then would fail and hide why.
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")


def _open(path: Path, busy_timeout_s: float, *, auto_checkpoint: bool) -> sqlite3.Connection:
    """Connect and set the database up; raises ``sqlite3.DatabaseError`` for a file that is
    not a database, is damaged where set-up reads, or is shorter than its header says. (Not
    ``PRAGMA quick_check``: it reads the whole file, 0.55 s per 150 MB measured, and a week of
    rows can be gigabytes.)"""
    _check_length(path)
    # A short busy timeout by default: the daemon reads on its event loop, and another
    # process (a worker's catalog writer, s3batchd reindex) may hold the write lock.
    db = sqlite3.connect(
        path, check_same_thread=False, isolation_level=None, timeout=busy_timeout_s
    )
    try:
        # WAL + NORMAL: a crash may lose the newest rows, which start-up rebuilds.
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        if not auto_checkpoint:  # the owner calls checkpoint() (on a thread of its own)
            db.execute("PRAGMA wal_autocheckpoint=0")
        db.executescript(_SCHEMA)
        columns = {row[1] for row in db.execute("PRAGMA table_info(objects)")}
        for column, statement in _MIGRATIONS.items():
            if column not in columns:
                db.execute(statement)
    except sqlite3.Error:
        db.close()
        raise
    return db


def _check_length(path: Path) -> None:
    """Raise ``sqlite3.DatabaseError`` when ``path`` is shorter than the page count in its
    header (a truncated copy; SQLite itself notices only when it reads a missing page).
    The header's count is valid when its two change counters agree
    (https://www.sqlite.org/fileformat2.html#in_header_database_size)."""
    try:
        with path.open("rb") as handle:
            header = handle.read(100)
            size = os.fstat(handle.fileno()).st_size
    except FileNotFoundError:
        return
    if len(header) < 100 or not header.startswith(b"SQLite format 3\0"):
        return  # empty (new), or not a database at all: SQLite says so
    try:
        wal_size = path.with_name(path.name + "-wal").stat().st_size
    except FileNotFoundError:  # none, or another worker's checkpoint just removed it
        wal_size = 0
    if wal_size > 0:
        # A crash during a checkpoint can leave page 1 (with the new count) written before
        # the pages past the end: the WAL still has them and SQLite replays it on open.
        return
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    if header[24:28] == header[92:96] and size < pages * page_size:
        raise sqlite3.DatabaseError(
            f"database file is truncated: {size} bytes, its header counts {pages * page_size}"
        )


#: SQLite's primary result codes for a damaged file (SQLITE_CORRUPT, SQLITE_NOTADB).
_CORRUPT_CODES = (11, 26)


def _is_corrupt(exc: sqlite3.DatabaseError) -> bool:
    """Whether ``exc`` says the file is damaged (not, e.g., locked or read-only)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:  # raised by _check_length
        return type(exc) is sqlite3.DatabaseError
    return code & 0xFF in _CORRUPT_CODES


def _move_aside(path: Path) -> Path:
    """Rename a corrupt catalog (and its write-ahead log) to ``<name>.corrupt-<UTC time>``,
    keeping the newest ``CORRUPT_KEPT`` such copies; the new name."""
    stamp = datetime.now(tz=UTC).strftime("%Y%m%dT%H%M%S%fZ")
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    path.rename(aside)
    wal = path.with_name(path.name + "-wal")
    if wal.exists():
        wal.rename(aside.with_name(aside.name + "-wal"))
    path.with_name(path.name + "-shm").unlink(missing_ok=True)
    copies = sorted(path.parent.glob(path.name + ".corrupt-*[0-9]Z"))
    for old in copies[:-CORRUPT_KEPT]:
        old.unlink()
        old.with_name(old.name + "-wal").unlink(missing_ok=True)
    return aside


def _json(values: dict[str, str]) -> str:
    return json.dumps(values) if values else "{}"  # most objects have none: no encoder call


def _row(
    bucket: str, batch_id: str, tar_key: str, entry: Placed, *, uploaded: bool
) -> tuple[Any, ...]:
    record = entry.record
    return (
        bucket,
        record.key,
        batch_id,
        tar_key,
        entry.member,
        entry.offset,
        record.size,
        record.md5_hex,
        record.content_type,
        _json(record.metadata),
        _json(record.headers),
        _json(record.checksums),
        record.mtime,
        int(uploaded),
        record.multipart_etag,
    )


def _entry(row: tuple[Any, ...]) -> CatalogEntry:
    (
        bucket,
        key,
        batch_id,
        tar_key,
        member,
        offset,
        length,
        md5,
        content_type,
        metadata,
        headers,
        checksums,
        mtime,
        uploaded,
        etag,
        update,
    ) = row
    record = record_of_row(
        key, length, md5, content_type, metadata, headers, checksums, mtime, etag, update
    )
    return CatalogEntry(bucket, batch_id, tar_key, member, offset, record, bool(uploaded))


def record_of_row(
    key: str,
    length: int,
    md5: str,
    content_type: str,
    metadata: str,
    headers: str,
    checksums: str,
    mtime: float,
    etag: str,
    update: str | None,
) -> ObjectRecord:
    """The object a catalog row describes, with its latest attribute update's headers
    (``update``, JSON, None when none applies): the same columns in both backends (``_row``
    writes them here; catalog/postgres.py reads its own through this too)."""
    stored = json.loads(headers)
    if update is not None:
        stored = updated_headers(stored, json.loads(update))
    return ObjectRecord(
        key=key,
        size=length,
        md5_hex=md5,
        content_type=content_type,
        metadata=json.loads(metadata),
        headers=stored,
        checksums=json.loads(checksums),
        mtime=mtime,
        multipart_etag=etag,
    )
