"""``server.workers``: N daemon processes serving one port, each with its own spool and writer.

The parent binds the listening sockets, moves the batches of spools no worker will use (after
``server.workers`` was lowered) into the first worker's spool, then forks the workers and
waits for them, passing SIGTERM/SIGINT on. Worker 0 uses ``spool.dir`` itself (the layout of a
single-process daemon); worker i > 0 uses ``<spool.dir>/_workers/<i>``. The workers share the
catalog (SQLite in WAL mode, written through at once so a read on any worker sees every
acknowledged write), the held multipart uploads (``<spool.dir>/_multipart``) and the admin port
(each scrape or probe is answered by one worker, about itself). Each worker gets
``spool.max_bytes / N`` of the spool quota.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from s3batchd.catalog import catalog_path
from s3batchd.config import Settings
from s3batchd.errors import SpoolError
from s3batchd.spool import (
    OPEN_SUFFIX,
    SEALED_SUFFIX,
    UPLOAD_ID_SUFFIX,
    fsync_dir,
    lock_spool,
    recover,
)

logger = logging.getLogger(__name__)

WORKERS_DIR = "_workers"


def worker_spool(base: Path, index: int) -> Path:
    """The spool directory of worker ``index``."""
    return base if index == 0 else base / WORKERS_DIR / str(index)


def worker_settings(settings: Settings, index: int) -> Settings:
    """The settings worker ``index`` runs with."""
    workers = settings.server.workers
    if workers == 1:
        return settings
    base = settings.spool.dir
    spool = settings.spool.model_copy(
        update={"dir": worker_spool(base, index), "max_bytes": settings.spool.max_bytes // workers}
    )
    catalog = settings.catalog.model_copy(
        update={"path": settings.catalog.path or str(catalog_path(base))}
    )
    return settings.model_copy(update={"spool": spool, "catalog": catalog})


def all_spools(settings: Settings, base: Path) -> tuple[Path, ...]:
    """Every worker's spool directory (where a batch of any worker can be read locally)."""
    return tuple(worker_spool(base, i) for i in range(settings.server.workers))


def adopt_orphans(base: Path, workers: int, prefix: str) -> int:
    """Move the batches of ``<base>/_workers/<i>`` for i >= ``workers`` into ``base`` (worker
    0's spool), sealing open ones as recovery does; the number of batches moved."""
    parent = base / WORKERS_DIR
    if not parent.is_dir():
        return 0
    moved = 0
    for directory in sorted(parent.iterdir()):
        if not directory.name.isdigit() or int(directory.name) < workers:
            continue
        lock = lock_spool(directory)
        try:
            for batch in recover(directory, prefix=prefix):
                target = base / batch.bucket
                target.mkdir(parents=True, exist_ok=True)
                for suffix in (SEALED_SUFFIX, UPLOAD_ID_SUFFIX):
                    source = batch.path.with_suffix(suffix)
                    if source.exists():
                        source.rename(target / source.name)
                fsync_dir(target)
                moved += 1
            leftovers = [
                p for p in directory.rglob("*") if p.suffix in (OPEN_SUFFIX, SEALED_SUFFIX)
            ]
            if leftovers:
                raise SpoolError(f"{directory}: could not adopt {leftovers[0]}")
        finally:
            lock.close()
        logger.info("adopted the batches of %s (server.workers is now %d)", directory, workers)
    return moved


Serve = Callable[[Settings, list[socket.socket], tuple[Path, ...]], int]


def run_workers(settings: Settings, sockets: list[socket.socket], serve: Serve) -> int:
    """Fork ``server.workers`` processes that each run ``serve`` with their settings, the
    shared sockets and every worker's spool; the highest exit status of theirs (0: every
    worker uploaded everything)."""
    spools = all_spools(settings, settings.spool.dir)
    children: list[int] = []
    for index in range(settings.server.workers):
        pid = os.fork()
        if pid == 0:  # the worker: never returns into the parent's code
            code = 1
            try:
                code = serve(worker_settings(settings, index), sockets, spools)
            except BaseException:
                logger.exception("worker %d failed", index)
            finally:
                os._exit(code)
        children.append(pid)

    def forward(signum: int, _frame: FrameType | None) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    status = 0
    for child in children:
        _, code = os.waitpid(child, 0)
        status = max(status, os.waitstatus_to_exitcode(code))
    return status
