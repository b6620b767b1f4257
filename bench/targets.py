"""The four configurations compared in one run, started the same way for every point.

(a) ``ceiling``: do-nothing ASGI app; (b) ``none`` and (c) ``fsync``: s3batchd with that
durability; (d) ``seaweedfs``: the same PUTs sent directly to SeaweedFS.
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
