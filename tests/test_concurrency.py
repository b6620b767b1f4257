"""The one thread-offload boundary (concurrency.py): named, bounded pools, shut down together."""

from __future__ import annotations

import asyncio
import threading

import pytest

from s3batchd.concurrency import DEFAULTS, Pool, Threads, run_sync


def _thread_name() -> str:
    return threading.current_thread().name


def test_each_pool_runs_on_threads_named_after_it() -> None:
    threads = Threads()

    async def scenario() -> list[str]:
        return [await threads.run(pool, _thread_name) for pool in (Pool.COMMIT, Pool.READ)]

    try:
        names = asyncio.run(scenario())
    finally:
        threads.close()
    assert [name.rpartition("_")[0] for name in names] == ["s3batchd-commit", "s3batchd-read"]


def test_a_pool_is_bounded_by_its_size() -> None:
    threads = Threads({Pool.UPLOAD: 2})
    running = 0
    most = 0
    lock = threading.Lock()
    release = threading.Event()
    entered = threading.Semaphore(0)

    def work() -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        entered.release()
        release.wait(5)
        with lock:
            running -= 1

    async def scenario() -> None:
        jobs = [asyncio.ensure_future(threads.run(Pool.UPLOAD, work)) for _ in range(5)]
        for _ in range(2):  # both threads busy: the other three jobs queue
            assert await asyncio.to_thread(entered.acquire, timeout=10)
        release.set()
        await asyncio.gather(*jobs)

    try:
        asyncio.run(scenario())
    finally:
        threads.close()
    assert most == 2


def test_installed_spool_pool_is_where_run_sync_goes() -> None:
    threads = Threads()

    async def scenario() -> str:
        threads.install(asyncio.get_running_loop())
        return await run_sync(_thread_name)

    try:
        name = asyncio.run(scenario())
    finally:
        threads.close()
    assert name.startswith("s3batchd-spool_")


def test_nothing_runs_after_close() -> None:
    threads = Threads()
    threads.close()
    with pytest.raises(RuntimeError, match="shut down"):
        threads.executor(Pool.CATALOG)
    threads.close()  # idempotent


def test_every_pool_has_a_size_and_a_shutdown_rule() -> None:
    assert set(DEFAULTS) == set(Pool)
    assert all(spec.threads >= 1 for spec in DEFAULTS.values())
    assert DEFAULTS[Pool.CATALOG].threads == DEFAULTS[Pool.CATALOG_WRITER].threads == 1
