"""Uploads from a child process (``upload.child_processes``): where they run, and
what happens when the upload process dies, gets a Ctrl-C, or is abandoned at shutdown."""

from __future__ import annotations

import logging
import os
import pickle
import signal
import sys
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from s3batchd.cli.seaweed import LocalS3
from s3batchd.errors import ConflictError, UploadError
from tests.batches import indexed_objects
from tests.conftest import DaemonFactory, wait_for
from tests.daemon_process import alive, children
from tests.faultproxy import FaultProxy
from tests.test_metrics import scrape
from tests.test_upstream_faults import assert_exactly_once, put_many

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

CHILD = {"child_processes": True}


@pytest.fixture
def proxy(s3_server: LocalS3) -> Iterator[FaultProxy]:
    """A fault proxy in front of the session's SeaweedFS."""
    fault_proxy = FaultProxy(int(s3_server.endpoint_url.rsplit(":", 1)[1])).start()
    yield fault_proxy
    fault_proxy.stop()


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def upload_processes(parents: Collection[int] = ()) -> list[int]:
    """Live upload processes started by ``parents`` (default: this process, where the daemons
    of ``start_daemon`` run)."""
    return [
        pid
        for parent in parents or (os.getpid(),)
        for pid in children(parent)
        if "s3batchd.upload.proc" in _cmdline(pid) and alive(pid)
    ]


def test_batches_upload_from_child_processes_with_their_requests_counted(
    start_daemon: DaemonFactory, s3: S3Client, bucket: str
) -> None:
    daemon = start_daemon(batch={"linger_ms": 100}, upload=CHILD)
    locations = put_many(daemon.client(), bucket, 12, "child")
    wait_for(lambda: indexed_objects(s3, bucket) == 12)
    assert_exactly_once(s3, bucket, locations)
    workers = upload_processes()
    assert workers
    assert os.getpid() not in workers
    mine = os.getpriority(os.PRIO_PROCESS, 0)
    assert {os.getpriority(os.PRIO_PROCESS, pid) for pid in workers} == {min(mine + 10, 19)}
    # Its settings arrive as plain dataclasses: it never loads pydantic (about 12 MiB).
    assert not any("pydantic" in Path(f"/proc/{pid}/maps").read_text() for pid in workers)
    # Two malloc arenas, as in the daemon (s3batchd.allocator).
    for pid in workers:
        assert b"\0MALLOC_ARENA_MAX=2\0" in b"\0" + Path(f"/proc/{pid}/environ").read_bytes()
    # The requests the upload processes sent are in the daemon's metrics (counted when an
    # attempt's answer arrives, before the batch counts as uploaded: wait for both).
    wait_for(lambda: daemon.pipeline.uploader.pending == 0)
    samples = scrape(daemon.admin_url)
    tars = samples["s3batchd_batches_uploaded_total", ()]
    assert tars >= 1
    put_ok = ("s3batchd_upstream_requests_total", (("operation", "PutObject"), ("outcome", "ok")))
    assert samples[put_ok] == 2 * tars  # the tar and its index, per batch
    daemon.stop()
    assert not any(alive(pid) for pid in workers)


def test_upload_processes_can_keep_the_daemons_priority(
    start_daemon: DaemonFactory, s3: S3Client, bucket: str
) -> None:
    daemon = start_daemon(batch={"linger_ms": 100}, upload={**CHILD, "child_nice": 0})
    put_many(daemon.client(), bucket, 2, "same")
    wait_for(lambda: indexed_objects(s3, bucket) == 2)
    workers = upload_processes()
    assert workers
    mine = os.getpriority(os.PRIO_PROCESS, 0)
    assert {os.getpriority(os.PRIO_PROCESS, pid) for pid in workers} == {mine}


def test_a_killed_upload_process_fails_only_its_attempt(
    start_daemon: DaemonFactory,
    proxy: FaultProxy,
    s3: S3Client,
    bucket: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # PUTs only: the bucket's configuration (GETs, s3batchd.upload.bucketmodes) is read first.
    proxy.set("blackhole", only_method="PUT")
    daemon = start_daemon(
        upstream={"endpoint_url": proxy.url, "read_timeout_s": 60},
        batch={"linger_ms": 100},
        upload=CHILD,
    )
    with caplog.at_level(logging.WARNING):
        locations = put_many(daemon.client(), bucket, 10, "killed")
        wait_for(lambda: proxy.decisions["blackhole"] >= 1)  # an upload waits for an answer
        workers = upload_processes()
        assert workers
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        proxy.set("pass")
        wait_for(lambda: indexed_objects(s3, bucket) == 10)
    assert_exactly_once(s3, bucket, locations)
    assert "ended; the next attempt starts a new one" in caplog.text
    assert not set(workers) & set(upload_processes())


def test_ctrl_c_does_not_stop_the_upload_processes(
    start_daemon: DaemonFactory, s3: S3Client, bucket: str
) -> None:
    daemon = start_daemon(batch={"linger_ms": 100}, upload=CHILD)
    client = daemon.client()
    put_many(client, bucket, 3, "first")
    wait_for(lambda: indexed_objects(s3, bucket) == 3)
    workers = upload_processes()
    assert workers
    for pid in workers:  # as a terminal's Ctrl-C does to the whole process group
        os.kill(pid, signal.SIGINT)
    put_many(client, bucket, 3, "second")
    wait_for(lambda: indexed_objects(s3, bucket) == 6)
    assert all(alive(pid) for pid in workers)
    assert daemon.pipeline.uploader.stats.retries == 0


def test_a_shutdown_that_cannot_wait_kills_the_uploads_and_keeps_the_batch(
    start_daemon: DaemonFactory, proxy: FaultProxy, s3: S3Client, bucket: str
) -> None:
    # Uploads only (PUT): the HeadBucket before the first write must not be the request the
    # wait below sees blackholed.
    proxy.set("blackhole", only_method="PUT")
    upstream = {"endpoint_url": proxy.url, "read_timeout_s": 60}
    daemon = start_daemon(
        upstream=upstream, batch={"linger_ms": 100}, upload=CHILD, shutdown={"drain_timeout_s": 1}
    )
    locations = put_many(daemon.client(), bucket, 8, "kept")
    wait_for(lambda: proxy.decisions["blackhole"] >= 1)
    workers = upload_processes()
    assert workers
    daemon.stop()
    assert not any(alive(pid) for pid in workers)
    assert [p for p in (daemon.settings.spool.dir / bucket).iterdir() if p.suffix == ".tar"]
    assert indexed_objects(s3, bucket) == 0
    proxy.set("pass")
    again = start_daemon(upstream=upstream, upload=CHILD)  # same spool: the kept batch is uploaded
    wait_for(lambda: indexed_objects(s3, bucket) == 8)
    assert_exactly_once(s3, bucket, locations)
    again.stop()


def test_upload_processes_take_the_daemons_environment(
    start_daemon: DaemonFactory, s3: S3Client, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = start_daemon(batch={"linger_ms": 100}, upload=CHILD)
    put_many(first.client(), bucket, 2, "good")
    wait_for(lambda: indexed_objects(s3, bucket) == 2)
    first.stop()
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    second = start_daemon(batch={"linger_ms": 100}, upload=CHILD)
    put_many(second.client(), bucket, 2, "bad")
    wait_for(lambda: "SignatureDoesNotMatch" in (second.pipeline.uploader.last_error or ""))
    assert indexed_objects(s3, bucket) == 2


def test_uploads_run_on_threads_by_default(
    start_daemon: DaemonFactory, s3: S3Client, bucket: str
) -> None:
    daemon = start_daemon(batch={"linger_ms": 100})
    locations = put_many(daemon.client(), bucket, 5, "threads")
    wait_for(lambda: indexed_objects(s3, bucket) == 5)
    assert_exactly_once(s3, bucket, locations)
    assert upload_processes() == []


def test_upload_errors_cross_process_boundaries_whole() -> None:
    for error in (
        UploadError("upload tar t: SlowDown", retriable=True, code="SlowDown"),
        ConflictError("s3://b/t holds another object"),
    ):
        copy = pickle.loads(pickle.dumps(error))  # noqa: S301  our own data
        assert type(copy) is type(error)
        assert (str(copy), copy.retriable, copy.code) == (str(error), error.retriable, error.code)


def test_an_upload_process_that_cannot_start_holds_batches_until_it_can(
    start_daemon: DaemonFactory, s3: S3Client, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    python = sys.executable
    monkeypatch.setattr(sys, "executable", "/bin/false")  # exits at once, reads nothing
    daemon = start_daemon(batch={"linger_ms": 100}, upload=CHILD)
    locations = put_many(daemon.client(), bucket, 6, "held")
    wait_for(lambda: "upload process" in (daemon.pipeline.uploader.last_error or ""))
    assert indexed_objects(s3, bucket) == 0
    monkeypatch.setattr(sys, "executable", python)  # the next retry starts a working child
    wait_for(lambda: indexed_objects(s3, bucket) == 6)
    assert_exactly_once(s3, bucket, locations)
