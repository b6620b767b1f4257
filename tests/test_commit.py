"""Group commit on the file's own thread: shared syncs, failures, cancellation, the thread's end."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import anyio
import pytest

from s3batchd.commit import GroupCommitter
from s3batchd.errors import SpoolFailedError

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def commit_threads() -> Callable[[], set[threading.Thread]]:
    """Commit threads started since the test began (other tests' daemons may have theirs)."""
    before = set(threading.enumerate())
    return lambda: {t for t in threading.enumerate() if t.name == "s3batchd-commit"} - before


async def ended(threads: Callable[[], set[threading.Thread]]) -> None:
    """Every commit thread the test started ends by itself (within 5 s)."""
    for thread in threads():
        await anyio.to_thread.run_sync(thread.join, 5)
    assert not threads()


class Disk:
    """A file whose sync takes ``delay`` seconds and records the position it covered."""

    def __init__(self, delay: float = 0.01) -> None:
        self.delay = delay
        self.covered: list[int] = []
        self.committer = GroupCommitter(self.sync)
        self.fail = False

    def sync(self) -> None:
        written = self.committer.written
        time.sleep(self.delay)
        if self.fail:
            raise SpoolFailedError("fdatasync failed (injected)")
        self.covered.append(written)

    def write(self, size: int) -> int:
        self.committer.written += size
        return self.committer.written


async def test_writers_wait_for_a_sync_that_covers_them_and_share_syncs(
    commit_threads: Callable[[], set[threading.Thread]],
) -> None:
    disk = Disk()
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
    disk.committer.close()
    await ended(commit_threads)


async def test_nothing_to_wait_for_starts_no_sync(
    commit_threads: Callable[[], set[threading.Thread]],
) -> None:
    disk = Disk()
    await disk.committer.wait_durable(0)
    assert disk.covered == []
    assert not commit_threads()


async def test_a_failed_sync_fails_every_waiter_now_and_later(
    commit_threads: Callable[[], set[threading.Thread]],
) -> None:
    disk = Disk(delay=0.05)
    disk.fail = True
    positions = [disk.write(10) for _ in range(5)]
    results = await asyncio.gather(
        *(disk.committer.wait_durable(p) for p in positions), return_exceptions=True
    )
    assert all(isinstance(r, SpoolFailedError) for r in results), results
    assert disk.committer.durable == 0
    with pytest.raises(SpoolFailedError):
        await disk.committer.wait_durable(disk.write(10))
    await ended(commit_threads)  # a failed file's thread ends by itself


async def test_a_cancelled_waiter_leaves_the_sync_to_the_others() -> None:
    disk = Disk(delay=0.1)
    first = asyncio.ensure_future(disk.committer.wait_durable(disk.write(10)))
    second = asyncio.ensure_future(disk.committer.wait_durable(disk.write(10)))
    await anyio.sleep(0.02)
    first.cancel()
    with anyio.fail_after(5):
        await second
    assert first.cancelled()
    assert disk.committer.durable == 20


async def test_a_wait_after_close_still_gets_its_sync(
    commit_threads: Callable[[], set[threading.Thread]],
) -> None:
    disk = Disk()
    await disk.committer.wait_durable(disk.write(10))
    disk.committer.close()
    await ended(commit_threads)
    with anyio.fail_after(5):
        await disk.committer.wait_durable(disk.write(10))  # e.g. the end marker of a seal
    assert disk.committer.durable == 20
    await ended(commit_threads)
