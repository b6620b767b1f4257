"""What ``/readyz`` promises: "can take writes". Upstream and per-bucket problems are warnings
(and metrics), never a reason to take the pod out of its Services; a stranded batch is."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from s3batchd.batching import pipeline as pipeline_module
from s3batchd.cli.seaweed import LocalS3, free_ports
from tests.batches import indexed_objects
from tests.conftest import DaemonFactory, wait_for
from tests.daemon_process import DaemonProcess
from tests.faultproxy import FaultProxy
from tests.test_metrics import scrape

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


def readyz(admin_url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(admin_url + "/readyz", timeout=10) as answer:  # noqa: S310
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def warned_or_unready(admin_url: str, text: str) -> bool:
    status, body = readyz(admin_url)
    return status != 200 or text in " ".join(body.get("warnings", []))


@pytest.fixture
def proxy(s3_server: LocalS3) -> Iterator[FaultProxy]:
    proxy = FaultProxy(int(s3_server.endpoint_url.rsplit(":", 1)[1])).start()
    yield proxy
    proxy.stop()


def test_an_upstream_refusing_connections_is_a_warning(start_daemon: DaemonFactory) -> None:
    closed = free_ports(1)[0]  # nothing listens there: connections are refused
    daemon = start_daemon(
        upstream={
            "endpoint_url": f"http://127.0.0.1:{closed}",
            "probe_interval_s": 0.2,
            "probe_buckets": ["probed"],
            "connect_timeout_s": 1,
        }
    )
    wait_for(lambda: warned_or_unready(daemon.admin_url, "s3://probed"))
    status, body = readyz(daemon.admin_url)
    assert status == 200, body
    assert body["status"] == "ready"
    assert "reasons" not in body
    [warning] = body["warnings"]
    assert warning.startswith("upstream unreachable: s3://probed"), warning
    wait_for(lambda: scrape(daemon.admin_url).get(("s3batchd_upstream_up", ())) == 0)


def test_failing_uploads_are_a_warning_and_the_batch_still_goes_up(
    start_daemon: DaemonFactory, proxy: FaultProxy, s3: S3Client, bucket: str
) -> None:
    daemon = start_daemon(
        upstream={"endpoint_url": proxy.url, "probe_interval_s": 0},
        batch={"linger_ms": 50},
    )
    client = daemon.client()
    client.put_object(Bucket=bucket, Key="first", Body=b"uploaded")
    wait_for(lambda: indexed_objects(s3, bucket) == 1)
    proxy.set("reset", only_method="PUT")
    client.put_object(Bucket=bucket, Key="second", Body=b"kept in the spool")
    wait_for(lambda: warned_or_unready(daemon.admin_url, "upstream failing"))
    status, body = readyz(daemon.admin_url)
    assert status == 200, body
    assert any(w.startswith("upstream failing: ") for w in body["warnings"]), body
    wait_for(lambda: scrape(daemon.admin_url).get(("s3batchd_upstream_up", ())) == 0)
    proxy.set("pass")
    wait_for(lambda: indexed_objects(s3, bucket) == 2)
    wait_for(lambda: readyz(daemon.admin_url) == (200, {"status": "ready"}))
    assert scrape(daemon.admin_url)[("s3batchd_upstream_up", ())] == 1


def test_a_stalled_upstream_is_noticed_within_the_probe_timeout(
    start_daemon: DaemonFactory, proxy: FaultProxy
) -> None:
    proxy.set("blackhole", only_method="GET")  # connections accepted, GETs never answered
    daemon = start_daemon(
        upstream={
            "endpoint_url": proxy.url,
            "probe_interval_s": 0.2,
            "probe_buckets": ["stalled"],
            "read_timeout_s": 60,  # uploads may wait this long; the probe does not
        }
    )
    # Within the wait: a probe with the uploads' timeouts would take 3 x 60 s to give up.
    wait_for(lambda: warned_or_unready(daemon.admin_url, "s3://stalled"), timeout=30)
    status, body = readyz(daemon.admin_url)
    assert status == 200, body
    assert "s3://stalled" in body["warnings"][0]


def probed_buckets(proxy: FaultProxy) -> set[str]:
    """Buckets the daemon's probe asked about (GETs of the probe key)."""
    found = set()
    for line in proxy.request_lines:
        match = re.match(r"GET /([^/]+)/\S*\.s3batchd-probe ", line)
        if match:
            found.add(match.group(1))
    return found


def test_the_probe_asks_a_bounded_set_of_recently_written_buckets(
    start_daemon: DaemonFactory, proxy: FaultProxy, s3: S3Client
) -> None:
    buckets = [f"t-{secrets.token_hex(6)}" for _ in range(25)]
    for name in buckets:
        s3.create_bucket(Bucket=name)
    daemon = start_daemon(
        upstream={"endpoint_url": proxy.url, "probe_interval_s": 0.1},
        batch={"linger_ms": 50},
    )
    client = daemon.client()
    for name in buckets:  # one small PUT to each: today every one is probed, forever
        client.put_object(Bucket=name, Key="k", Body=b"x")
    wait_for(lambda: daemon.pipeline.uploader.pending == 0 and not daemon.pipeline.spool_bytes)
    proxy.request_lines.clear()
    # Enough probe GETs for every bucket to have been asked about twice if all were probed.
    wait_for(lambda: sum(".s3batchd-probe " in line for line in proxy.request_lines) >= 50)
    probed = probed_buckets(proxy)
    assert len(probed) <= 10, sorted(probed)  # upstream.probe_max_buckets
    assert probed <= set(buckets[-10:])  # the most recently written ones


def test_buckets_not_written_for_a_while_are_no_longer_probed(
    start_daemon: DaemonFactory, s3: S3Client, bucket: str
) -> None:
    daemon = start_daemon(
        upstream={"probe_interval_s": 0.1, "probe_forget_s": 1, "probe_buckets": ["configured"]},
        batch={"linger_ms": 50},
    )
    daemon.client().put_object(Bucket=bucket, Key="k", Body=b"x")
    wait_for(lambda: bucket in daemon.pipeline.probed_buckets())
    wait_for(lambda: daemon.pipeline.probed_buckets() == ["configured"])


@contextmanager
def read_only(directory: Path) -> Iterator[None]:
    """``directory`` takes no new, renamed or removed entries, also for root (tests run as
    root in CI, where a mode of 0555 stops nobody): the immutable attribute as root, the mode
    otherwise."""
    as_root = os.geteuid() == 0
    if as_root:
        subprocess.run(["chattr", "+i", str(directory)], check=True)
    else:
        directory.chmod(0o555)
    try:
        yield
    finally:
        if as_root:
            subprocess.run(["chattr", "-i", str(directory)], check=True)
        else:
            directory.chmod(0o755)


def test_a_seal_that_failed_is_retried_without_a_restart(
    start_daemon: DaemonFactory, s3: S3Client, bucket: str
) -> None:
    daemon = start_daemon(batch={"linger_ms": 600_000, "max_records": 2})
    client = daemon.client()
    client.put_object(Bucket=bucket, Key="one", Body=b"first")
    bucket_dir = daemon.settings.spool.dir / bucket
    with read_only(bucket_dir):
        client.put_object(Bucket=bucket, Key="two", Body=b"second")  # seals: rename refused
        wait_for(lambda: readyz(daemon.admin_url)[0] == 503)
        body = readyz(daemon.admin_url)[1]
        [reason] = body["reasons"]
        [open_file] = bucket_dir.glob("*.open")
        assert reason.startswith(f"batch {open_file.stem} stranded"), reason
        metrics = scrape(daemon.admin_url)
        assert metrics[("s3batchd_stranded_batches", ())] == 1
        assert metrics[("s3batchd_ready", ())] == 0
    wait_for(lambda: indexed_objects(s3, bucket) == 2)
    wait_for(lambda: readyz(daemon.admin_url) == (200, {"status": "ready"}))
    metrics = scrape(daemon.admin_url)
    assert metrics[("s3batchd_stranded_batches", ())] == 0
    assert metrics[("s3batchd_ready", ())] == 1
    assert not list(bucket_dir.iterdir())


def test_every_workers_warnings_are_listed_and_the_daemon_stays_ready(
    tmp_path: Path, s3_server: LocalS3
) -> None:
    closed = free_ports(1)[0]
    daemon = DaemonProcess(
        tmp_path,
        s3_server,
        server={"workers": 2},
        upstream={
            "endpoint_url": f"http://127.0.0.1:{closed}",
            "probe_interval_s": 0.2,
            "probe_buckets": ["probed"],
            "connect_timeout_s": 1,
        },
    )
    with daemon:
        admin = f"http://127.0.0.1:{daemon.admin_port}"
        wait_for(lambda: daemon.log().count("Application startup complete") == 2)
        wait_for(lambda: len(readyz(admin)[1].get("warnings", [])) == 2)
        status, body = readyz(admin)
        assert status == 200, body
        assert sorted(w[: len("worker 0: ")] for w in body["warnings"]) == [
            "worker 0: ",
            "worker 1: ",
        ]
        assert all("upstream unreachable: s3://probed" in w for w in body["warnings"]), body
        with urllib.request.urlopen(admin + "/readyz?scope=worker", timeout=10) as answer:  # noqa: S310
            [own] = json.loads(answer.read())["warnings"]
        assert own.startswith("upstream unreachable: s3://probed"), own  # this worker's own
        assert daemon.terminate() == 0


def test_concurrent_readiness_checks_and_scrapes_agree_the_spool_is_writable(
    start_daemon: DaemonFactory,
) -> None:
    daemon = start_daemon(upstream={"probe_interval_s": 0})

    def ask(number: int) -> int:
        if number % 2:
            scrape(daemon.admin_url)
            return 200
        return readyz(daemon.admin_url)[0]

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, range(400)))
    assert answers.count(200) == 400
    assert readyz(daemon.admin_url) == (200, {"status": "ready"})


def test_a_restarted_daemon_probes_only_the_buckets_of_recovered_batches(
    start_daemon: DaemonFactory, proxy: FaultProxy, s3: S3Client
) -> None:
    uploaded, kept = f"t-{secrets.token_hex(6)}", f"t-{secrets.token_hex(6)}"
    for name in (uploaded, kept):
        s3.create_bucket(Bucket=name)
    upstream = {"endpoint_url": proxy.url, "probe_interval_s": 0.1}
    first = start_daemon(upstream=upstream, batch={"linger_ms": 50})
    first.client().put_object(Bucket=uploaded, Key="k", Body=b"uploaded")
    wait_for(lambda: indexed_objects(s3, uploaded) == 1)
    proxy.set("reset", only_method="PUT")  # the next batch stays in the spool
    first.client().put_object(Bucket=kept, Key="k", Body=b"kept")
    wait_for(lambda: first.pipeline.uploader.pending == 1)
    assert set(first.pipeline.probed_buckets()) == {uploaded, kept}
    first.server.should_exit = True  # stop without waiting for the upload
    first.thread.join(60)
    proxy.set("pass")
    second = start_daemon(upstream=upstream, batch={"linger_ms": 50})
    assert second.pipeline.probed_buckets() == [kept]
    wait_for(lambda: indexed_objects(s3, kept) == 1)


def test_a_spool_that_hangs_makes_readiness_fail_instead_of_hanging(
    start_daemon: DaemonFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A file system that stops answering (a hung network disk): the write test's thread
    # blocks. /readyz (and /metrics, which evaluates readiness) must still answer, not ready,
    # and never start a second blocked thread.
    daemon = start_daemon()
    release = threading.Event()
    started: list[float] = []

    def hanging(spool_dir: Path) -> None:
        started.append(time.monotonic())
        release.wait(30)

    monkeypatch.setattr(pipeline_module, "check_writable", hanging)
    monkeypatch.setattr(pipeline_module, "SPOOL_CHECK_TIMEOUT_S", 0.2)
    try:
        for _ in range(3):
            status, body = readyz(daemon.admin_url)
            assert status == 503, body
            assert any("does not answer" in reason for reason in body["reasons"]), body
        assert scrape(daemon.admin_url)[("s3batchd_ready", ())] == 0
        assert len(started) == 1  # one write test, still waiting, shared by every check
    finally:
        release.set()
    wait_for(lambda: readyz(daemon.admin_url) == (200, {"status": "ready"}))
