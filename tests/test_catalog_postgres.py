"""The shared catalog in PostgreSQL (s3batchd/catalog/postgres.py) against a real server."""

from __future__ import annotations

import asyncio
import gc
import os
import secrets
import signal
import weakref
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import TypeVar

import psycopg
import pytest
from click.testing import CliRunner
from psycopg import sql

from s3batchd.catalog import postgres as postgres_module
from s3batchd.catalog.postgres import SCHEMA_VERSION, PostgresCatalog, SharedAnswer
from s3batchd.catalog.shared import PendingBatch, SharedWriter, load_pending, newest
from s3batchd.catalog.store import Catalog, CatalogEntry
from s3batchd.cli.main import main
from s3batchd.cli.seaweed import LocalS3, free_ports
from s3batchd.errors import CatalogRejected, CatalogUnavailable
from s3batchd.handlers.listing import _with_shared as listing_with_shared
from s3batchd.handlers.listpage import ListQuery
from s3batchd.index import IndexEntry, entries_from_index, parse_index
from s3batchd.records import EMPTY_MD5, ObjectRecord
from tests.conftest import DaemonFactory
from tests.postgres import LocalPostgres, start_local_postgres

T = TypeVar("T")


def run(dsn: str, work: Callable[[PostgresCatalog], Awaitable[T]]) -> T:
    """``work`` with a catalog on ``dsn``, closed afterwards."""

    async def main() -> T:
        catalog = PostgresCatalog(dsn, timeout_s=2)
        try:
            return await work(catalog)
        finally:
            await catalog.close()

    return asyncio.run(main())


def obj(key: str, mtime: float, body: bytes = b"x", **fields: object) -> IndexEntry:
    record = ObjectRecord(
        key=key,
        size=len(body),
        md5_hex="0" * 32,
        mtime=mtime,
        metadata={"a": "1"},
        **fields,  # type: ignore[arg-type]
    )
    return IndexEntry(record=record, member=f"m/{key}", offset=512)


def tombstone(key: str, mtime: float) -> IndexEntry:
    record = ObjectRecord(key=key, size=0, md5_hex=EMPTY_MD5, mtime=mtime, deleted=True)
    return IndexEntry(record=record, member=f"t/{key}", offset=0)


def test_a_batch_is_read_back_by_key(postgres_dsn: str) -> None:
    async def work(catalog: PostgresCatalog) -> None:
        counts = await catalog.put_batch("b", "batch1", "t/batch1.tar", [obj("k", 10.0)])
        assert counts == (1, 0, 0, 0)
        answer = await catalog.get("b", "k")
        entry = answer.visible()
        assert entry is not None
        assert (entry.batch_id, entry.tar_key, entry.member, entry.offset) == (
            "batch1",
            "t/batch1.tar",
            "m/k",
            512,
        )
        assert entry.record.metadata == {"a": "1"}
        assert entry.record.mtime == 10.0
        assert entry.uploaded
        assert (await catalog.get("b", "other")).visible() is None
        assert (await catalog.get("other-bucket", "k")).visible() is None

    run(postgres_dsn, work)


def test_latest_write_wins_in_any_order_with_batch_id_tie_break(postgres_dsn: str) -> None:
    async def work(catalog: PostgresCatalog) -> None:
        await catalog.put_batch("b", "b2", "t2", [obj("k", 20.0, b"new")])
        await catalog.put_batch("b", "b1", "t1", [obj("k", 10.0, b"old")])  # arrives late
        entry = (await catalog.get("b", "k")).visible()
        assert entry is not None and entry.batch_id == "b2"
        # Two daemons stamped alike: the larger batch id wins, whichever came first.
        await catalog.put_batch("b", "z-batch", "tz", [obj("same", 5.0)])
        await catalog.put_batch("b", "a-batch", "ta", [obj("same", 5.0)])
        entry = (await catalog.get("b", "same")).visible()
        assert entry is not None and entry.batch_id == "z-batch"
        # A key written twice in one batch: its later write.
        await catalog.put_batch(
            "b", "b3", "t3", [obj("twice", 30.0, b"1"), obj("twice", 31.0, b"22")]
        )
        entry = (await catalog.get("b", "twice")).visible()
        assert entry is not None and entry.record.size == 2

    run(postgres_dsn, work)


def test_tombstones_hide_older_writes_in_any_order(postgres_dsn: str) -> None:
    async def work(catalog: PostgresCatalog) -> None:
        await catalog.put_batch("b", "b1", "t1", [obj("k", 10.0), obj("keep", 10.0)])
        counts = await catalog.put_batch("b", "b2", "t2", [tombstone("k", 11.0)])
        assert counts == (0, 1, 1, 0)
        answer = await catalog.get("b", "k")
        assert answer.visible() is None and answer.tombstone == 11.0
        # An older write arriving after the delete stays hidden.
        await catalog.put_batch("b", "b0", "t0", [obj("k", 9.0)])
        assert (await catalog.get("b", "k")).visible() is None
        # A newer one is seen.
        await catalog.put_batch("b", "b3", "t3", [obj("k", 12.0)])
        assert (await catalog.get("b", "k")).visible() is not None
        assert await catalog.tombstones("b", ["k", "keep", "none"]) == {"k": 11.0}
        # Written and deleted in one batch: deleted.
        await catalog.put_batch("b", "b4", "t4", [obj("gone", 20.0), tombstone("gone", 21.0)])
        assert (await catalog.get("b", "gone")).visible() is None

    run(postgres_dsn, work)


def test_attribute_updates_apply_to_the_object_they_name(postgres_dsn: str) -> None:
    async def work(catalog: PostgresCatalog) -> None:
        await catalog.put_batch("b", "b1", "t1", [obj("k", 10.0)])
        update = ObjectRecord(
            key="k",
            size=0,
            md5_hex=EMPTY_MD5,
            headers={"x-amz-tagging": "a=b"},
            mtime=11.0,
            update_of=10.0,
        )
        await catalog.put_batch("b", "b2", "t2", [IndexEntry(update, "u/k", 0)])
        entry = (await catalog.get("b", "k")).visible()
        assert entry is not None and entry.record.headers.get("x-amz-tagging") == "a=b"
        await catalog.put_batch("b", "b3", "t3", [obj("k", 12.0)])  # a new object: no tags
        entry = (await catalog.get("b", "k")).visible()
        assert entry is not None and "x-amz-tagging" not in entry.record.headers

    run(postgres_dsn, work)


def test_pages_in_s3_order_under_a_prefix(postgres_dsn: str) -> None:
    keys = ["a", "p/1", "p/2", "p/\u00e9", "p/\U0001f600", "p\xff", "q", "p/3"]

    async def work(catalog: PostgresCatalog) -> None:
        await catalog.put_batch("b", "b1", "t1", [obj(key, 10.0) for key in keys])
        await catalog.put_batch("b", "b2", "t2", [tombstone("p/3", 11.0)])
        page = await catalog.page("b", "p/", "", 10)
        assert [e.record.key for e in page] == ["p/1", "p/2", "p/\u00e9", "p/\U0001f600"]
        page = await catalog.page("b", "p/", "p/1", 2)
        assert [e.record.key for e in page] == ["p/2", "p/\u00e9"]
        everything = await catalog.page("b", "", "", 100)
        expected = sorted(set(keys) - {"p/3"}, key=lambda k: k.encode())
        assert [e.record.key for e in everything] == expected

    run(postgres_dsn, work)


def test_expiry_is_bounded_and_catches_up(postgres_dsn: str) -> None:
    async def work(catalog: PostgresCatalog) -> None:
        await catalog.put_batch("b", "b1", "t1", [obj(f"old{n}", 1.0) for n in range(5)])
        await catalog.put_batch("b", "b2", "t2", [obj("new", 100.0), tombstone("old-t", 1.0)])
        assert await catalog.count() == 5 + 1
        assert await catalog.expire(50.0, limit=2) == 2
        assert await catalog.count() == 4
        while await catalog.expire(50.0, limit=2):
            pass
        assert [e.record.key for e in await catalog.page("b", "", "", 10)] == ["new"]
        assert await catalog.tombstones("b", ["old-t"]) == {}

    run(postgres_dsn, work)


def test_schema_is_versioned_and_migration_is_idempotent(postgres_dsn: str) -> None:
    assert run(postgres_dsn, lambda catalog: catalog.migrate()) == 0
    assert run(postgres_dsn, lambda catalog: catalog.migrate()) == SCHEMA_VERSION
    with psycopg.connect(postgres_dsn, autocommit=True) as connection:
        assert connection.execute("SELECT version FROM s3batchd_schema").fetchall() == [
            (SCHEMA_VERSION,)
        ]
        connection.execute("UPDATE s3batchd_schema SET version = version + 1")
    with pytest.raises(CatalogUnavailable, match="newer than"):
        run(postgres_dsn, lambda catalog: catalog.migrate())


def test_an_unreachable_database_fails_fast_and_is_counted() -> None:
    dsn = f"postgresql://nobody:x@127.0.0.1:{free_ports(1)[0]}/none"

    async def work(catalog: PostgresCatalog) -> None:
        for _ in range(2):
            with pytest.raises(CatalogUnavailable, match="migrate failed"):
                await catalog.get("b", "k")
        assert catalog.errors["migrate"] == 2

    asyncio.run(_with_timeout(dsn, work))


async def _with_timeout(dsn: str, work: Callable[[PostgresCatalog], Awaitable[None]]) -> None:
    catalog = PostgresCatalog(dsn, timeout_s=0.5)
    try:
        async with asyncio.timeout(30):
            await work(catalog)
    finally:
        await catalog.close()


def cli_env(s3_server: LocalS3, dsn: str) -> dict[str, str]:
    return {
        "S3BATCHD_CATALOG__BACKEND": "postgres",
        "S3BATCHD_CATALOG__DSN": dsn,
        "S3BATCHD_UPSTREAM__ENDPOINT_URL": s3_server.endpoint_url,
        "AWS_ACCESS_KEY_ID": s3_server.access_key,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
    }


def test_catalog_migrate_command(postgres_dsn: str, s3_server: LocalS3) -> None:
    env = cli_env(s3_server, postgres_dsn)
    first = CliRunner().invoke(main, ["catalog", "migrate"], env=env)
    assert first.exit_code == 0, first.output
    assert f"version 0 -> {SCHEMA_VERSION}" in first.output
    again = CliRunner().invoke(main, ["catalog", "migrate"], env=env)
    assert f"version {SCHEMA_VERSION} -> {SCHEMA_VERSION}" in again.output
    unreachable = {**env, "S3BATCHD_CATALOG__DSN": f"postgresql://x@127.0.0.1:{free_ports(1)[0]}/x"}
    failed = CliRunner().invoke(main, ["catalog", "migrate"], env=unreachable)
    assert failed.exit_code == 1
    assert "migrate failed" in failed.output


def test_reindex_fills_the_postgres_catalog(
    start_daemon: DaemonFactory, postgres_dsn: str, s3_server: LocalS3, bucket: str
) -> None:
    daemon = start_daemon(catalog={"backend": "postgres", "dsn": postgres_dsn})
    client = daemon.client()
    for n in range(20):
        client.put_object(Bucket=bucket, Key=f"x/{n}", Body=b"%d" % n)
    client.delete_object(Bucket=bucket, Key="x/3")
    daemon.stop()  # drained: uploaded, and the rows written
    with psycopg.connect(postgres_dsn, autocommit=True) as connection:
        assert connection.execute("SELECT count(*) FROM s3batchd_objects").fetchone() == (19,)
        connection.execute("TRUNCATE s3batchd_objects, s3batchd_tombstones, s3batchd_updates")
    result = CliRunner().invoke(
        main, ["reindex", f"s3://{bucket}/"], env=cli_env(s3_server, postgres_dsn)
    )
    assert result.exit_code == 0, result.output
    assert "20 objects in the PostgreSQL catalog" in result.output

    async def work(catalog: PostgresCatalog) -> list[str]:
        return [entry.record.key for entry in await catalog.page(bucket, "x/", "", 100)]

    keys = run(postgres_dsn, work)
    assert sorted(keys) == sorted(f"x/{n}" for n in range(20) if n != 3)


def test_a_role_without_create_uses_a_current_schema(
    postgres_dsn: str, postgres_server: LocalPostgres
) -> None:
    assert run(postgres_dsn, lambda catalog: catalog.migrate()) == 0  # as the owner
    role = f"daemon_{secrets.token_hex(4)}"
    with psycopg.connect(postgres_dsn, autocommit=True) as connection:
        connection.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'daemon-secret'").format(sql.Identifier(role))
        )
        connection.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        connection.execute(
            sql.SQL(
                "GRANT SELECT, INSERT, UPDATE, DELETE ON s3batchd_objects, s3batchd_tombstones, "
                "s3batchd_updates TO {role}; GRANT SELECT ON s3batchd_schema TO {role}"
            ).format(role=sql.Identifier(role))
        )
    database = postgres_dsn.rsplit("/", 1)[1]
    dsn = f"postgresql://{role}:daemon-secret@127.0.0.1:{postgres_server.port}/{database}"

    async def work(catalog: PostgresCatalog) -> None:
        assert await catalog.migrate() == SCHEMA_VERSION
        await catalog.put_batch("b", "b1", "t1", [obj("k", 1.0)])
        assert (await catalog.get("b", "k")).visible() is not None

    run(dsn, work)


def _entry(batch_id: str, mtime: float) -> CatalogEntry:
    record = ObjectRecord(key="k", size=1, md5_hex="0" * 32, mtime=mtime)
    return CatalogEntry("b", batch_id, "t", "m", 512, record, uploaded=True)


def test_a_read_serves_the_later_write_of_either_catalog() -> None:
    own, other = _entry("2-a", 10.0), _entry("1-b", 10.5)
    assert newest(own, None, SharedAnswer(other, None)) is other
    assert newest(other, None, SharedAnswer(own, None)) is other
    # The same stamp: the larger batch id; the same write (an index stamp is milliseconds,
    # the own one exact): the own one, read from the spool while it is there.
    tie = _entry("3-c", 10.0)
    assert newest(own, None, SharedAnswer(tie, None)) is tie
    exact = _entry("2-a", 10.0004)
    assert newest(exact, None, SharedAnswer(_entry("2-a", 10.0), None)) is exact
    # A delete known to either side hides what is not newer than it.
    assert newest(own, None, SharedAnswer(None, 10.0)) is None
    assert newest(None, 11.0, SharedAnswer(other, None)) is None
    assert newest(own, 9.0, SharedAnswer(None, None)) is own
    assert newest(None, None, SharedAnswer(other, 10.5)) is None
    assert newest(None, None, SharedAnswer(None, None)) is None


def test_writes_in_one_millisecond_through_two_daemons_resolve_alike_on_both() -> None:
    """A writes at .1234, B at .1237 (the same millisecond): PostgreSQL holds B's row at the
    index's millisecond; each daemon holds its own write exactly. Both serve B's (the larger
    batch id), and a delete through B in that millisecond hides A's write on A too."""
    a_id, b_id = "20261207T000000Z-aaaa-000001", "20261207T000000Z-bbbb-000001"
    a_own, b_own = _entry(a_id, 1765000000.1234), _entry(b_id, 1765000000.1237)
    in_postgres = _entry(b_id, 1765000000.123)
    via_a = newest(a_own, None, SharedAnswer(in_postgres, None))
    via_b = newest(b_own, None, SharedAnswer(in_postgres, None))
    assert via_a is not None and via_a.batch_id == b_id
    assert via_b is not None and via_b.batch_id == b_id
    assert newest(a_own, None, SharedAnswer(None, 1765000000.123)) is None
    assert SharedAnswer(_entry(a_id, 1765000000.1234), 1765000000.123).visible() is None


def test_a_listing_merges_both_catalogs_by_millisecond_and_batch_id(
    postgres_dsn: str, tmp_path: Path
) -> None:
    """The listing serves the write a read serves: B's (PostgreSQL, milliseconds, larger
    batch id) over A's own exact write in the same millisecond, whose LastModified string is
    the same (the old merge let the own item win that tie)."""
    a_id, b_id = "20261207T000000Z-aaaa-000001", "20261207T000000Z-bbbb-000001"
    own = Catalog(tmp_path / "catalog.sqlite3")
    mine = ObjectRecord(key="k", size=1, md5_hex="0" * 32, mtime=1765000000.1234)
    own.put_many("b", a_id, "tar-a", [IndexEntry(mine, "m/k", 512)], uploaded=True)
    query = ListQuery(
        v2=True,
        prefix="",
        delimiter="",
        max_keys=10,
        after="",
        url_encoded=False,
        token=None,
        start_after="",
        marker="",
    )

    async def work(catalog: PostgresCatalog) -> list[int]:
        await catalog.put_batch("b", b_id, "tar-b", [obj("k", 1765000000.123, b"yy")])
        page = await listing_with_shared(own, catalog, "b", query, "")
        return [item.size for item in page.items]

    assert run(postgres_dsn, work) == [2]  # B's size, not A's 1
    own.close()


class _CountingCatalog(PostgresCatalog):
    """The real catalog, counting the rows its listing queries return."""

    rows_read = 0

    async def page(self, bucket: str, prefix: str, after: str, limit: int) -> list[CatalogEntry]:
        rows = await super().page(bucket, prefix, after, limit)
        self.rows_read += len(rows)
        return rows


def test_a_delimiter_listing_reads_few_rows_per_common_prefix(
    postgres_dsn: str, tmp_path: Path
) -> None:
    """A top-level listing of 40 prefixes of 300 keys each reads a few rows per prefix, not
    a page of 256 after each (the listing resumes after every prefix)."""
    own = Catalog(tmp_path / "catalog.sqlite3")
    entries = [obj(f"{p:03d}/{i:04d}", 10.0) for p in range(40) for i in range(300)]
    own.put_many("lb", "20261207T000000Z-aaaa-000001", "t", [entries[5]], uploaded=True)
    query = ListQuery(
        v2=True,
        prefix="",
        delimiter="/",
        max_keys=1000,
        after="",
        url_encoded=False,
        token=None,
        start_after="",
        marker="",
    )

    async def main() -> tuple[list[str], int]:
        catalog = _CountingCatalog(postgres_dsn, timeout_s=5)
        try:
            await catalog.put_batch("lb", "20261207T000000Z-bbbb-000001", "t", entries)
            page = await listing_with_shared(own, catalog, "lb", query, "")
            return [item.name for item in page.items], catalog.rows_read
        finally:
            await catalog.close()

    names, rows_read = asyncio.run(main())
    assert names == [f"{p:03d}/" for p in range(40)]
    assert rows_read <= 40 * 8, rows_read
    own.close()


def _signal(postmaster: int, number: int) -> None:
    """Send ``number`` to a PostgreSQL server's postmaster and its backends."""
    children = Path(f"/proc/{postmaster}/task/{postmaster}/children").read_text().split()
    for pid in [postmaster, *map(int, children)]:
        os.kill(pid, number)


def test_a_stopped_server_fails_reads_before_it_resumes() -> None:
    """A hung PostgreSQL (SIGSTOP): a read fails (CatalogUnavailable) at its deadline, not
    once psycopg's cancel has drained the connection (14 s), and the next one at once while
    the last failure is recent. The server is continued 12 s after it was stopped: both
    failures come before that, and reads succeed again afterwards."""
    server = start_local_postgres()
    try:

        async def main() -> list[str]:
            catalog = PostgresCatalog(server.dsn(), timeout_s=2)
            events: list[str] = []
            resumed = asyncio.Event()
            try:
                await catalog.get("b", "k")
                _signal(server.pid, signal.SIGSTOP)
                asyncio.get_running_loop().call_later(12, resume, events, resumed)
                for _ in range(2):
                    with pytest.raises(CatalogUnavailable):
                        await catalog.get("b", "k")
                    events.append("failed")
                await resumed.wait()
                for _ in range(50):  # until the breaker lets a call through
                    try:
                        await catalog.get("b", "k")
                    except CatalogUnavailable:
                        await asyncio.sleep(0.5)
                    else:
                        events.append("read")
                        break
            finally:
                _signal(server.pid, signal.SIGCONT)
                await catalog.close()
            return events

        def resume(events: list[str], resumed: asyncio.Event) -> None:
            _signal(server.pid, signal.SIGCONT)
            events.append("resumed")
            resumed.set()

        assert asyncio.run(main()) == ["failed", "failed", "resumed", "read"]
    finally:
        _signal(server.pid, signal.SIGCONT)
        server.remove()


class _Fragments:
    """Stands for a sealed batch's index fragments, which the batcher keeps in memory."""


def test_a_failing_writer_queues_batch_names_not_their_fragments(tmp_path: Path) -> None:
    """While PostgreSQL fails, the batches waiting hold their names only (bucket, batch id,
    tar and index keys): each held its SealedBatch with the index fragments (~1 GB/h at
    1,000 PUT/s). Their entries are read back from the index objects in their turn."""
    dsn = f"postgresql://nobody:x@127.0.0.1:{free_ports(1)[0]}/none"
    read_back: list[str] = []

    def load_index(bucket: str, key: str) -> list[IndexEntry]:
        read_back.append(key)
        return [obj("k", 10.0)]

    def from_memory(fragments: _Fragments) -> list[IndexEntry]:
        return [obj("k", 10.0)]

    async def main() -> tuple[bool, list[PendingBatch]]:
        writer = SharedWriter(
            PostgresCatalog(dsn, timeout_s=0.5), retention_s=3600, pending_path=tmp_path / "p"
        )
        await writer.start(load_index)
        fragments = _Fragments()
        alive = weakref.ref(fragments)
        for number in range(3):
            batch = PendingBatch("b", f"batch{number}", f"t{number}.tar", f"i{number}.json")
            writer.submit(batch, partial(from_memory, fragments))
        del fragments
        for _ in range(100):
            if writer.failing:
                break
            await asyncio.sleep(0.1)
        writer.submit(
            PendingBatch("b", "batch3", "t3.tar", "i3.json"), partial(from_memory, _Fragments())
        )
        gc.collect()
        released = alive() is None
        return released, await writer.close()

    released, left = asyncio.run(main())
    assert released
    assert [batch.batch_id for batch in left] == ["batch0", "batch1", "batch2", "batch3"]


def test_batches_a_retry_cannot_write_are_dropped_not_retried_forever(
    postgres_dsn: str, tmp_path: Path
) -> None:
    """An index that is gone or not an index, and rows PostgreSQL refuses, are dropped with
    an error and counted; the batches behind them are written (they waited forever)."""

    def gone() -> list[IndexEntry]:
        raise CatalogRejected("s3://b/i0.json: NoSuchKey")

    def garbled() -> list[IndexEntry]:
        return entries_from_index(parse_index(b"{}", where="s3://b/i1.json"))

    def refused() -> list[IndexEntry]:
        return [obj("nul", 10.0, content_type="text/\x00")]

    def good() -> list[IndexEntry]:
        return [obj("good", 10.0)]

    def unused(bucket: str, key: str) -> list[IndexEntry]:
        raise AssertionError(key)

    async def main() -> tuple[list[PendingBatch], int, bool]:
        catalog = PostgresCatalog(postgres_dsn, timeout_s=2)
        writer = SharedWriter(catalog, retention_s=3600, pending_path=tmp_path / "p")
        await writer.start(unused)
        for number, load in enumerate((gone, garbled, refused, good)):
            batch = PendingBatch("b", f"batch{number}", f"t{number}.tar", f"i{number}.json")
            writer.submit(batch, load)
        left = await writer.close(timeout=30)
        reader = PostgresCatalog(postgres_dsn, timeout_s=2)
        try:
            found = (await reader.get("b", "good")).visible() is not None
        finally:
            await reader.close()
        return left, writer.dropped_batches, found

    left, dropped, found = asyncio.run(main())
    assert left == []
    assert dropped == 3
    assert found


def test_a_prefix_page_scans_only_its_range_with_a_generic_plan(postgres_dsn: str) -> None:
    """psycopg prepares a statement after 5 runs and PostgreSQL then may use a generic plan:
    the prefix listing's upper bound must be in its index condition, not a filter (with
    ``(high IS NULL OR key < high)`` the scan read every row after the prefix)."""
    run(postgres_dsn, lambda catalog: catalog.migrate())
    statement = postgres_module._PAGE_UNDER
    for name, number in (("bucket", 1), ("after", 2), ("low", 3), ("high", 4), ("limit", 5)):
        statement = statement.replace(f"%({name})s", f"${number}")
    with psycopg.connect(postgres_dsn, autocommit=True) as connection:
        connection.execute(f"PREPARE page (text, bytea, bytea, bytea, int) AS {statement}")
        connection.execute("SET plan_cache_mode = force_generic_plan")
        plan = "\n".join(
            row[0]
            for row in connection.execute(
                "EXPLAIN EXECUTE page('b', ''::bytea, 'a/'::bytea, 'a0'::bytea, 256)"
            )
        )
    conditions = [line for line in plan.splitlines() if "Index Cond" in line]
    assert any("key < $4" in line for line in conditions), plan


def test_a_corrupt_pending_list_is_moved_aside_and_the_writer_starts(tmp_path: Path) -> None:
    """A torn ``postgres-pending.json`` crash-looped the start; it is moved aside, logged."""
    for number, text in enumerate(("{not json", '[{"bucket": "b"}]', "7")):
        path = tmp_path / f"pending-{number}.json"
        path.write_text(text)
        assert load_pending(path) == []
        assert not path.exists()
        assert path.with_name(path.name + ".corrupt").read_text() == text


def test_the_get_command_reads_the_postgres_catalog(
    start_daemon: DaemonFactory, postgres_dsn: str, s3_server: LocalS3, bucket: str
) -> None:
    """``s3batchd get`` on a host whose own catalog never saw the key (another daemon wrote
    it) finds it in PostgreSQL; it read the SQLite catalog only."""
    daemon = start_daemon(catalog={"backend": "postgres", "dsn": postgres_dsn})
    daemon.client().put_object(Bucket=bucket, Key="elsewhere/k", Body=b"from another host")
    daemon.stop()  # drained: uploaded, and the rows written
    result = CliRunner().invoke(
        main, ["get", f"s3://{bucket}/elsewhere/k"], env=cli_env(s3_server, postgres_dsn)
    )
    assert result.exit_code == 0, result.output
    assert result.stdout_bytes == b"from another host"
