"""Few malloc arenas: threads that come and go do not each keep an arena of memory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from s3batchd.allocator import ARENA_ENV, ARENAS, child_env
from s3batchd.cli.seaweed import LocalS3
from tests.batches import indexed_objects
from tests.conftest import wait_for
from tests.daemon_process import DaemonProcess

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

MIB = 1024 * 1024
#: glibc reserves each arena but the main one as a heap of this size, aligned to it (64-bit).
HEAP_BYTES = 64 * MIB

#: Twelve threads alive at once, each allocating, then glibc's own count of its arenas.
_THREADS_ALLOCATE = """
import ctypes, os, sys, threading
from s3batchd.allocator import limit_arenas
print(limit_arenas(), flush=True)
barrier = threading.Barrier(12)
kept = []
def allocate():
    kept.append(bytearray(256 * 1024))
    barrier.wait()
threads = [threading.Thread(target=allocate) for _ in range(12)]
for thread in threads: thread.start()
for thread in threads: thread.join()
ctypes.CDLL(None).malloc_stats()  # "Arena N:" per arena, on stderr
"""


def _arenas(env: dict[str, str]) -> tuple[str, int]:
    """What limit_arenas() said, and the arenas glibc used."""
    done = subprocess.run(
        [sys.executable, "-c", _THREADS_ALLOCATE],
        env={**os.environ, **env},  # clean_environ took the shell's limits out
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return done.stdout.strip(), done.stderr.count("Arena ")


def test_threads_share_two_arenas() -> None:
    assert _arenas({}) == ("True", ARENAS)


def test_an_operators_arena_limit_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _arenas({ARENA_ENV: "5"}) == ("False", 5)
    tunables = {"GLIBC_TUNABLES": "glibc.malloc.arena_max=4"}
    assert _arenas(tunables) == ("False", 4)
    # Nor is it overridden in the upload processes the daemon starts.
    monkeypatch.setenv("GLIBC_TUNABLES", tunables["GLIBC_TUNABLES"])
    assert child_env() == {}
    monkeypatch.delenv("GLIBC_TUNABLES")
    assert child_env() == {ARENA_ENV: str(ARENAS)}


def glibc_heaps(pid: int) -> int:
    """Arenas of a live process beside the main one: glibc maps each as a heap reserved at an
    address aligned to its size, read-write as far as used and inaccessible up to its end."""
    regions = []
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split()
        start, end = (int(bound, 16) for bound in fields[0].split("-"))
        named = len(fields) > 5  # address, mode, offset, device, inode, [path]
        regions.append((start, end, fields[1], named))
    heaps = 0
    for index, (start, end, mode, named) in enumerate(regions):
        if named or mode != "rw-p" or start % HEAP_BYTES:
            continue
        if end - start == HEAP_BYTES:
            heaps += 1
            continue
        rest = regions[index + 1] if index + 1 < len(regions) else None
        if rest and rest[0] == end and rest[2] == "---p" and rest[1] == start + HEAP_BYTES:
            heaps += 1
    return heaps


def _heaps_after_a_multipart_upload(
    tmp_path: Path, s3_server: LocalS3, s3: S3Client, bucket: str, env: dict[str, str]
) -> int:
    daemon = DaemonProcess(
        tmp_path,
        s3_server,
        env=env,
        batch={"linger_ms": 200},
        # Eight parts of 5 MiB, each on a thread of its own.
        upload={
            "multipart_threshold_bytes": 5 * MIB,
            "part_size_bytes": 5 * MIB,
            "part_concurrency": 8,
        },
    )
    with daemon:
        client = daemon.client()
        for number in range(10):
            client.put_object(Bucket=bucket, Key=f"big/{number}", Body=os.urandom(4 * MIB))
        wait_for(lambda: indexed_objects(s3, bucket) == 10)
        assert daemon.process is not None
        return glibc_heaps(daemon.process.pid)


def test_the_daemon_keeps_to_two_arenas_through_a_multipart_upload(
    tmp_path: Path, s3_server: LocalS3, s3: S3Client, bucket: str
) -> None:
    assert _heaps_after_a_multipart_upload(tmp_path, s3_server, s3, bucket, {}) == ARENAS - 1


def test_with_glibcs_own_limit_the_daemon_has_an_arena_per_thread(
    tmp_path: Path, s3_server: LocalS3, s3: S3Client, bucket: str
) -> None:
    # What the test above would see without the limit: one arena for each thread at once.
    env = {ARENA_ENV: "16"}
    assert _heaps_after_a_multipart_upload(tmp_path, s3_server, s3, bucket, env) > ARENAS
