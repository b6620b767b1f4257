"""``server.workers``: N daemon processes serving one port, each with its own spool and writer.

The parent binds the listening sockets (one S3 socket per worker, SO_REUSEPORT), moves the
batches of spools no worker will use (after ``server.workers`` was lowered) into the first
worker's spool, then forks the workers and supervises them: SIGTERM/SIGINT are passed on, and
a worker that dies is started again. Worker 0 uses ``spool.dir`` itself (the layout of a
single-process daemon); worker i > 0 uses ``<spool.dir>/_workers/<i>``. The workers share the
catalog (SQLite in WAL mode; a PUT is answered once its row is committed, in a group commit of
``catalogwriter``, so a read on any worker sees every acknowledged write), the held multipart
uploads (``<spool.dir>/_multipart``) and the admin port: ``/healthz`` is answered by one
worker, about itself; ``/metrics`` and ``/readyz`` by one worker about all of them, which it
asks on their private loopback admin listeners (``workeradmin``). Each worker gets
``spool.max_bytes / N`` of the spool quota.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from s3batchd.catalog.store import catalog_path
from s3batchd.config import Settings
from s3batchd.errors import SpoolError
from s3batchd.server.serve import bind_loopback
from s3batchd.server.workeradmin import Peers
from s3batchd.spool.files import (
    OPEN_SUFFIX,
    PARKED_SUFFIX,
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
        update={
            "path": settings.catalog.path or str(catalog_path(base)),
            # The catalog is shared: worker 0 alone follows the bucket into it.
            "follow": settings.catalog.follow and index == 0,
        }
    )
    # Compaction's passes take a lease per bucket: worker 0 alone runs them (as it alone
    # follows), so the other workers neither wait on the lease nor spend its requests.
    compaction = settings.compaction.model_copy(
        update={"enabled": settings.compaction.enabled and index == 0}
    )
    return settings.model_copy(
        update={"spool": spool, "catalog": catalog, "compaction": compaction}
    )


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
                for suffix in (SEALED_SUFFIX, UPLOAD_ID_SUFFIX, PARKED_SUFFIX):
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


Serve = Callable[[Settings, list[socket.socket], tuple[Path, ...], Peers | None], int]

#: A worker that ends while the daemon is not stopping is started again, at most this many
#: times within ``RESTART_WINDOW_S``; beyond that (it cannot start: a broken spool, a bad
#: setting) the daemon stops, so the orchestrator sees the failure instead of a restart loop.
RESTART_LIMIT = 5
RESTART_WINDOW_S = 60.0


class Supervisor:
    """The parent of the workers: starts them, starts again one that dies, passes signals on."""

    def __init__(self, settings: Settings, sockets: list[socket.socket], serve: Serve) -> None:
        workers = settings.server.workers
        self._settings = settings
        self._own, self._shared = sockets[:workers], sockets[workers:]
        self._serve = serve
        self._spools = all_spools(settings, settings.spool.dir)
        # Bound here, before any fork: a worker started again listens where the others expect.
        self._private = (
            [bind_loopback() for _ in range(workers)] if settings.server.admin_port else []
        )
        self._urls = tuple(f"http://127.0.0.1:{s.getsockname()[1]}" for s in self._private)
        self._running: dict[int, int] = {}
        """pid -> worker index."""
        self._restarts: dict[int, list[float]] = {}
        """worker index -> when it was started again (within the last window)."""
        self.stopping = False

    def run(self) -> int:
        """Serve until every worker has stopped; the highest exit status of theirs (0: every
        worker uploaded everything)."""
        for sig in (signal.SIGTERM, signal.SIGINT):  # before any fork: no signal is missed
            signal.signal(sig, self._forward)
        try:
            return self._supervise()
        finally:
            for sock in self._private:
                sock.close()

    def _supervise(self) -> int:
        for index in range(len(self._own)):
            self._start(index)
        status = 0
        while self._running:
            pid, wait_status = os.wait()
            if pid not in self._running:
                continue
            index = self._running.pop(pid)
            code = exit_status(wait_status)
            if self.stopping:
                status = max(status, code)
            elif self._may_restart(index):
                logger.error(
                    "worker %d (pid %d) ended (status %d): starting it again", index, pid, code
                )
                self._start(index)  # it recovers the batches the dead one left in its spool
            else:
                logger.error(
                    "worker %d (pid %d) ended (status %d) after %d restarts within %.0f s: "
                    "stopping the daemon",
                    index,
                    pid,
                    code,
                    RESTART_LIMIT,
                    RESTART_WINDOW_S,
                )
                status = max(status, code)
                self._forward(signal.SIGTERM, None)
        return status

    def _may_restart(self, index: int) -> bool:
        now = time.monotonic()
        recent = [t for t in self._restarts.get(index, []) if now - t < RESTART_WINDOW_S]
        self._restarts[index] = [*recent, now]
        return len(recent) < RESTART_LIMIT

    def _start(self, index: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker: never returns into the parent's code
            code = 1
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.default_int_handler)
                # A process group of its own: Ctrl-C in a terminal reaches the parent only,
                # which passes it on once (a second signal would make the worker skip its drain).
                os.setpgid(0, 0)
                for group in (self._own, self._private):
                    for position, other in enumerate(group):
                        if position != index:
                            other.close()
                sockets = [self._own[index], *self._shared, *self._private[index : index + 1]]
                peers = Peers(index, self._urls) if self._urls else None
                code = self._serve(
                    worker_settings(self._settings, index), sockets, self._spools, peers
                )
            except BaseException:
                logger.exception("worker %d failed", index)
            finally:
                os._exit(code)
        self._running[pid] = index
        if self.stopping:  # a signal came while it was being forked: it missed the forward
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def _forward(self, signum: int, _frame: FrameType | None) -> None:
        self.stopping = True
        for pid in list(self._running):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)


def run_workers(settings: Settings, sockets: list[socket.socket], serve: Serve) -> int:
    """Run ``server.workers`` processes that each serve with their settings, their S3 socket
    (``sockets`` starts with one per worker, as ``server.bind_sockets`` makes them), the shared
    admin socket and every worker's spool; the highest exit status of theirs."""
    return Supervisor(settings, sockets, serve).run()


def exit_status(wait_status: int) -> int:
    """A worker's exit status as a shell reports it (128 + N when killed by signal N): never
    0 for a killed worker, whose spool may still hold batches."""
    code = os.waitstatus_to_exitcode(wait_status)
    return 128 - code if code < 0 else code
