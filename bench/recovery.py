"""Time to recover a large spool at start: a daemon whose upstream is unreachable is filled
through its S3 port and killed with SIGKILL, then a new daemon is started on (a copy of) the
spool and timed until its admin listener answers, i.e. until the pipeline's start-up recovery
(``spool.recover``, catalog rebuild, queueing for upload) is done.

Two spools: ``sealed`` (default batch limits: sealed 64 MiB tars, which recovery only scans,
plus the open tail) and ``open`` (one batch that was still open: every member is read and its
MD5 checked, then the file is cut, sealed and synced).
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from bench import loadgen
from bench.servers import BUCKET, Daemon, DaemonSettings
from s3batchd.cli.seaweed import free_ports

#: Bytes per spooled object besides its data: PAX header block + PAX data + ustar header.
MEMBER_OVERHEAD = 1536
DROP_CACHES = Path("/proc/sys/vm/drop_caches")
GIB = 1 << 30


@dataclass(frozen=True)
class Recovery:
    """Start-up times of one spool."""

    scenario: str
    spool_bytes: int
    files: int
    objects: int
    batches_recovered: int
    ready_s: float
    """From process start until /healthz answered (page cache warm)."""
    ready_cold_s: float | None
    """The same after dropping the page cache (None when that was not possible)."""
    empty_ready_s: float
    """The same with an empty spool: start-up without recovery."""


def scenarios() -> dict[str, DaemonSettings]:
    """Batch limits of each spool, all with an upstream that refuses connections."""
    (dead_port,) = free_ports(1)
    dead = DaemonSettings(
        durability="none",
        upstream_url=f"http://127.0.0.1:{dead_port}",
        prefix="s3batchd/recovery/",  # the same for the daemon that fills and the one that recovers
    )
    one_batch = replace(dead, linger_ms=24 * 3600 * 1000, max_records=10_000_000, max_bytes=4 * GIB)
    return {"sealed": dead, "open": one_batch}


def fill(
    work_dir: Path, settings: DaemonSettings, *, target_bytes: int, object_size: int
) -> tuple[Path, int]:
    """A spool of about ``target_bytes`` left by a killed daemon; its path and object count."""
    daemon = Daemon.start(work_dir, settings)
    count = -(-target_bytes // (object_size + MEMBER_OVERHEAD))
    try:
        spec = loadgen.LoadSpec(
            url=daemon.url,
            size=object_size,
            connections=32,
            duration_s=1800,
            limit=count,
            run="fill",
        )
        result = loadgen.run(spec)
    finally:
        daemon.kill()
    if result.errors:
        raise RuntimeError(f"{result.errors} PUTs failed while filling the spool")
    return work_dir / "spool", result.requests


def spool_files(spool: Path) -> list[Path]:
    """The batch files of the benchmark bucket."""
    return sorted(p for p in (spool / BUCKET).iterdir() if p.suffix in (".tar", ".open"))


def time_start(work_dir: Path, settings: DaemonSettings, spool: Path, *, cold: bool) -> Daemon:
    """Start a daemon on ``spool`` (optionally with a cold page cache); kill it once it answers.
    Returns it for its ``ready_s`` and log."""
    if cold:
        drop_page_cache()
    daemon = Daemon.start(work_dir, settings, spool=spool, timeout=1800)
    daemon.kill()
    return daemon


def can_drop_page_cache() -> bool:
    """Whether this process may write /proc/sys/vm/drop_caches (root on Linux)."""
    try:
        with DROP_CACHES.open("w"):
            return True
    except OSError:
        return False


def drop_page_cache() -> None:
    """Write dirty pages, then drop the clean page cache."""
    os.sync()
    DROP_CACHES.write_text("3\n")


def recovered_batches(log: Path) -> int:
    """The count the daemon logs at start ("... N batches recovered")."""
    found = re.findall(r"(\d+) batches recovered", log.read_text(errors="replace"))
    return int(found[-1]) if found else 0


def measure(
    work_dir: Path,
    scenario: str,
    settings: DaemonSettings,
    *,
    target_bytes: int,
    object_size: int,
    cold: bool,
) -> tuple[Recovery, Path]:
    """Fill, then time starts on fresh copies of the spool; the result and the pristine spool."""
    pristine, objects = fill(
        work_dir / "fill", settings, target_bytes=target_bytes, object_size=object_size
    )
    files = spool_files(pristine)
    spool_bytes = sum(p.stat().st_size for p in files)
    times: list[float] = []
    batches = 0
    for number, cold_start in enumerate((False, True) if cold else (False,)):
        copy = work_dir / f"start-{number}" / "spool"
        shutil.copytree(pristine, copy, symlinks=True)
        daemon = time_start(copy.parent, settings, copy, cold=cold_start)
        times.append(daemon.ready_s)
        batches = recovered_batches(daemon.log_path)
        shutil.rmtree(copy.parent)
    empty = time_start(work_dir / "empty", settings, work_dir / "empty" / "spool", cold=False)
    result = Recovery(
        scenario=scenario,
        spool_bytes=spool_bytes,
        files=len(files),
        objects=objects,
        batches_recovered=batches,
        ready_s=times[0],
        ready_cold_s=times[1] if len(times) > 1 else None,
        empty_ready_s=empty.ready_s,
    )
    return result, pristine
