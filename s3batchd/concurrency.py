"""The one boundary where blocking calls leave the event loop.

A daemon process has one ``Threads``: named, bounded thread pools, created when first used and
shut down together by ``Threads.close()`` at the very end of the lifespan (``server/app.py``),
after every component that submits to them has closed. Blocking work goes through
``Threads.run(Pool.X, ...)`` (or ``run_sync``, which is ``Pool.SPOOL``), never through
``asyncio.to_thread`` or an executor of its own. Why each pool is separate:

=================  =========================  ==============================================
pool               threads                    why not shared
=================  =========================  ==============================================
``spool``          cores + 4 (asyncio's       spool file appends, seals, recovery, state files:
                   default pool's size)       short local disk I/O; installed as the loop's
                                              default executor so ``run_sync`` lands here
``commit``         8                          group-commit ``fdatasync`` runs (spool/commit.py):
                                              an acknowledgement must never wait behind a GET,
                                              an upload or a slow lookup, and a run of syncs
                                              keeps its thread while writers wait
``catalog``        1                          the pipeline's catalog connection (flushes of
                                              sealed batches, WAL checkpoints, uploads): one
                                              thread keeps them in submission order
``catalog-writer`` 1                          the cross-worker catalog transactions PUTs wait
                                              for (``server.workers`` > 1): a single writer per
                                              connection, never behind a checkpoint
``read``           4                          GET/HEAD bytes from the spool, a tar or the
                                              bucket, and owner lookups: a burst of reads
                                              never takes the spool's or the commits' threads
``upload``         ``upload.concurrency``     boto3 uploads of sealed batches: minutes-long
                                              calls, one per upload worker
``parts``          2                          client multipart parts written and synced to the
                                              spool (spool/uploads.py)
``locks``          4                          waits for another worker's lock on a multipart
                                              upload (``flock``): they may take long, so they
                                              hold up neither part writes nor the spool
``lookup``         2                          bucket modes (upload/bucketmodes.py): a lookup
                                              stalled on the network never holds up disk I/O,
                                              and ``close`` leaves it behind
``probe``          1                          the upstream probe's rounds (upload/prober.py):
                                              one check at a time, by design
``credentials``    2                          refreshes of temporary upstream credentials
                                              (STS, instance metadata): HTTP calls
``compaction``     1                          the daemon's compaction passes
                                              (compaction/loop.py): minutes-long, blocking,
                                              one bucket at a time
``follow``         8                          the catalog's follow loop (upload/follow.py):
                                              LISTs and GETs of other daemons' indexes, 8 in
                                              flight, parsed and written to the catalog; and
                                              a read's search for the compacted index of a
                                              batch gone (upload/relocate.py), the same work
=================  =========================  ==============================================

Pools that stay outside this module, on purpose: a multipart batch upload fans its parts out
on a pool of ``upload.part_concurrency`` threads made inside its upload thread (the loop never
sees it; upload/uploader.py), the child upload process has its own pool (upload/proc.py: a
separate process, no event loop), the client-side reader library (reader.py) runs without
a daemon, and a compaction pass reads the bucket's indexes on a pool made inside the pass's
own thread (compaction/compactor.py; the pass is blocking from start to end), as it reads live
objects (the reader library's pool) and uploads a new tar's parts (upload/batchupload.py).
"""

from __future__ import annotations

import asyncio
import enum
import functools
import os
from collections.abc import Callable, Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class Pool(enum.StrEnum):
    """The names of a daemon process's thread pools (the table above)."""

    SPOOL = "spool"
    COMMIT = "commit"
    CATALOG = "catalog"
    CATALOG_WRITER = "catalog-writer"
    READ = "read"
    UPLOAD = "upload"
    PARTS = "parts"
    LOCKS = "locks"
    LOOKUP = "lookup"
    PROBE = "probe"
    CREDENTIALS = "credentials"
    FOLLOW = "follow"
    COMPACTION = "compaction"


@dataclass(frozen=True, slots=True)
class PoolSpec:
    """How many threads a pool has and how it is shut down."""

    threads: int
    wait: bool
    """Whether ``close`` waits for the work in progress (work not started is dropped when
    it does not)."""


#: The threads of asyncio's default pool, kept for the spool's short disk calls.
SPOOL_THREADS = min(32, (os.cpu_count() or 1) + 4)

DEFAULTS: Mapping[Pool, PoolSpec] = {
    Pool.SPOOL: PoolSpec(SPOOL_THREADS, wait=False),
    Pool.COMMIT: PoolSpec(8, wait=True),
    Pool.CATALOG: PoolSpec(1, wait=True),
    Pool.CATALOG_WRITER: PoolSpec(1, wait=True),
    Pool.READ: PoolSpec(4, wait=False),
    Pool.UPLOAD: PoolSpec(4, wait=False),
    Pool.PARTS: PoolSpec(2, wait=True),
    Pool.LOCKS: PoolSpec(4, wait=False),
    Pool.LOOKUP: PoolSpec(2, wait=False),
    Pool.PROBE: PoolSpec(1, wait=False),
    Pool.CREDENTIALS: PoolSpec(2, wait=False),
    Pool.FOLLOW: PoolSpec(8, wait=False),
    Pool.COMPACTION: PoolSpec(1, wait=False),
}


class Threads:
    """The thread pools of one daemon process (``sizes``: threads per pool, overriding
    ``DEFAULTS``; the lifespan sets ``Pool.UPLOAD`` from ``upload.concurrency``)."""

    def __init__(self, sizes: Mapping[Pool, int] | None = None) -> None:
        self._specs = {
            pool: PoolSpec((sizes or {}).get(pool, spec.threads), spec.wait)
            for pool, spec in DEFAULTS.items()
        }
        self._pools: dict[Pool, ThreadPoolExecutor] = {}
        self.closed = False

    def executor(self, pool: Pool) -> Executor:
        """The pool's executor, made at first use (for code that hands it on: the group
        commit's runs of syncs).

        Raises:
            RuntimeError: after ``close``."""
        if self.closed:
            raise RuntimeError(f"the {pool} threads are shut down")
        found = self._pools.get(pool)
        if found is None:
            found = ThreadPoolExecutor(self._specs[pool].threads, f"s3batchd-{pool}")
            self._pools[pool] = found
        return found

    async def run(self, pool: Pool, func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run blocking ``func`` on one of ``pool``'s threads."""
        call = functools.partial(func, *args, **kwargs) if args or kwargs else func
        return await asyncio.get_running_loop().run_in_executor(self.executor(pool), call)

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        """Make ``Pool.SPOOL`` the loop's default executor: ``run_sync`` runs there."""
        loop.set_default_executor(self.executor(Pool.SPOOL))

    def close(self) -> None:
        """Shut every pool down: wait for the work in progress where the table says so,
        drop what has not started (idempotent)."""
        self.closed = True
        pools, self._pools = self._pools, {}
        for pool, executor in pools.items():
            executor.shutdown(wait=self._specs[pool].wait, cancel_futures=True)


async def run_sync(func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run a blocking spool call on the loop's default executor: ``Pool.SPOOL`` in a daemon
    (``Threads.install``), asyncio's own pool elsewhere (tests of one component)."""
    return await asyncio.to_thread(func, *args, **kwargs)


async def run_in(executor: Executor, func: Callable[[], T]) -> T:
    """Run a blocking function in ``executor`` (a pool of ``Threads``)."""
    return await asyncio.get_running_loop().run_in_executor(executor, func)
