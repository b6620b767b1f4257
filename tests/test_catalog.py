"""The catalog: shared by several processes (``server.workers``, ``s3batchd reindex``), and
the listings read from it."""

from __future__ import annotations

import asyncio
import multiprocessing
import random
import sqlite3
import threading
from pathlib import Path
from threading import Barrier

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s3batchd.catalog.store import CORRUPT_KEPT, Catalog, CatalogWrite
from s3batchd.catalog.writer import CatalogWriter
from s3batchd.concurrency import Threads
from s3batchd.errors import DiskFull
from s3batchd.handlers.listing import catalog_page, local_scan
from s3batchd.handlers.listpage import ListQuery, common_prefix
from s3batchd.index import IndexEntry
from s3batchd.records import EMPTY_MD5, ObjectRecord

THREADS = Threads()
"""Thread pools shared by this module's tests (concurrency.py)."""


def _open_and_write(path: str, key: str, start: Barrier) -> None:
    start.wait(30)
    catalog = Catalog(Path(path))
    record = ObjectRecord(key=key, size=0, md5_hex=EMPTY_MD5, mtime=1.0)
    catalog.put_all([CatalogWrite("b", "batch", "tar", IndexEntry(record, key, 512), False)])
    catalog.close()


def test_processes_creating_the_catalog_at_once_all_start(tmp_path: Path) -> None:
    # Workers start together; the first opening of a new database switches it to WAL, which
    # SQLite refuses (without waiting) to a second process doing the same.
    context = multiprocessing.get_context("fork")
    for round_number in range(25):
        path = tmp_path / str(round_number) / "catalog.sqlite3"
        path.parent.mkdir()
        start = context.Barrier(4)
        processes = [
            context.Process(target=_open_and_write, args=(str(path), f"k{worker}", start))
            for worker in range(4)
        ]
        for process in processes:
            process.start()
        for process in processes:
            process.join(30)
        assert [p.exitcode for p in processes] == [0, 0, 0, 0], f"round {round_number}"
        catalog = Catalog(path)
        assert [e.record.key for e in catalog.iter_keys("b", "", "")] == ["k0", "k1", "k2", "k3"]
        catalog.close()


def test_objects_stay_queued_while_another_process_holds_the_write_lock(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite3"
    catalog = Catalog(path)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # e.g. s3batchd reindex writing a large batch
    record = ObjectRecord(key="k", size=0, md5_hex=EMPTY_MD5, mtime=1.0)
    catalog.put("b", "batch", "tar", IndexEntry(record, "k", 512), uploaded=False)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        catalog.flush()
    assert catalog.pending == 1
    other.execute("COMMIT")
    other.close()
    catalog.flush()
    assert catalog.pending == 0
    found = catalog.get("b", "k")
    assert found is not None and found.offset == 512
    catalog.close()


def test_a_full_disk_keeps_objects_queued_and_says_so(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path / "catalog.sqlite3")
    pages = catalog._db.execute("PRAGMA page_count").fetchone()[0]
    catalog._db.execute(f"PRAGMA max_page_count = {pages}")  # the disk is full
    for number in range(200):
        record = ObjectRecord(key=f"k{number:03}" * 20, size=0, md5_hex=EMPTY_MD5, mtime=1.0)
        catalog.put("b", "batch", "tar", IndexEntry(record, "k", 512), uploaded=False)
    with pytest.raises(DiskFull, match="database or disk is full"):
        catalog.flush()
    assert catalog.pending == 200
    catalog._db.execute(f"PRAGMA max_page_count = {pages * 100}")  # room again
    catalog.flush()
    assert catalog.pending == 0
    assert catalog.get("b", "k000" * 20) is not None
    catalog.close()


def _write(key: str, mtime: float = 1.0) -> CatalogWrite:
    record = ObjectRecord(key=key, size=0, md5_hex=EMPTY_MD5, mtime=mtime)
    return CatalogWrite("b", "batch", "tar", IndexEntry(record, key, 512), False)


def test_writer_commits_concurrent_puts_in_groups_visible_to_other_processes(
    tmp_path: Path,
) -> None:
    path = tmp_path / "catalog.sqlite3"

    async def main() -> int:
        writer = CatalogWriter(Catalog(path), threads=THREADS)
        reader = Catalog(path)  # another worker's connection
        seen: list[bool] = []

        async def put(key: str) -> None:
            await writer.put(_write(key))
            seen.append(reader.get("b", key) is not None)  # committed before the PUT returns

        await asyncio.gather(*(put(f"k{i:03d}") for i in range(200)))
        tombstone = ObjectRecord(key="k000", size=0, md5_hex=EMPTY_MD5, mtime=2.0, deleted=True)
        await writer.put(CatalogWrite("b", "batch", "tar", IndexEntry(tombstone, "k000", 0), False))
        assert reader.get("b", "k000") is None
        await writer.close()
        assert seen == [True] * 200
        reader.close()
        return writer.transactions

    transactions = asyncio.run(main())
    assert 2 <= transactions < 100


def test_writer_retries_what_failed_while_another_process_held_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite3"

    async def main() -> None:
        writer = CatalogWriter(Catalog(path, busy_timeout_s=0.1), threads=THREADS)
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        await writer.put(_write("k"))  # answered: the object is stored, the catalog a cache
        assert writer.failed == 1
        other.execute("COMMIT")
        other.close()
        reader = Catalog(path)
        for _ in range(100):  # the retry comes by itself (FLUSH_DELAY_S later)
            if reader.get("b", "k") is not None:
                break
            await asyncio.sleep(0.02)
        assert reader.get("b", "k") is not None
        assert writer.failed == 0
        await writer.close()
        reader.close()

    asyncio.run(main())


@settings(max_examples=60, deadline=None)
@given(
    keys=st.sets(st.text(alphabet="ab/\U0010ffff", min_size=1, max_size=6), max_size=25),
    prefix=st.sampled_from(["", "a", "a/", "b/"]),
    after=st.text(alphabet="ab/", max_size=4),
    max_keys=st.integers(min_value=1, max_value=5),
)
def test_catalog_listing_rolls_up_prefixes_like_a_full_scan(
    tmp_path_factory: pytest.TempPathFactory,
    keys: set[str],
    prefix: str,
    after: str,
    max_keys: int,
) -> None:
    catalog = Catalog(tmp_path_factory.mktemp("list") / "catalog.sqlite3")
    for key in keys:
        catalog.put_all([_write(key)])
    query = ListQuery(
        v2=True,
        prefix=prefix,
        delimiter="/",
        max_keys=max_keys,
        after=after,
        url_encoded=False,
        token=None,
        start_after=after,
        marker="",
    )
    # The model: every key in S3 (UTF-8) order, each rolled up, duplicates and the
    # continuation point dropped.
    expected: list[str] = []
    for key in sorted(keys, key=lambda k: k.encode()):
        if not key.startswith(prefix) or key.encode() <= after.encode():
            continue
        name = common_prefix(key, prefix, "/") or key
        if name != after and name not in expected:
            expected.append(name)
    page = asyncio.run(catalog_page(local_scan(catalog, "b", prefix), query))
    assert [item.name for item in page.items] == expected[: max_keys + 1]
    assert page.truncated == (len(expected) > max_keys)
    catalog.close()


def _queue(catalog: Catalog, key: str, mtime: float = 1.0) -> None:
    record = ObjectRecord(key=key, size=1, md5_hex=EMPTY_MD5, mtime=mtime)
    catalog.put("b", "batch", "tar", IndexEntry(record, key, 512), uploaded=False)


def test_the_event_loop_flush_never_waits_for_the_catalog_thread(tmp_path: Path) -> None:
    """try_flush (the loop's timer) does nothing while the catalog's thread holds the
    connection (marking an uploaded batch, a checkpoint), instead of waiting for it; a read
    waits, and then sees every queued row."""
    catalog = Catalog(tmp_path / "catalog.sqlite3", auto_checkpoint=False)
    _queue(catalog, "first")
    holding, release = threading.Event(), threading.Event()

    def thread_work() -> None:
        with catalog._db_lock:  # as mark_uploaded or checkpoint would
            holding.set()
            release.wait(10)

    worker = threading.Thread(target=thread_work)
    worker.start()
    assert holding.wait(10)
    assert catalog.try_flush() is False
    assert catalog.pending == 1  # still queued, nothing lost
    release.set()
    worker.join(10)
    assert catalog.try_flush() is True
    assert catalog.pending == 0
    _queue(catalog, "second")
    assert [e.record.key for e in catalog.iter_keys("b", "", "")] == ["first", "second"]
    catalog.checkpoint()
    catalog.close()
    reopened = Catalog(tmp_path / "catalog.sqlite3")
    assert reopened.count() == 2
    reopened.close()


def test_listing_reads_in_pages_sees_each_key_once_while_rows_are_written(
    tmp_path: Path,
) -> None:
    """iter_keys queries a page at a time (no cursor open on the shared connection between
    pages); rows written between pages, before or after the position reached, neither repeat
    nor hide the keys listed."""
    catalog = Catalog(tmp_path / "catalog.sqlite3")
    keys = [f"k{number:04d}" for number in range(700)]
    for key in keys:
        _queue(catalog, key)
    seen = []
    for entry in catalog.iter_keys("b", "k", ""):
        seen.append(entry.record.key)
        if len(seen) == 300:
            _queue(catalog, "k0000", mtime=2.0)  # rewritten behind the position: not again
            _queue(catalog, "k9999")  # new, ahead: listed
    assert seen == [*keys, "k9999"]
    catalog.close()


def _filled_catalog(path: Path, rows: int) -> None:
    catalog = Catalog(path)
    for number in range(rows):
        _queue(catalog, f"key-{number:06d}-" + "x" * 200)
    catalog.flush()
    catalog.checkpoint()
    catalog.close()


def _corrupt_copies(path: Path) -> list[Path]:
    return sorted(path.parent.glob(path.name + ".corrupt-*[0-9]Z"))


@pytest.mark.parametrize("damage", ["random-bytes", "truncated", "last-page-cut"])
def test_a_corrupt_catalog_is_moved_aside_and_a_new_one_created(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "catalog.sqlite3"
    if damage == "random-bytes":
        original = random.Random(7).randbytes(64 * 1024)
        path.write_bytes(original)
    else:
        _filled_catalog(path, 2000)
        (tmp_path / "catalog.sqlite3-wal").unlink(missing_ok=True)
        (tmp_path / "catalog.sqlite3-shm").unlink(missing_ok=True)
        data = path.read_bytes()
        # Half: SQLite notices at set-up; one page short: only a read of that page would.
        original = data[: len(data) // 2] if damage == "truncated" else data[:-4096]
        path.write_bytes(original)

    catalog = Catalog(path)

    assert catalog.count() == 0
    _queue(catalog, "after")
    assert [e.record.key for e in catalog.iter_keys("b", "", "")] == ["after"]
    catalog.close()
    [aside] = _corrupt_copies(path)
    assert aside.read_bytes() == original
    assert any(r.levelname == "WARNING" and "moved aside" in r.getMessage() for r in caplog.records)
    reopened = Catalog(path)  # the new one is healthy: nothing more is moved aside
    assert reopened.count() == 1
    reopened.close()
    assert len(_corrupt_copies(path)) == 1


def test_only_the_last_few_corrupt_catalogs_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite3"
    for round_number in range(CORRUPT_KEPT + 3):
        path.write_bytes(b"not a database %d " % round_number * 500)
        Catalog(path).close()
    kept = _corrupt_copies(path)
    assert len(kept) == CORRUPT_KEPT
    assert kept[-1].read_bytes().startswith(b"not a database %d " % (CORRUPT_KEPT + 2))


def test_replace_batch_keeps_exactly_the_recovered_members(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path / "catalog.sqlite3")

    def entry(key: str, offset: int, mtime: float) -> IndexEntry:
        return IndexEntry(
            ObjectRecord(key=key, size=1, md5_hex=EMPTY_MD5, mtime=mtime), key, offset
        )

    older_a, newer_a, b = entry("a", 512, 1.0), entry("a", 2048, 2.0), entry("b", 4096, 3.0)
    catalog.put_many("bk", "batch", "tar", [older_a, newer_a, b], uploaded=False)
    catalog.put_many("bk", "other", "tar2", [entry("c", 512, 1.0)], uploaded=False)

    # Recovery kept only the first member: "a" falls back to it, "b" is gone.
    assert catalog.replace_batch("bk", "batch", "tar", [older_a]) == ["b"]

    found = catalog.get("bk", "a")
    assert found is not None and found.offset == 512
    assert catalog.get("bk", "b") is None
    assert catalog.get("bk", "c") is not None  # another batch's rows stay
    assert catalog.replace_batch("bk", "other", "", []) == ["c"]  # quarantined
    assert catalog.count() == 1
    catalog.close()


def test_writes_stamped_alike_are_ordered_by_batch_id_in_any_order_of_arrival(
    tmp_path: Path,
) -> None:
    """Two daemons' writes of a key with the same stamp: the larger batch id wins, whichever
    is recorded first (a rebuild gives the same answer as the live catalog)."""
    for order in ((0, 1), (1, 0)):
        catalog = Catalog(tmp_path / f"catalog-{order[0]}.sqlite3")
        writes = [
            ("20261207T000000000Z-hosta-1111-000001", 512),
            ("20261207T000000000Z-hostb-2222-000001", 1024),
        ]
        for index in order:
            batch_id, offset = writes[index]
            record = ObjectRecord(key="k", size=1, md5_hex=EMPTY_MD5, mtime=5.0)
            catalog.put_many(
                "b", batch_id, "tar", [IndexEntry(record, "k", offset)], uploaded=False
            )
        found = catalog.get("b", "k")
        assert found is not None and found.batch_id == writes[1][0], order
        catalog.close()


def test_a_compacted_index_moves_the_same_write_and_never_outranks_a_newer_one(
    tmp_path: Path,
) -> None:
    from s3batchd.index import parse_index, render_index

    old, other = (
        "20270115T000000000Z-host-0123abcd-000001",
        "20270115T000000500Z-host-0123abcd-000009",
    )
    new = "20270116T000000000Z-compactor-0123abcd-000001"
    catalog = Catalog(tmp_path / "catalog.sqlite3")
    # The daemon's own rows carry exact stamps; the index gives them to the millisecond.
    kept = ObjectRecord(key="kept", size=3, md5_hex="a" * 32, mtime=1_800_000_000.123456)
    newer = ObjectRecord(key="newer", size=3, md5_hex="b" * 32, mtime=1_800_000_000.5)
    catalog.put_many("b", old, "old.tar", [IndexEntry(kept, "kept", 1536)], uploaded=True)
    catalog.put_many("b", old, "old.tar", [IndexEntry(newer, "newer", 3584)], uploaded=True)
    rewritten = ObjectRecord(key="newer", size=3, md5_hex="b" * 32, mtime=1_800_000_000.5)
    later = ObjectRecord(key="newer", size=4, md5_hex="c" * 32, mtime=1_800_000_001.0)
    catalog.put_many("b", other, "other.tar", [IndexEntry(later, "newer", 512)], uploaded=True)
    moved = ObjectRecord(key="kept", size=3, md5_hex="a" * 32, mtime=1_800_000_000.123)
    document = parse_index(
        render_index(
            bucket="b",
            batch_id=new,
            tar_key="new.tar",
            tar_size=8192,
            entries=[IndexEntry(moved, "kept", 1536), IndexEntry(rewritten, "newer", 3584)],
            replaces=[old],
        )
    )
    catalog.put_index("b", document)
    entry = catalog.get("b", "kept")
    assert entry is not None
    assert (entry.batch_id, entry.tar_key, entry.offset) == (new, "new.tar", 1536)
    assert entry.record.mtime == kept.mtime  # the same write: its stamp stays
    assert entry.record.etag == kept.etag
    assert entry.uploaded
    # The older write of "newer" the compactor rewrote does not outrank the later one.
    entry = catalog.get("b", "newer")
    assert entry is not None
    assert (entry.batch_id, entry.record.md5_hex) == (other, "c" * 32)
    # The old index read again (reindex in listing order, a follow loop late) moves nothing back.
    old_document = parse_index(
        render_index(
            bucket="b",
            batch_id=old,
            tar_key="old.tar",
            tar_size=8192,
            entries=[IndexEntry(moved, "kept", 1536)],
        )
    )
    catalog.put_index("b", old_document)
    entry = catalog.get("b", "kept")
    assert entry is not None
    assert entry.batch_id == new
    catalog.close()


def test_own_exact_stamps_and_learned_index_stamps_compare_to_the_millisecond(
    tmp_path: Path,
) -> None:
    """A daemon's own write is stamped exactly, one it learns from another daemon's index to
    the millisecond: in one millisecond the larger batch id wins and a delete hides the
    object, in any order of arrival, as PostgreSQL and every other daemon decide."""
    own_id, learned_id = "20261207T000000Z-aaaa-000001", "20261207T000000Z-bbbb-000001"
    for number, order in enumerate(((0, 1), (1, 0))):
        catalog = Catalog(tmp_path / f"catalog-{number}.sqlite3")
        writes = [(own_id, 1765000000.1234, False), (learned_id, 1765000000.123, True)]
        for index in order:
            batch_id, mtime, uploaded = writes[index]
            record = ObjectRecord(key="k", size=1, md5_hex=EMPTY_MD5, mtime=mtime)
            catalog.put_many(
                "b", batch_id, "tar", [IndexEntry(record, "k", 512)], uploaded=uploaded
            )
        found = catalog.get("b", "k")
        assert found is not None and found.batch_id == learned_id, order
        catalog.close()
    for number, delete_first in enumerate((True, False)):
        catalog = Catalog(tmp_path / f"deleted-{number}.sqlite3")
        own = ObjectRecord(key="k", size=1, md5_hex=EMPTY_MD5, mtime=1765000000.1237)
        gone = ObjectRecord(key="k", size=0, md5_hex=EMPTY_MD5, mtime=1765000000.123, deleted=True)
        steps = [(learned_id, gone, True), (own_id, own, False)]
        for batch_id, record, uploaded in steps if delete_first else steps[::-1]:
            catalog.put_many(
                "b", batch_id, "tar", [IndexEntry(record, "k", 512)], uploaded=uploaded
            )
        assert catalog.get("b", "k") is None, delete_first
        catalog.close()
