"""The shared catalog in PostgreSQL (``catalog.backend = "postgres"``): one catalog for the fleet.

Every daemon writes the rows of a batch here, in one statement, once the batch's index is in the
bucket; every daemon reads keys and listings here. It holds what the bucket's index objects say,
so it can always be rebuilt from them (``s3batchd reindex``). The daemon's own SQLite catalog
(``store.py``) stays its read-your-writes cache: it knows the keys of batches not uploaded yet
(and of this daemon's uploaded ones) at once, and a read takes the newer of the two answers.

Same rules as the SQLite catalog: one row per (bucket, key), the latest write wins by the
acknowledging daemon's write stamp (``mtime``, Unix seconds), then by the larger batch id; a
tombstone hides every object of its key stamped at or before it, in any order of arrival (a
read checks the tombstone too, so two batches committed at the same moment cannot resurrect a
deleted key); an attribute update applies to the object it names by stamp to the millisecond.

Keys are ``bytea`` (their UTF-8 bytes): S3 orders keys by UTF-8 bytes, which is ``bytea``
order whatever the database's collation, and the primary key (bucket, key) serves both lookups
and prefix listings as range scans. The schema is versioned (``s3batchd_schema``) and created
or migrated under an advisory lock at start or by ``s3batchd catalog migrate``; version 2 adds
``s3batchd_compaction``, the state of the compaction lease (compaction/pglease.py). Expired rows
are deleted in bounded batches (``FOR UPDATE SKIP LOCKED``: daemons expiring at once do not
wait for each other).

Why one module above 400 lines: its SQL (schema, migrations, the latest-write statements) sits
beside the code that binds their parameters; they change together.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from s3batchd.catalog.store import CatalogEntry, record_of_row
from s3batchd.clock import stamp_ms
from s3batchd.errors import CatalogRejected, CatalogUnavailable
from s3batchd.index import IndexEntry, entries_from_index, replaced_batches

logger = logging.getLogger(__name__)

#: The schema this code reads and writes. A database at a newer version was migrated by a
#: newer daemon: this one refuses to use it rather than write rows it does not understand.
SCHEMA_VERSION = 2
#: Any constant: the advisory lock that serialises migrations of daemons starting together.
_MIGRATION_LOCK = 0x53336263
#: Statements that bring the schema from version N (index) to N + 1.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE s3batchd_objects (
        bucket text NOT NULL,
        key bytea NOT NULL,
        batch_id text NOT NULL,
        tar_key text NOT NULL,
        member text NOT NULL,
        "offset" bigint NOT NULL,
        length bigint NOT NULL,
        md5 text NOT NULL,
        content_type text NOT NULL,
        metadata text NOT NULL,
        headers text NOT NULL,
        checksums text NOT NULL,
        mtime double precision NOT NULL,
        etag text NOT NULL DEFAULT '',
        PRIMARY KEY (bucket, key)
    );
    CREATE INDEX s3batchd_objects_mtime ON s3batchd_objects (mtime);
    CREATE TABLE s3batchd_tombstones (
        bucket text NOT NULL,
        key bytea NOT NULL,
        mtime double precision NOT NULL,
        PRIMARY KEY (bucket, key)
    );
    CREATE INDEX s3batchd_tombstones_mtime ON s3batchd_tombstones (mtime);
    CREATE TABLE s3batchd_updates (
        bucket text NOT NULL,
        key bytea NOT NULL,
        object_mtime double precision NOT NULL,
        mtime double precision NOT NULL,
        headers text NOT NULL,
        PRIMARY KEY (bucket, key)
    );
    CREATE INDEX s3batchd_updates_mtime ON s3batchd_updates (mtime);
    """,
    # The compaction lease's state (compaction/pglease.py): who last held a bucket prefix's
    # advisory lock, and the batch it was writing (its tar is deleted by the next holder
    # unless its index was written). The lock itself is PostgreSQL's, not a row. IF NOT
    # EXISTS: a rollback sets the version back to 1 and leaves the table (docs/operations.md).
    """
    CREATE TABLE IF NOT EXISTS s3batchd_compaction (
        bucket text NOT NULL,
        prefix text NOT NULL,
        owner text NOT NULL DEFAULT '',
        writing text NOT NULL DEFAULT '',
        PRIMARY KEY (bucket, prefix)
    );
    """,
)
TABLES = ("s3batchd_objects", "s3batchd_tombstones", "s3batchd_updates")

_COLUMNS = (
    'o.key, o.batch_id, o.tar_key, o.member, o."offset", o.length, o.md5, o.content_type, '
    "o.metadata, o.headers, o.checksums, o.mtime, o.etag, u.headers"
)
#: ``clock.stamp_ms`` of a stamp ``{0}`` in PostgreSQL: the fraction of the second (exact) to
#: whole microseconds, half to even, then cut (as ``store._MS`` in SQLite; not
#: ``round(x * 1000000)``, a product rounded to 0.25 us).
_MS = (
    "((floor({0})::bigint * 1000000 + trunc(({0} - floor({0})) * 1000000)::bigint"
    " + (CASE WHEN ({0} - floor({0})) * 1000000 - trunc(({0} - floor({0})) * 1000000) > 0.5"
    " OR (({0} - floor({0})) * 1000000 - trunc(({0} - floor({0})) * 1000000) = 0.5"
    " AND mod(trunc(({0} - floor({0})) * 1000000)::bigint, 2) = 1) THEN 1 ELSE 0 END)) / 1000)"
)
#: An update names its object by the object's stamp to the millisecond (index stamps are
#: milliseconds), as ``index.iso_time`` gives it.
_UPDATE_JOIN = f"""
LEFT JOIN s3batchd_updates u ON u.bucket = o.bucket AND u.key = o.key
AND {_MS.format("u.object_mtime")} = {_MS.format("o.mtime")}
"""
#: One row whatever exists: the object (NULLs when none) and the key's tombstone stamp.
_GET = f"""
SELECT t.mtime, {_COLUMNS}
FROM (SELECT 1) AS one
LEFT JOIN s3batchd_objects o ON o.bucket = %(bucket)s AND o.key = %(key)s
{_UPDATE_JOIN}
LEFT JOIN s3batchd_tombstones t ON t.bucket = %(bucket)s AND t.key = %(key)s
"""  # noqa: S608  constants only
_PAGE = f"""
SELECT {_COLUMNS}
FROM s3batchd_objects o
{_UPDATE_JOIN}
WHERE o.bucket = %(bucket)s AND o.key > %(after)s AND o.key >= %(low)s {{high}}
  AND NOT EXISTS (
    SELECT 1 FROM s3batchd_tombstones t
    WHERE t.bucket = o.bucket AND t.key = o.key AND t.mtime >= o.mtime
  )
ORDER BY o.key
LIMIT %(limit)s
"""  # noqa: S608  constants only
#: Two texts, with and without an upper bound: one text with ``(%(high)s IS NULL OR key <
#: %(high)s)`` gets a generic plan that bounds the range scan by nothing (1M rows read).
_PAGE_UNDER = _PAGE.format(high="AND o.key < %(high)s")
_PAGE_ALL = _PAGE.format(high="")
_TOMBSTONES = """
SELECT key, mtime FROM s3batchd_tombstones WHERE bucket = %(bucket)s AND key = ANY(%(keys)s)
"""
#: A batch in one statement: its objects upserted (latest write wins, none older than a
#: tombstone), its tombstones recorded and the older objects of their keys deleted, its
#: attribute updates recorded. Every key appears once (``_latest_per_key``): one statement
#: must not touch a row twice.
_PUT_BATCH = """
WITH r (kind, key, member, "offset", length, md5, content_type, metadata, headers, checksums,
        mtime, etag, update_of) AS (
    SELECT * FROM unnest(
        %(kind)s::text[], %(key)s::bytea[], %(member)s::text[], %(offset)s::bigint[],
        %(length)s::bigint[], %(md5)s::text[], %(content_type)s::text[], %(metadata)s::text[],
        %(headers)s::text[], %(checksums)s::text[], %(mtime)s::float8[], %(etag)s::text[],
        %(update_of)s::float8[])
),
objects AS (
    INSERT INTO s3batchd_objects AS cur (bucket, key, batch_id, tar_key, member, "offset",
        length, md5, content_type, metadata, headers, checksums, mtime, etag)
    SELECT %(bucket)s, r.key, %(batch_id)s, %(tar_key)s, r.member, r."offset", r.length, r.md5,
        r.content_type, r.metadata, r.headers, r.checksums, r.mtime, r.etag
    FROM r
    WHERE r.kind = 'o' AND NOT EXISTS (
        SELECT 1 FROM s3batchd_tombstones t
        WHERE t.bucket = %(bucket)s AND t.key = r.key AND t.mtime >= r.mtime)
    ON CONFLICT (bucket, key) DO UPDATE SET
        batch_id = excluded.batch_id, tar_key = excluded.tar_key, member = excluded.member,
        "offset" = excluded."offset", length = excluded.length, md5 = excluded.md5,
        content_type = excluded.content_type, metadata = excluded.metadata,
        headers = excluded.headers, checksums = excluded.checksums, mtime = excluded.mtime,
        etag = excluded.etag
    WHERE excluded.mtime > cur.mtime
       OR (excluded.mtime = cur.mtime AND excluded.batch_id >= cur.batch_id)
    RETURNING 1
),
tombstones AS (
    INSERT INTO s3batchd_tombstones AS cur (bucket, key, mtime)
    SELECT %(bucket)s, r.key, r.mtime FROM r WHERE r.kind = 't'
    ON CONFLICT (bucket, key) DO UPDATE SET mtime = excluded.mtime
    WHERE excluded.mtime > cur.mtime
    RETURNING 1
),
buried AS (
    DELETE FROM s3batchd_objects o USING r
    WHERE r.kind = 't' AND o.bucket = %(bucket)s AND o.key = r.key AND o.mtime <= r.mtime
    RETURNING 1
),
updates AS (
    INSERT INTO s3batchd_updates AS cur (bucket, key, object_mtime, mtime, headers)
    SELECT %(bucket)s, r.key, r.update_of, r.mtime, r.headers FROM r WHERE r.kind = 'u'
    ON CONFLICT (bucket, key) DO UPDATE SET
        object_mtime = excluded.object_mtime, mtime = excluded.mtime, headers = excluded.headers
    WHERE excluded.mtime > cur.mtime
    RETURNING 1
)
SELECT (SELECT count(*) FROM objects), (SELECT count(*) FROM tombstones),
       (SELECT count(*) FROM buried), (SELECT count(*) FROM updates)
"""
#: The rows of the same writes in the batches a compacted batch replaces, moved to it (as
#: ``store._MOVE``: stamps compared to the millisecond, the row keeps stamp, ETag, attributes).
_MOVE = f"""
UPDATE s3batchd_objects o SET batch_id = %(batch_id)s, tar_key = %(tar_key)s,
    member = r.member, "offset" = r."offset"
FROM unnest(%(key)s::bytea[], %(member)s::text[], %(offset)s::bigint[], %(mtime)s::float8[])
    AS r (key, member, "offset", mtime)
WHERE o.bucket = %(bucket)s AND o.key = r.key AND o.batch_id = ANY(%(replaces)s::text[])
AND {_MS.format("o.mtime")} = {_MS.format("r.mtime")}
RETURNING 1
"""  # noqa: S608  constants only
#: Seconds during which calls fail at once after a call failed (not for a statement timeout
#: or a missing table: those are the query's, not the server's).
BREAKER_S = 1.0
#: Seconds a batch's write may take, server side and waited for: a batch of 50,000 rows took
#: 4.1 s on an idle server, over the reads' ``timeout_s`` (2 s), and would never be written.
WRITE_TIMEOUT_S = 60.0
#: SQLSTATE classes of errors a retry does not cure (data exceptions, integrity violations,
#: syntax or access rule violations, program limits), but for the codes below.
_PERMANENT_CLASSES = ("22", "23", "42", "54")
#: Codes in those classes that an operator or the next migration cures: a dropped table, a
#: missing grant.
_TRANSIENT_CODES = ("42P01", "42501")
#: Exact counts below this many rows, the planner's estimate above: each daemon counts
#: every ``MAINTENANCE_INTERVAL_S`` (60 s), and a count(*) reads every row.
_EXACT_COUNT_BELOW = 10_000


@dataclass(frozen=True, slots=True)
class SharedAnswer:
    """What the shared catalog knows of one key."""

    entry: CatalogEntry | None
    """The latest object (None: none)."""
    tombstone: float | None
    """The stamp of the key's latest delete (None: none)."""

    def visible(self) -> CatalogEntry | None:
        """The object unless a tombstone at or after it hides it."""
        if self.entry is None:
            return None
        if self.tombstone is not None and stamp_ms(self.tombstone) >= stamp_ms(
            self.entry.record.mtime
        ):
            return None
        return self.entry


class PostgresCatalog:
    """The fleet's catalog in PostgreSQL, through a small pool of async connections.

    Every call raises ``CatalogUnavailable`` when the database cannot be reached or fails
    (within ``timeout_s``), and counts it in ``errors`` by operation. The schema is made current
    before the first use (``migrate``), again after a failure."""

    def __init__(self, dsn: str, *, timeout_s: float = 2.0, max_connections: int = 4) -> None:
        self.timeout_s = timeout_s
        self._pool = AsyncConnectionPool(
            dsn,
            min_size=1,
            max_size=max_connections,
            timeout=timeout_s,
            open=False,
            # A pool that cannot connect keeps trying in the background, quietly: each call
            # then fails after ``timeout_s`` and is counted, and the first one after the
            # database is back succeeds.
            reconnect_timeout=0,
            kwargs={
                "autocommit": True,
                "connect_timeout": max(1, round(timeout_s)),
                # A query stuck behind a lock or a slow disk answers 503 like an outage.
                "options": f"-c statement_timeout={int(timeout_s * 1000)}",
                # A server that stops answering (a hung host, a dropped route) is noticed by
                # the kernel, not after the default two hours of TCP silence.
                "keepalives": 1,
                "keepalives_idle": max(1, round(timeout_s)),
                "keepalives_interval": max(1, round(timeout_s)),
                "keepalives_count": 3,
                "tcp_user_timeout": int(timeout_s * 3000),
            },
            # A connection left from before a restart of the server is found broken when it
            # is taken, not by the request that uses it (a 503).
            check=AsyncConnectionPool.check_connection,
            name="s3batchd-catalog",
        )
        self._calls: set[asyncio.Task[list[TupleRow]]] = set()
        """Queries given up at their deadline, finishing (or cancelled) in the background."""
        self._closed_until = 0.0
        """Until this time (monotonic) calls fail at once: the last one failed."""
        self._opened = False
        self._migrated = False
        self.errors: Counter[str] = Counter()
        """Failed calls by operation (``s3batchd_catalog_errors_total``)."""
        self.rows: int | None = None
        """Objects in the catalog at the last ``count`` (None: not counted yet)."""

    async def open(self) -> None:
        """Open the pool (connections are made in the background: an unreachable database
        does not hold up the daemon's start)."""
        if not self._opened:
            await self._pool.open(wait=False)
            self._opened = True

    async def close(self) -> None:
        """Close every connection (the queries given up get ``timeout_s`` to end first)."""
        if self._calls:
            await asyncio.wait(set(self._calls), timeout=self.timeout_s)
        if self._opened:
            await self._pool.close()
            self._opened = False

    async def migrate(self) -> int:
        """Create or migrate the schema to ``SCHEMA_VERSION`` (one transaction, serialised
        between daemons by an advisory lock); returns the version found before."""
        await self.open()
        try:
            async with self._pool.connection() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
                # No DDL when the schema is current: the daemons' role may lack CREATE.
                cursor = await conn.execute("SELECT to_regclass('s3batchd_schema') IS NOT NULL")
                exists = await cursor.fetchone()
                found = 0
                if exists is not None and exists[0]:
                    cursor = await conn.execute("SELECT max(version) FROM s3batchd_schema")
                    row = await cursor.fetchone()
                    found = int(row[0]) if row is not None and row[0] is not None else 0
                else:
                    await conn.execute("CREATE TABLE s3batchd_schema (version integer NOT NULL)")
                if found > SCHEMA_VERSION:
                    raise CatalogUnavailable(
                        f"catalog.dsn: the catalog's schema is version {found}, newer than "
                        f"this s3batchd's {SCHEMA_VERSION}: upgrade s3batchd"
                    )
                for statement in MIGRATIONS[found:]:
                    await conn.execute(statement)
                if found < SCHEMA_VERSION:
                    await conn.execute("DELETE FROM s3batchd_schema")
                    await conn.execute(
                        "INSERT INTO s3batchd_schema (version) VALUES (%s)", (SCHEMA_VERSION,)
                    )
                    logger.info(
                        "catalog: PostgreSQL schema migrated from version %d to %d",
                        found,
                        SCHEMA_VERSION,
                    )
        except (psycopg.Error, PoolTimeout) as exc:
            raise self._failed("migrate", exc) from exc
        self._migrated = True
        return found

    async def get(self, bucket: str, key: str) -> SharedAnswer:
        """The latest object and tombstone of ``key``."""
        rows = await self._query("read", _GET, {"bucket": bucket, "key": _key(key)})
        tombstone, *columns = rows[0]
        entry = None if columns[0] is None else _entry(bucket, columns)
        return SharedAnswer(entry, None if tombstone is None else float(tombstone))

    async def page(self, bucket: str, prefix: str, after: str, limit: int) -> list[CatalogEntry]:
        """Up to ``limit`` visible objects of ``bucket`` under ``prefix`` after ``after``, in
        S3 order."""
        low = _key(prefix)
        high = _successor(low)
        params = {"bucket": bucket, "after": _key(after), "low": low, "high": high, "limit": limit}
        statement = _PAGE_ALL if high is None else _PAGE_UNDER
        return [_entry(bucket, row) for row in await self._query("list", statement, params)]

    async def tombstones(self, bucket: str, keys: Iterable[str]) -> dict[str, float]:
        """The latest delete stamp of each of ``keys`` that has one."""
        wanted = [_key(key) for key in keys]
        if not wanted:
            return {}
        rows = await self._query("list", _TOMBSTONES, {"bucket": bucket, "keys": wanted})
        return {_text(key): float(mtime) for key, mtime in rows}

    async def put_batch(
        self, bucket: str, batch_id: str, tar_key: str, entries: Iterable[IndexEntry]
    ) -> tuple[int, int, int, int]:
        """Record a batch's objects, tombstones and attribute updates in one statement;
        returns (objects written, tombstones written, objects deleted, updates written)."""
        params: dict[str, Any] = {"bucket": bucket, "batch_id": batch_id, "tar_key": tar_key}
        params.update(_columns(_latest_per_key(entries)))
        rows = await self._query("write", _PUT_BATCH, params, timeout_s=WRITE_TIMEOUT_S)
        written, buried, deleted, updates = (int(value) for value in rows[0])
        return written, buried, deleted, updates

    async def put_index(self, bucket: str, document: dict[str, Any]) -> list[IndexEntry]:
        """Record a checked index document as ``put_batch`` does, after moving the rows of the
        batches a compacted batch (version 2) replaces to it; the entries recorded. What
        ``s3batchd reindex`` calls for each index (``store.Catalog.put_index`` is the SQLite
        one). Two statements, each idempotent: a retry after a failure between them is safe."""
        batch_id: str = document["batch_id"]
        tar_key: str = document["tar"]["key"]
        entries = entries_from_index(document)
        replaced = replaced_batches(document)
        if replaced:
            objects = [e for e in entries if not e.record.deleted and e.record.update_of is None]
            params: dict[str, Any] = {
                "bucket": bucket,
                "batch_id": batch_id,
                "tar_key": tar_key,
                "replaces": replaced,
                "key": [_key(e.record.key) for e in objects],
                "member": [e.member for e in objects],
                "offset": [e.offset for e in objects],
                "mtime": [e.record.mtime for e in objects],
            }
            await self._query("write", _MOVE, params)
        await self.put_batch(bucket, batch_id, tar_key, entries)
        return entries

    async def expire(self, older_than: float, limit: int = 2000) -> int:
        """Delete up to ``limit`` objects (and as many tombstones and updates) stamped before
        ``older_than``; returns how many objects. Repeated calls catch up."""
        deleted = 0
        for table in TABLES:
            statement = (
                f"WITH doomed AS (SELECT bucket, key FROM {table} WHERE mtime < %(before)s "  # noqa: S608  a constant
                "LIMIT %(limit)s FOR UPDATE SKIP LOCKED) "
                f"DELETE FROM {table} x USING doomed d WHERE x.bucket = d.bucket AND x.key = d.key "
                "RETURNING 1"
            )
            rows = await self._query("expire", statement, {"before": older_than, "limit": limit})
            if table == "s3batchd_objects":
                deleted = len(rows)
        return deleted

    async def count(self) -> int:
        """Objects in the catalog: exact while small, the planner's estimate once large."""
        rows = await self._query(
            "count",
            "SELECT reltuples::bigint FROM pg_class WHERE oid = 's3batchd_objects'::regclass",
            {},
        )
        estimate = int(rows[0][0])
        if estimate < _EXACT_COUNT_BELOW:
            rows = await self._query("count", "SELECT count(*) FROM s3batchd_objects", {})
            estimate = int(rows[0][0])
        self.rows = estimate
        return estimate

    async def _query(
        self,
        operation: str,
        statement: str,
        params: dict[str, Any],
        *,
        timeout_s: float | None = None,
    ) -> list[TupleRow]:
        """Run ``statement``; fail within ``timeout_s`` (the catalog's unless given: then the
        statement's own timeout is set too, for its transaction) whatever the server does.

        The query runs in a task that the caller stops waiting for at the deadline: cancelling
        a query psycopg waits for the server to confirm the cancel and drains the connection
        (14 s with a SIGSTOPped server), so the task is cancelled and left to finish in the
        background (``_calls``). After a failure calls fail at once for ``BREAKER_S``: the
        requests of a busy daemon do not queue behind the small pool of a dead server."""
        if time.monotonic() < self._closed_until:
            self.errors[operation] += 1
            raise CatalogUnavailable(
                f"PostgreSQL catalog: {operation} not tried: the last call failed less than "
                f"{BREAKER_S:g} s ago"
            )
        if not self._migrated:
            await self.migrate()
        deadline = self.timeout_s if timeout_s is None else timeout_s
        task = asyncio.create_task(
            self._run(statement, params, timeout_s), name=f"s3batchd-pg-{operation}"
        )
        try:
            done, _ = await asyncio.wait({task}, timeout=deadline)
        except asyncio.CancelledError:
            self._abandon(task)
            raise
        if not done:
            self._abandon(task)
            exc: BaseException = TimeoutError(f"no answer within {deadline:g} s")
            raise self._failed(operation, exc) from None
        try:
            return task.result()
        except (psycopg.Error, PoolTimeout) as error:
            raise self._failed(operation, error) from error

    async def _run(
        self, statement: str, params: dict[str, Any], timeout_s: float | None
    ) -> list[TupleRow]:
        async with self._pool.connection() as conn:
            if timeout_s is None:
                cursor = await conn.execute(statement, params)
                return await cursor.fetchall()
            async with conn.transaction():
                await conn.execute(
                    "SELECT set_config('statement_timeout', %s, true)",
                    (f"{int(timeout_s * 1000)}",),
                )
                cursor = await conn.execute(statement, params)
                return await cursor.fetchall()

    def _abandon(self, task: asyncio.Task[list[TupleRow]]) -> None:
        """Cancel ``task`` and let it finish in the background, its outcome dropped."""
        task.cancel()
        self._calls.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[list[TupleRow]]) -> None:
        self._calls.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.debug("catalog: an abandoned query ended: %s", task.exception())

    def _failed(self, operation: str, exc: BaseException) -> CatalogUnavailable:
        self.errors[operation] += 1
        query = operation != "migrate"  # migrations are not retried per request
        quiet = psycopg.errors.QueryCanceled | psycopg.errors.UndefinedTable
        if query and not isinstance(exc, quiet) and not permanent(exc):
            self._closed_until = time.monotonic() + BREAKER_S  # the server, not this query
        if isinstance(exc, psycopg.errors.UndefinedTable):
            self._migrated = False  # dropped under us: created again by the next call
        message = first_line(exc)
        if permanent(exc):
            return CatalogRejected(f"PostgreSQL catalog: {operation} rejected: {message}")
        return CatalogUnavailable(f"PostgreSQL catalog: {operation} failed: {message}")


def first_line(exc: BaseException) -> str:
    """What PostgreSQL (or psycopg) said, its first line only (a message, not its context)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def permanent(exc: BaseException) -> bool:
    """Whether PostgreSQL refused a statement for a reason a retry does not change (by
    SQLSTATE): not a connection, timeout, lock, resource or shutdown error."""
    if isinstance(exc, psycopg.DataError | psycopg.IntegrityError):
        return True  # also when psycopg refuses a value itself (a NUL in a text)
    code = getattr(exc, "sqlstate", None)
    if not isinstance(exc, psycopg.Error) or not code:
        return False
    return code[:2] in _PERMANENT_CLASSES and code not in _TRANSIENT_CODES


def _key(key: str) -> bytes:
    return key.encode("utf-8", "surrogatepass")


def _text(key: bytes) -> str:
    return bytes(key).decode("utf-8", "surrogatepass")


def _successor(prefix: bytes) -> bytes | None:
    """The smallest byte string after every string starting with ``prefix`` (None: there is
    none, the prefix is empty or all 0xFF)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


def _json(values: dict[str, str]) -> str:
    return json.dumps(values) if values else "{}"


def _latest_per_key(entries: Iterable[IndexEntry]) -> list[IndexEntry]:
    """The entries of a batch with at most one object-or-tombstone and one update per key,
    the latest (a key written twice in a batch: its later write)."""
    latest: dict[tuple[bool, str], IndexEntry] = {}
    for entry in entries:
        record = entry.record
        slot = (record.update_of is not None, record.key)
        kept = latest.get(slot)
        if kept is None or record.mtime >= kept.record.mtime:
            latest[slot] = entry
    # In key order: two batches written at once lock their common keys' rows in the same
    # order, and do not deadlock.
    return sorted(latest.values(), key=lambda entry: _key(entry.record.key))


def _columns(entries: list[IndexEntry]) -> dict[str, list[Any]]:
    """The entries as one array per column (the parameters of ``_PUT_BATCH``)."""
    names = (
        "kind",
        "key",
        "member",
        "offset",
        "length",
        "md5",
        "content_type",
        "metadata",
        "headers",
        "checksums",
        "mtime",
        "etag",
        "update_of",
    )
    columns: dict[str, list[Any]] = {name: [] for name in names}
    for entry in entries:
        record = entry.record
        kind = "t" if record.deleted else "u" if record.update_of is not None else "o"
        values = (
            kind,
            _key(record.key),
            entry.member,
            entry.offset,
            record.size,
            record.md5_hex,
            record.content_type,
            _json(record.metadata),
            _json(record.headers),
            _json(record.checksums),
            record.mtime,
            record.multipart_etag,
            record.update_of,
        )
        for name, value in zip(names, values, strict=True):
            columns[name].append(value)
    return columns


def _entry(bucket: str, row: Any) -> CatalogEntry:
    (
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
        etag,
        update,
    ) = row
    record = record_of_row(
        _text(key),
        int(length),
        md5,
        content_type,
        metadata,
        headers,
        checksums,
        float(mtime),
        etag,
        update,
    )
    # Rows are written once a batch's index is in the bucket: always read from there.
    return CatalogEntry(bucket, batch_id, tar_key, member, int(offset), record, uploaded=True)
