"""The catalog shared by several processes (``server.workers``, ``s3batchd reindex``)."""

from __future__ import annotations

import multiprocessing
import sqlite3
from pathlib import Path
from threading import Barrier

import pytest

from s3batchd.catalog import Catalog
from s3batchd.index import IndexEntry
from s3batchd.records import EMPTY_MD5, ObjectRecord


def _open_and_write(path: str, key: str, start: Barrier) -> None:
    start.wait(30)
    catalog = Catalog(Path(path), write_through=True)
    record = ObjectRecord(key=key, size=0, md5_hex=EMPTY_MD5, mtime=1.0)
    catalog.put("b", "batch", "tar", IndexEntry(record, key, 512), uploaded=False)
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
    catalog = Catalog(path, write_through=True)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # e.g. s3batchd reindex writing a large batch
    record = ObjectRecord(key="k", size=0, md5_hex=EMPTY_MD5, mtime=1.0)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        catalog.put("b", "batch", "tar", IndexEntry(record, "k", 512), uploaded=False)
    assert catalog.pending == 1
    other.execute("COMMIT")
    other.close()
    catalog.flush()
    assert catalog.pending == 0
    found = catalog.get("b", "k")
    assert found is not None and found.offset == 512
    catalog.close()
