"""Group commit: many waiting requests share one fdatasync.

A request that appended up to position ``p`` waits until a sync that started after its write
has finished. While one fdatasync runs, new writers queue up; the next fdatasync covers them
all. Acknowledging on a timer would not be durable (Vector's 500 ms window is the warning).

A file's syncs run on one of the commit threads (``Pool.COMMIT``, concurrency.py), one after the
other for as long as anyone waits: when a sync ends and writers are waiting, the next one starts
at once on the same thread and covers everything written by then; the event loop only hears
that a sync has ended and wakes the writers it covered. Started from the loop one by one on the
shared thread pool instead, every sync took two hand-offs (loop to pool thread, back to the loop
before the next could start), each waiting for a core under load: at about 1,900 PUT/s on two
cores, p50 of PUTs with durability ``fsync`` was 2.4-2.6 ms that way and 1.7-1.8 ms this way
(bench/README.md). The threads are a pool that lives as long as the process, so no thread is
started per batch. This is the one blocking call that does not go through
``Threads.run``: it is handed the pool's executor.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import threading
from collections.abc import Callable
from concurrent.futures import Executor


class GroupCommitter:
    """Tracks the written and durable positions of one file, and syncs it on a commit thread
    while writers wait."""

    def __init__(self, sync: Callable[[], None], threads: Executor) -> None:
        self._sync = sync
        self._threads = threads
        self.written = 0
        """Highest position written so far (set by the writer after each append; the commit
        thread reads it when a sync starts)."""
        self.durable = 0
        """Highest position known to be on stable storage (set on the event loop)."""
        self.syncs = 0
        """Syncs that ended well."""
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        """(position, arrival, future) of the writers waiting, lowest position first."""
        self._arrivals = itertools.count()
        self._error: Exception | None = None
        """Why a sync failed: every later wait fails with it (fsyncgate: the file is done)."""
        self._state = threading.Lock()
        self._wanted = 0
        """Highest position a writer waits for (under ``_state``)."""
        self._running = False
        """Whether a run of syncs is queued or on a commit thread (under ``_state``)."""
        self._covered = 0
        """Position the last finished sync covered (only the run of syncs touches it)."""

    async def wait_durable(self, position: int) -> None:
        """Return once everything up to ``position`` is durable; raise if a sync failed.
        Cancelling one waiter (client gone) leaves the others and the syncs alone."""
        future = self.durable_future(position)
        if future is not None:
            await future

    def durable_future(self, position: int) -> asyncio.Future[None] | None:
        """The future resolved once everything up to ``position`` is durable (its exception:
        a sync failed), a sync started for it if none runs; None when it already is.
        Synchronous, so a writer that appended without awaiting awaits exactly this one
        future (cancelling it, client gone, leaves the others and the syncs alone).

        Raises:
            SpoolFailedError: an earlier sync of the file failed.
        """
        if self.durable >= position:
            return None
        if self._error is not None:
            raise self._error
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        heapq.heappush(self._waiters, (position, next(self._arrivals), future))
        with self._state:
            self._wanted = max(self._wanted, position)
            start, self._running = not self._running, True
        if start:
            try:
                self._threads.submit(self._run, loop)
            except RuntimeError:  # the batcher has shut its commit threads down
                self._stop()
                raise
        return future

    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        """On a commit thread: sync while a writer waits for more than the last sync covered."""
        while True:
            with self._state:
                if self._wanted <= self._covered:
                    self._running = False
                    return
                wanted = self._wanted
            # Everything written before the sync starts is covered by it.
            target = max(self.written, wanted)
            try:
                self._sync()
            except Exception as exc:  # noqa: BLE001 - handed to the waiters, on the loop
                self._stop()
                self._call(loop, self._failed, exc)
                return
            self._covered = target
            if not self._call(loop, self._synced, target):
                self._stop()
                return

    def _stop(self) -> None:
        with self._state:
            self._running = False

    @staticmethod
    def _call(loop: asyncio.AbstractEventLoop, func: Callable[..., None], *args: object) -> bool:
        """Run ``func(*args)`` on the loop; False if the loop is gone."""
        try:
            loop.call_soon_threadsafe(func, *args)
        except RuntimeError:  # the loop is closed: nobody waits any more
            return False
        return True

    def _synced(self, target: int) -> None:
        """On the loop: everything up to ``target`` is durable; wake who waited for it."""
        self.syncs += 1
        self.durable = max(self.durable, target)
        while self._waiters and self._waiters[0][0] <= self.durable:
            future = heapq.heappop(self._waiters)[2]
            if not future.done():
                future.set_result(None)

    def _failed(self, exc: Exception) -> None:
        """On the loop: a sync failed; every waiter, now and later, gets its error."""
        self._error = exc
        for _, _, future in self._waiters:
            if not future.done():
                future.set_exception(exc)
        self._waiters.clear()
