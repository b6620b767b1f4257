"""A 200 is a promise: durability modes, quota backpressure, a full disk, a failing fsync."""

from __future__ import annotations

import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from botocore.exceptions import ClientError

from s3batchd.cli.seaweed import LocalS3, free_ports
from s3batchd.constants import KB, MB
from tests.batches import Location, fetch, indexed_objects
from tests.conftest import DaemonFactory, wait_for
from tests.daemon_process import DaemonProcess
from tests.faultproxy import FaultProxy
from tests.test_readiness import read_only

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


@pytest.fixture
def proxy(s3_server: LocalS3) -> Iterator[FaultProxy]:
    fault_proxy = FaultProxy(int(s3_server.endpoint_url.rsplit(":", 1)[1])).start()
    yield fault_proxy
    fault_proxy.stop()


def code_of(call: Callable[[], Any]) -> tuple[int, str, dict[str, str]]:
    with pytest.raises(ClientError) as caught:
        call()
    meta = caught.value.response["ResponseMetadata"]
    return meta["HTTPStatusCode"], caught.value.response["Error"]["Code"], meta["HTTPHeaders"]


@pytest.mark.parametrize("how", ["configured", "header"])
def test_upload_durability_answers_once_the_batch_is_in_the_bucket(
    start_daemon: DaemonFactory, s3: S3Client, bucket: str, how: str
) -> None:
    spool: dict[str, Any] = {"durability": "upload"} if how == "configured" else {}
    daemon = start_daemon(spool=spool, batch={"linger_ms": 300})
    client = daemon.client()
    if how == "header":
        client.meta.events.register(
            "before-sign.s3.PutObject",
            lambda request, **_: request.headers.__setitem__("x-s3batchd-durability", "upload"),
        )
    answer = client.put_object(Bucket=bucket, Key="waited", Body=b"in the bucket on return")
    # No waiting here: the index (the batch's commit marker) already exists.
    assert indexed_objects(s3, bucket) == 1
    location = Location.from_headers(answer["ResponseMetadata"]["HTTPHeaders"])
    assert fetch(s3, location) == b"in the bucket on return"


def test_durability_header_is_validated(daemon: Any, bucket: str) -> None:
    client = daemon.client(retries={"total_max_attempts": 1})
    client.meta.events.register(
        "before-sign.s3.PutObject",
        lambda request, **_: request.headers.__setitem__("x-s3batchd-durability", "maybe"),
    )
    status, code, _ = code_of(lambda: client.put_object(Bucket=bucket, Key="k", Body=b"x"))
    assert (status, code) == (400, "InvalidArgument")


def test_spool_quota_answers_slowdown_then_recovers(
    start_daemon: DaemonFactory, proxy: FaultProxy, s3: S3Client, bucket: str
) -> None:
    proxy.set("blackhole")
    daemon = start_daemon(
        spool={"max_bytes": 1 * MB},
        batch={"linger_ms": 50},
        upstream={"endpoint_url": proxy.url, "read_timeout_s": 1, "connect_timeout_s": 1},
    )
    client = daemon.client(retries={"total_max_attempts": 1})
    body = b"q" * (200 * KB)
    acked: dict[str, Location] = {}
    for number in range(30):
        try:
            answer = client.put_object(Bucket=bucket, Key=f"q/{number}", Body=body)
        except ClientError as exc:
            meta = exc.response["ResponseMetadata"]
            assert (meta["HTTPStatusCode"], exc.response["Error"]["Code"]) == (503, "SlowDown")
            assert meta["HTTPHeaders"]["retry-after"] == "1"
            break
        acked[f"q/{number}"] = Location.from_headers(answer["ResponseMetadata"]["HTTPHeaders"])
    else:
        pytest.fail("the quota never pushed back")
    assert 3 <= len(acked) <= 5
    status, body_json = _readyz(daemon.admin_url)
    assert status == 503 and "over quota" in body_json
    proxy.set("pass")
    wait_for(lambda: indexed_objects(s3, bucket) == len(acked), timeout=60)
    wait_for(lambda: not daemon.pipeline.over_quota(len(body)))
    client.put_object(Bucket=bucket, Key="after", Body=body)  # serving resumed by itself
    for key, location in acked.items():
        assert fetch(s3, location) == body, key


def _readyz(admin_url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(admin_url + "/readyz", timeout=5) as answer:  # noqa: S310
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_failed_fdatasync_fails_its_writers_and_keeps_what_was_durable(
    start_daemon: DaemonFactory, s3: S3Client, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon = start_daemon(batch={"linger_ms": 60_000})
    client = daemon.client(retries={"total_max_attempts": 1})
    before = {
        f"ok/{n}": Location.from_headers(
            client.put_object(Bucket=bucket, Key=f"ok/{n}", Body=b"durable")["ResponseMetadata"][
                "HTTPHeaders"
            ]
        )
        for n in range(3)
    }
    real = os.fdatasync
    failures = {"left": 1}

    def failing_fdatasync(fd: int) -> None:
        if failures["left"] and Path(f"/proc/self/fd/{fd}").readlink().suffix == ".open":
            failures["left"] -= 1
            raise OSError(5, "Input/output error (injected)")
        real(fd)

    monkeypatch.setattr(os, "fdatasync", failing_fdatasync)
    status, code, _ = code_of(
        lambda: client.put_object(Bucket=bucket, Key="lost", Body=b"never acknowledged")
    )
    assert (status, code) == (500, "InternalError")
    monkeypatch.setattr(os, "fdatasync", real)
    # The failed file was resealed at its last durable point and uploaded; new PUTs go on.
    wait_for(lambda: indexed_objects(s3, bucket) == 3)
    after = client.put_object(Bucket=bucket, Key="after", Body=b"new file")
    daemon.stop()
    for location in before.values():
        assert fetch(s3, location) == b"durable"
    assert fetch(s3, Location.from_headers(after["ResponseMetadata"]["HTTPHeaders"])) == b"new file"
    assert indexed_objects(s3, bucket) == 4  # "lost" is in no index


def test_full_disk_rolls_back_and_pushes_back(
    s3_server: LocalS3, proxy: FaultProxy, s3: S3Client, bucket: str, tmp_path: Path
) -> None:
    """The spool on a 2 MiB tmpfs (in a private mount namespace): ENOSPC mid-write."""
    proxy.set("blackhole")
    spool = tmp_path / "spool"
    spool.mkdir()
    wrapper = (
        "unshare",
        "--user",
        "--map-root-user",
        "--mount",
        "sh",
        "-c",
        'mount -t tmpfs -o size=2m tmpfs "$0" && exec "$@"',
        str(spool),
    )
    with DaemonProcess(
        tmp_path,
        s3_server,
        wrapper=wrapper,
        batch={"linger_ms": 60_000},
        upstream={"endpoint_url": proxy.url, "read_timeout_s": 1, "connect_timeout_s": 1},
        shutdown={"drain_timeout_s": 30},
    ) as process:
        client = process.client()
        body = os.urandom(300 * KB)
        acked: dict[str, Location] = {}
        for number in range(12):
            try:
                answer = client.put_object(Bucket=bucket, Key=f"d/{number}", Body=body)
            except ClientError as exc:
                assert exc.response["Error"]["Code"] == "SlowDown"
                break
            acked[f"d/{number}"] = Location.from_headers(answer["ResponseMetadata"]["HTTPHeaders"])
        else:
            pytest.fail("the 2 MiB disk never filled")
        assert "No space left on device" in process.log()
        proxy.set("pass")
        assert process.terminate() == 0
    assert indexed_objects(s3, bucket) == len(acked)
    for key, location in acked.items():
        assert fetch(s3, location) == body, key


def _metric(admin_url: str, name: str) -> float:
    with urllib.request.urlopen(admin_url + "/metrics", timeout=10) as answer:  # noqa: S310
        text = answer.read().decode()
    [value] = [line.split()[1] for line in text.splitlines() if line.startswith(name + " ")]
    return float(value)


def test_a_sealed_tar_cut_inside_a_member_is_cut_to_its_complete_members(
    s3_server: LocalS3, s3: S3Client, bucket: str, tmp_path: Path
) -> None:
    """A sealed tar waiting for upload loses its tail (disk trouble, a bad copy): the restart
    uploads only its complete members, as a valid tar, and stops serving the cut object."""
    [dead_port] = free_ports(1)
    bodies = {"first": os.urandom(700), "second": os.urandom(1500), "lost": os.urandom(3000)}
    with DaemonProcess(
        tmp_path,
        s3_server,
        upstream={"endpoint_url": f"http://127.0.0.1:{dead_port}"},
        batch={"max_records": 3, "linger_ms": 600_000},
    ) as process:
        client = process.client()
        puts = {
            key: client.put_object(Bucket=bucket, Key=key, Body=body)
            for key, body in bodies.items()
        }
        sealed = tmp_path / "spool" / bucket
        wait_for(lambda: any(p.suffix == ".tar" for p in sealed.iterdir()))
        # Served before the damage; the read also writes the catalog's queued rows (else a
        # kill within the queue's 50 ms leaves the catalog without them).
        assert client.get_object(Bucket=bucket, Key="lost")["Body"].read() == bodies["lost"]
        process.kill()
    [tar] = [p for p in sealed.iterdir() if p.suffix == ".tar"]
    lost = Location.from_headers(puts["lost"]["ResponseMetadata"]["HTTPHeaders"])
    with tar.open("r+b") as f:
        f.truncate(lost.offset + 100)

    with DaemonProcess(tmp_path, s3_server) as process:
        client = process.client()
        for key in ("first", "second"):
            answer = client.get_object(Bucket=bucket, Key=key)
            assert answer["ETag"] == puts[key]["ETag"]
            assert answer["Body"].read() == bodies[key]
        status, code, _ = code_of(lambda: client.get_object(Bucket=bucket, Key="lost"))
        assert (status, code) == (404, "NoSuchKey")
        admin_url = f"http://127.0.0.1:{process.admin_port}"
        assert _metric(admin_url, "s3batchd_recovery_lost_objects_total") == 1
        assert "s3://" + bucket + "/lost was acknowledged but its bytes" in process.log()
        wait_for(lambda: indexed_objects(s3, bucket) == 2)
        uploaded = tmp_path / "uploaded.tar"
        uploaded.write_bytes(s3.get_object(Bucket=bucket, Key=lost.tar_key)["Body"].read())
        listing = subprocess.run(
            ["tar", "-tf", str(uploaded)], capture_output=True, text=True, check=False, timeout=60
        )
        assert (listing.returncode, listing.stderr) == (0, "")
        assert listing.stdout.split() == ["first", "second"]
        status, code, _ = code_of(lambda: client.get_object(Bucket=bucket, Key="lost"))
        assert (status, code) == (404, "NoSuchKey")
        assert process.terminate() == 0


def test_a_sealed_tar_with_a_damaged_member_keeps_the_members_after_it(
    s3_server: LocalS3, s3: S3Client, bucket: str, tmp_path: Path
) -> None:
    """One member's data damaged in the middle of a sealed tar: the restart skips it (404),
    serves and uploads every other member (after it too), as a tar GNU tar lists, and keeps
    the damaged bytes in ``_quarantine/``."""
    [dead_port] = free_ports(1)
    keys = ["first", "damaged", "third", "fourth"]
    bodies = {key: os.urandom(700 + 300 * i) for i, key in enumerate(keys)}
    with DaemonProcess(
        tmp_path,
        s3_server,
        upstream={"endpoint_url": f"http://127.0.0.1:{dead_port}"},
        batch={"max_records": 4, "linger_ms": 600_000},
    ) as process:
        client = process.client()
        puts = {
            key: client.put_object(Bucket=bucket, Key=key, Body=body)
            for key, body in bodies.items()
        }
        sealed = tmp_path / "spool" / bucket
        wait_for(lambda: any(p.suffix == ".tar" for p in sealed.iterdir()))
        assert client.get_object(Bucket=bucket, Key="fourth")["Body"].read() == bodies["fourth"]
        process.kill()
    [tar] = [p for p in sealed.iterdir() if p.suffix == ".tar"]
    damaged = Location.from_headers(puts["damaged"]["ResponseMetadata"]["HTTPHeaders"])
    with tar.open("r+b") as f:
        f.seek(damaged.offset + 10)
        f.write(b"\xff\x00")

    with DaemonProcess(tmp_path, s3_server) as process:
        client = process.client()
        kept = ["first", "third", "fourth"]
        for key in kept:
            answer = client.get_object(Bucket=bucket, Key=key)
            assert answer["ETag"] == puts[key]["ETag"]
            assert answer["Body"].read() == bodies[key]
        status, code, _ = code_of(lambda: client.get_object(Bucket=bucket, Key="damaged"))
        assert (status, code) == (404, "NoSuchKey")
        admin_url = f"http://127.0.0.1:{process.admin_port}"
        assert _metric(admin_url, "s3batchd_recovery_lost_objects_total") == 1
        [saved] = (tmp_path / "spool" / "_quarantine").iterdir()
        assert saved.name.startswith(f"{bucket}--{tar.stem}.")
        assert bodies["damaged"][12:] in saved.read_bytes()
        wait_for(lambda: indexed_objects(s3, bucket) == 3)
        uploaded = tmp_path / "uploaded.tar"
        uploaded.write_bytes(s3.get_object(Bucket=bucket, Key=damaged.tar_key)["Body"].read())
        listing = subprocess.run(
            ["tar", "-tf", str(uploaded)], capture_output=True, text=True, check=False, timeout=60
        )
        assert (listing.returncode, listing.stderr) == (0, "")
        assert listing.stdout.split() == kept
        for key in kept:
            answer = client.get_object(Bucket=bucket, Key=key)  # from the bucket now
            assert answer["Body"].read() == bodies[key]
        assert process.terminate() == 0


def test_a_stranded_batch_resealed_without_a_damaged_member_stops_serving_it(
    start_daemon: DaemonFactory, s3: S3Client, bucket: str
) -> None:
    """A batch whose seal failed is sealed by a retry; a member damaged meanwhile is left
    out, and the catalog follows: its key answers 404, not 500 from bytes that are gone."""
    daemon = start_daemon(batch={"linger_ms": 600_000, "max_records": 3})
    client = daemon.client()
    bodies = {"one": b"first" * 100, "two": b"second" * 100, "three": b"third" * 100}
    puts = {
        key: client.put_object(Bucket=bucket, Key=key, Body=body)
        for key, body in list(bodies.items())[:2]
    }
    bucket_dir = daemon.settings.spool.dir / bucket
    with read_only(bucket_dir):
        puts["three"] = client.put_object(Bucket=bucket, Key="three", Body=bodies["three"])
        wait_for(lambda: bool(daemon.pipeline.batcher.stranded))
        [open_file] = bucket_dir.glob("*.open")
        last = Location.from_headers(puts["three"]["ResponseMetadata"]["HTTPHeaders"])
        with open_file.open("r+b") as f:
            f.seek(last.offset + 3)
            f.write(b"X")
    wait_for(lambda: indexed_objects(s3, bucket) == 2)
    for key in ("one", "two"):
        assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == bodies[key]
    status, code, _ = code_of(lambda: client.get_object(Bucket=bucket, Key="three"))
    assert (status, code) == (404, "NoSuchKey")
