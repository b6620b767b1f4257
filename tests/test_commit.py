"""Group commit on a commit thread: shared syncs, runs of syncs, failures, cancellation."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import anyio
import pytest

from s3batchd.errors import SpoolFailedError
from s3batchd.spool.commit import GroupCommitter

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def threads() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(2, "s3batchd-commit")
    yield pool
    pool.shutdown()


class Disk:
    """A file whose sync takes ``delay`` seconds and records the position it covered and the
    thread it ran on."""

    def __init__(self, threads: ThreadPoolExecutor, delay: float = 0.01) -> None:
        self.delay = delay
        self.covered: list[int] = []
        self.sync_threads: set[int] = set()
        self.committer = GroupCommitter(self.sync, threads)
        self.fail = False

    def sync(self) -> None:
        written = self.committer.written
        self.sync_threads.add(threading.get_ident())
        time.sleep(self.delay)
        if self.fail:
            raise SpoolFailedError("fdatasync failed (injected)")
        self.covered.append(written)

    def write(self, size: int) -> int:
        self.committer.written += size
        return self.committer.written


async def test_writers_wait_for_a_sync_that_covers_them_and_share_syncs(
    threads: ThreadPoolExecutor,
) -> None:
    disk = Disk(threads)
    returned: dict[int, int] = {}

    async def writer(n: int) -> None:
        await anyio.sleep(n / 1000)  # writers keep arriving while syncs run
        position = disk.write(100)
        await disk.committer.wait_durable(position)
        returned[position] = disk.committer.durable

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for n in range(100):
                tg.start_soon(writer, n)
    assert len(returned) == 100
    # Each writer returned only when a finished sync covered its position.
    assert all(durable >= position for position, durable in returned.items())
    assert disk.committer.durable == 100 * 100
    assert 2 <= len(disk.covered) <= 30, disk.covered  # shared, not one per writer
    assert disk.committer.syncs == len(disk.covered)


async def test_nothing_to_wait_for_starts_no_sync(threads: ThreadPoolExecutor) -> None:
    disk = Disk(threads)
    await disk.committer.wait_durable(0)
    assert disk.covered == []


async def test_runs_of_syncs_reuse_the_commit_threads(threads: ThreadPoolExecutor) -> None:
    # One run of syncs per wait here (each ends before the next write): the pool's threads
    # serve them all, no thread is started per file or per run.
    disks = [Disk(threads, delay=0) for _ in range(20)]
    with anyio.fail_after(10):
        for disk in disks:
            for _ in range(3):
                await disk.committer.wait_durable(disk.write(10))
    assert all(disk.committer.durable == 30 for disk in disks)
    assert len(set().union(*(disk.sync_threads for disk in disks))) <= 2


async def test_a_failed_sync_fails_every_waiter_now_and_later(threads: ThreadPoolExecutor) -> None:
    disk = Disk(threads, delay=0.05)
    disk.fail = True
    positions = [disk.write(10) for _ in range(5)]
    results = await asyncio.gather(
        *(disk.committer.wait_durable(p) for p in positions), return_exceptions=True
    )
    assert all(isinstance(r, SpoolFailedError) for r in results), results
    assert disk.committer.durable == 0
    with pytest.raises(SpoolFailedError):
        await disk.committer.wait_durable(disk.write(10))


async def test_a_cancelled_waiter_leaves_the_sync_to_the_others(
    threads: ThreadPoolExecutor,
) -> None:
    disk = Disk(threads, delay=0.1)
    first = asyncio.ensure_future(disk.committer.wait_durable(disk.write(10)))
    second = asyncio.ensure_future(disk.committer.wait_durable(disk.write(10)))
    await anyio.sleep(0.02)
    first.cancel()
    with anyio.fail_after(5):
        await second
    assert first.cancelled()
    assert disk.committer.durable == 20


async def test_a_wait_after_a_run_ended_starts_another(threads: ThreadPoolExecutor) -> None:
    disk = Disk(threads)
    await disk.committer.wait_durable(disk.write(10))
    await anyio.sleep(0.05)  # the run of syncs has returned its thread to the pool
    with anyio.fail_after(5):
        await disk.committer.wait_durable(disk.write(10))  # e.g. the end marker of a seal
    assert disk.committer.durable == 20
    assert disk.covered == [10, 20]
