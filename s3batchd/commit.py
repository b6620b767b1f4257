"""Group commit: many waiting requests share one fdatasync.

A request that appended up to position ``p`` waits until a sync that started after its write
has finished. While one fdatasync runs, new writers queue up; the next fdatasync covers them
all. Acknowledging on a timer would not be durable (Vector's 500 ms window is the warning).

The syncs of one file run on a thread of its own (``s3batchd-commit``), one after the other
for as long as anyone waits: when a sync ends and writers are waiting, the next one starts at
once and covers everything written by then. The event loop only hears that a sync has ended
and wakes the writers it covered. Started from the loop on the shared thread pool instead,
every sync took two hand-offs (loop to pool thread, back to the loop before the next could
start), each waiting for a core under load: at about 1,900 PUT/s on two cores, p50 of PUTs
with durability ``fsync`` was 2.4-2.6 ms that way and 1.7-1.8 ms this way (bench/README.md).
This is the one blocking call that does not go through ``concurrency.run_sync``.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import threading
from collections.abc import Callable


class GroupCommitter:
    """Tracks the written and durable positions of one file, and syncs it on its own thread
    while writers wait. ``close()`` when the file takes no more writes."""

    def __init__(self, sync: Callable[[], None]) -> None:
        self._sync = sync
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
        self._state = threading.Condition()
        self._wanted = 0
        """Highest position a writer waits for (under ``_state``)."""
        self._closed = False
        self._thread: threading.Thread | None = None

    async def wait_durable(self, position: int) -> None:
        """Return once everything up to ``position`` is durable; raise if a sync failed.
        Cancelling one waiter (client gone) leaves the others and the syncs alone."""
        if self.durable >= position:
            return
        if self._error is not None:
            raise self._error
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        heapq.heappush(self._waiters, (position, next(self._arrivals), future))
        with self._state:
            self._wanted = max(self._wanted, position)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, args=(loop,), name="s3batchd-commit", daemon=True
                )
                self._thread.start()
            self._state.notify()
        await future

    def close(self) -> None:
        """No more writes: the thread ends once nobody waits (a later wait starts another)."""
        with self._state:
            self._closed = True
            self._state.notify()

    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        """The commit thread: sync while a writer waits for more than the last sync covered."""
        synced = 0
        while True:
            with self._state:
                while self._wanted <= synced and not self._closed:
                    self._state.wait()
                if self._wanted <= synced:
                    self._thread = None
                    return
                wanted = self._wanted
            # Everything written before the sync starts is covered by it.
            target = max(self.written, wanted)
            try:
                self._sync()
            except Exception as exc:  # noqa: BLE001 - handed to the waiters, on the loop
                with self._state:
                    self._thread = None
                self._call(loop, self._failed, exc)
                return
            synced = target
            if not self._call(loop, self._synced, target):
                with self._state:
                    self._thread = None
                return

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
