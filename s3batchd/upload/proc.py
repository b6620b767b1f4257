"""Batch uploads in a child process (``upload.child_processes``).

Uploading a batch is mostly waiting and copying, but on the daemon's threads its Python work
(botocore building, signing and sending each request, the body read and sent in 16 KiB blocks,
the CRC32 of the tar) shares the event loop's interpreter, its lock and its process. Measured
at half of peak load on two cores (durability ``none``), p99 latency of PUTs was about 17 ms
that way and about 7 ms with the uploads in another process (bench/README.md; which part of
the upload delays the loop was not isolated). Here every attempt at a batch runs in one child
process (``python -m s3batchd.upload.proc``) with its own interpreter, its own boto3 client
built from the same settings, and the daemon's environment; up to ``upload.concurrency``
attempts at once, on its threads. The uploader's threads only wait for the answer, an
``Attempt``. It lowers its own CPU priority by ``upload.child_nice`` (default 10): on busy
cores the request path runs first (p99 about 7.5 instead of 10.5 ms in the same runs).

The child is started at the first upload. It ignores SIGINT and SIGTERM: the daemon decides
when uploads stop (a terminal's Ctrl-C reaches the whole process group); it gets SIGKILL when
the daemon's process exits, and exits by itself when the daemon closes the connection. If it
dies (killed, out of memory), the attempts it was running fail and are retried in a new child,
like any failed upload; a shutdown that cannot wait for the uploads kills it, and the batches
stay in the spool for the next start.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING

from s3batchd.allocator import child_env
from s3batchd.errors import UploadError
from s3batchd.logs import setup_logging
from s3batchd.records import SealedBatch
from s3batchd.upload.uploader import Attempt, run_attempt
from s3batchd.upload.upstream import make_client
from s3batchd.uploadsettings import LogSettings, UploadSettings, UpstreamSettings

if TYPE_CHECKING:
    from s3batchd.config import LogConfig, UploadConfig, UpstreamConfig

logger = logging.getLogger(__name__)

#: prctl(2) option: the signal a process gets when its parent exits.
_PR_SET_PDEATHSIG = 1
#: How long a closing daemon waits for an idle child to exit before killing it.
_EXIT_WAIT_S = 10.0


class ChildSteps:
    """Upload steps in a child process (the module docstring)."""

    def __init__(self, upstream: UpstreamConfig, upload: UploadConfig, log: LogConfig) -> None:
        # Plain dataclasses: the child then never imports pydantic (s3batchd.uploadsettings).
        self._settings = (
            UpstreamSettings.of(upstream),
            UploadSettings.of(upload),
            LogSettings.of(log),
        )
        self._lock = threading.Lock()
        self._child: _Child | None = None
        self._closed = False

    def _current(self) -> _Child:
        with self._lock:
            if self._closed:
                raise UploadError("the uploader is closed", retriable=True)
            if self._child is None or self._child.ended:
                self._child = _Child.start(self._settings)
            return self._child

    def attempt(self, batch: SealedBatch, *, tar_done: bool) -> Attempt:
        """One attempt, in the upload process; this thread waits for its answer."""
        return self._current().attempt(batch, tar_done=tar_done)

    def close(self, *, wait: bool) -> None:
        """Stop the upload process; ``wait`` False: kill it, abandoning its attempts."""
        with self._lock:
            child, self._child = self._child, None
            self._closed = True
        if child is not None:
            child.stop(kill=not wait)


class _Child:
    """One upload process, the connection to it, and the attempts waiting for its answers."""

    def __init__(self, process: subprocess.Popen[bytes], sock: socket.socket) -> None:
        self._process = process
        self._socket = sock
        # On a duplicate: shutting the socket down wakes a receive blocked on it, closing
        # the descriptor would not.
        self._connection = Connection(os.dup(sock.fileno()))
        self._send_lock = threading.Lock()
        self._waiting: dict[int, Future[Attempt]] = {}
        self._waiting_lock = threading.Lock()
        self._numbers = itertools.count()
        self.ended = False
        self._receiver = threading.Thread(
            target=self._receive, name="s3batchd-upload-answers", daemon=True
        )

    @classmethod
    def start(cls, settings: tuple[UpstreamSettings, UploadSettings, LogSettings]) -> _Child:
        ours, theirs = socket.socketpair()
        with theirs:
            process = subprocess.Popen(  # noqa: S603  our own interpreter and module
                [sys.executable, "-m", __name__, str(theirs.fileno()), str(os.getpid())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                # Few malloc arenas, as in the daemon: 85 instead of 110 MiB RSS measured
                # after uploads.
                env={**os.environ, **child_env()},
            )
        child = cls(process, ours)
        try:
            child._connection.send(settings)
        except OSError as exc:  # it died at once: the attempt fails and is retried
            process.kill()
            process.wait()
            child._connection.close()
            ours.close()
            raise UploadError(
                f"the upload process did not start: {exc}",
                retriable=True,
                code="UploadProcessEnded",
            ) from exc
        child._receiver.start()
        logger.info("upload process %d started", process.pid)
        return child

    def attempt(self, batch: SealedBatch, *, tar_done: bool) -> Attempt:
        number = next(self._numbers)
        answer: Future[Attempt] = Future()
        with self._waiting_lock:
            if self.ended:
                raise self._ended_error()
            self._waiting[number] = answer
        try:
            with self._send_lock:
                self._connection.send((number, batch, tar_done))
        except OSError:
            self._end()
        return answer.result()

    def _receive(self) -> None:
        """Hand each answer (attempt number, Attempt) to the thread waiting for it."""
        try:
            while True:
                number, attempt = self._connection.recv()
                with self._waiting_lock:
                    waiting = self._waiting.pop(number, None)
                if waiting is not None:
                    waiting.set_result(attempt)
        except (EOFError, OSError):
            pass  # the process exited, or stop() shut the connection down
        except Exception:  # an unreadable answer: the connection is out of step
            logger.exception("upload process %d: unreadable answer", self._process.pid)
            self._process.kill()
        self._end()
        with self._send_lock:  # no attempt is sending on it while it closes
            self._connection.close()
            self._socket.close()
        self._process.wait()  # reaped; a stop() does not need to wait long

    def _end(self) -> None:
        """The process is gone or unreachable: every attempt waiting for it fails."""
        with self._waiting_lock:
            if not self.ended:
                self.ended = True
                logger.warning(
                    "upload process %d ended; the next attempt starts a new one",
                    self._process.pid,
                )
            waiting, self._waiting = self._waiting, {}
        for future in waiting.values():
            future.set_exception(self._ended_error())

    def _ended_error(self) -> UploadError:
        return UploadError(
            f"the upload process ended (exit status {self._process.poll()})",
            retriable=True,
            code="UploadProcessEnded",
        )

    def stop(self, *, kill: bool) -> None:
        """End the connection (an idle child then exits); ``kill``: SIGKILL it first."""
        with self._waiting_lock:
            self.ended = True
        if kill:
            self._process.kill()
        with contextlib.suppress(OSError):  # closed already if the process had ended
            self._socket.shutdown(socket.SHUT_RDWR)
        try:
            self._process.wait(_EXIT_WAIT_S)
        except subprocess.TimeoutExpired:
            self._process.kill()
        self._receiver.join()
        self._end()


def _serve(connection: Connection) -> None:
    """The upload process: run each requested attempt (number, batch, whether its tar is
    up) on a thread, answer (number, Attempt) when done."""
    try:
        upstream, upload, log = connection.recv()
    except (EOFError, OSError):
        return
    setup_logging(log)
    os.nice(upload.child_nice)  # the daemon's requests first when the cores are busy
    client = make_client(upstream, upload)
    send_lock = threading.Lock()
    pool = ThreadPoolExecutor(upload.concurrency, "s3batchd-upload")

    def run(number: int, batch: SealedBatch, tar_done: bool) -> None:
        attempt = run_attempt(client, upload, batch, tar_done=tar_done)
        with send_lock:
            connection.send((number, attempt))

    while True:
        try:
            number, batch, tar_done = connection.recv()
        except (EOFError, OSError):
            return  # the daemon closed the connection or exited
        pool.submit(run, number, batch, tar_done)


def _die_with_parent(parent: int) -> None:
    """SIGKILL when the daemon's thread that started this process ends (Linux; the upload
    threads live as long as the uploader, and all end with the process), and exit now if the
    daemon is already gone."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(0)


def main(argv: list[str]) -> None:
    """Entry point of ``python -m s3batchd.upload.proc FD PARENT_PID``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent(int(argv[1]))
    _serve(Connection(int(argv[0])))
    # Attempts still running have nobody to answer to.
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
