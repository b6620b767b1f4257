"""The four configurations compared in one run, started the same way for every point, and the
goals the report checks them against.

(a) ``ceiling``: do-nothing ASGI app; (b) ``none`` and (c) ``fsync``: s3batchd with that
durability; (d) ``seaweedfs``: the same PUTs sent directly to SeaweedFS.

The goals are those of issue #22 (which replaced issue #8's 0.5x / 0.4x the ceiling and 3x
SeaweedFS): ratios and costs measured in one run with one generator, never timed assertions
in tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.servers import Ceiling, Daemon, DaemonSettings, Seaweed, Server

CEILING = "ceiling"
NONE = "none"
FSYNC = "fsync"
SEAWEED = "seaweedfs"
ALL = (CEILING, NONE, FSYNC, SEAWEED)
LABELS = {
    CEILING: "(a) ceiling",
    NONE: "(b) s3batchd none",
    FSYNC: "(c) s3batchd fsync",
    SEAWEED: "(d) SeaweedFS direct",
}

#: Where the goals apply: 4 KiB PUTs over 32 connections, one worker.
TARGET_SIZE = 4096
TARGET_CONNECTIONS = 32
#: PUT/s of s3batchd at least this share of the do-nothing ceiling's, by durability.
SHARE_OF_CEILING = {NONE: 0.30, FSYNC: 0.25}
#: PUT/s of s3batchd (either durability) at least this many times SeaweedFS direct's.
TIMES_SEAWEED = 2.5
#: Server CPU per PUT at most (microseconds: user + system of the daemon's processes).
CPU_US_PER_PUT = {NONE: 110.0}
#: p99 at half of the peak throughput at most (milliseconds), by durability.
P99_MS_AT_HALF = {NONE: 5.0, FSYNC: 10.0}
#: Peak memory of the daemon's processes at most (PSS summed, MiB); and flat over the
#: sustained run (``bench.sustained``).
MEMORY_MIB = 150
#: ``bench.inprocess``: the daemon's CPU per 4 KiB PUT without HTTP at most (microseconds).
INPROCESS_US_PER_PUT = 60.0
#: Sealed-batch upload at least this share of boto3 ``upload_file``'s MiB/s (issue #8).
UPLOAD_SHARE = 0.8


@dataclass
class Running:
    """A server under test for one point: where to send PUTs and which processes to watch."""

    target: str
    url: str
    server: Server
    daemon: Daemon | None
    """The s3batchd process, for (b) and (c)."""
    fresh: bool
    """Started for this point (its VmHWM is the point's peak); SeaweedFS is shared."""


@contextmanager
def running(
    target: str, *, seaweed: Seaweed, work_dir: Path, daemon_settings: DaemonSettings
) -> Iterator[Running]:
    """Start ``target`` (except SeaweedFS, which runs for the whole benchmark); stop it after."""
    if target == SEAWEED:
        yield Running(target, seaweed.url, seaweed, None, fresh=False)
        return
    server: Server
    daemon: Daemon | None = None
    if target == CEILING:
        server = Ceiling.start(work_dir)
        url = server.url
    else:
        settings = DaemonSettings(
            durability=target,
            linger_ms=daemon_settings.linger_ms,
            max_records=daemon_settings.max_records,
            max_bytes=daemon_settings.max_bytes,
            upstream_url=seaweed.url,
            child_processes=daemon_settings.child_processes,
        )
        server = daemon = Daemon.start(work_dir, settings)
        url = daemon.url
    try:
        yield Running(target, url, server, daemon, fresh=True)
    finally:
        server.stop()
