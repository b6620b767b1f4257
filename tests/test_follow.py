"""catalog.follow: daemons with separate spools in front of one bucket present the same bucket.

Real processes: two or three ``s3batchd serve`` in front of the session's SeaweedFS (one
through the fault proxy), each with its own spool and catalog, following the bucket every
0.3 s.
"""

from __future__ import annotations

import json
import shutil
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from botocore.exceptions import ClientError

from s3batchd.cli.seaweed import LocalS3
from s3batchd.cli.status import fetch, render
from tests.conftest import wait_for
from tests.daemon_process import DaemonProcess
from tests.faultproxy import FaultProxy

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

FOLLOW = {"follow_interval_s": 0.3, "follow_idle_max_s": 0.6}
BATCH = {"linger_ms": 200}


def _daemon(
    directory: Path,
    s3_server: LocalS3,
    upstream: dict[str, Any] | None = None,
    catalog: dict[str, Any] | None = None,
) -> DaemonProcess:
    directory.mkdir(parents=True, exist_ok=True)
    return DaemonProcess(
        directory,
        s3_server,
        catalog={**FOLLOW, **(catalog or {})},
        batch=BATCH,
        upstream=upstream or {},
    )


@pytest.fixture
def fleet(tmp_path: Path, s3_server: LocalS3) -> Iterator[list[DaemonProcess]]:
    """Two daemons, A and B, each with its own spool."""
    daemons = [_daemon(tmp_path / name, s3_server) for name in ("a", "b")]
    for daemon in daemons:
        daemon.start()
    yield daemons
    for daemon in daemons:
        daemon.close()


def _port(server: LocalS3) -> int:
    return int(server.endpoint_url.rsplit(":", 1)[1])


def _read(client: S3Client, bucket: str, key: str) -> dict[str, Any] | None:
    """The object through a daemon (body read), or None while it answers 404 or 503."""
    try:
        answer = client.get_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response["ResponseMetadata"]["HTTPStatusCode"] in (404, 503):
            return None
        raise
    return {
        "body": answer["Body"].read(),
        "etag": answer["ETag"],
        "type": answer["ContentType"],
        "metadata": answer["Metadata"],
        "length": answer["ContentLength"],
    }


def _wait_read(client: S3Client, bucket: str, key: str, timeout: float = 30) -> dict[str, Any]:
    found: list[dict[str, Any]] = []

    def readable() -> bool:
        answer = _read(client, bucket, key)
        if answer is not None:
            found.append(answer)
        return answer is not None

    wait_for(readable, timeout=timeout, interval=0.1)
    return found[-1]


def _status(client: S3Client, bucket: str, key: str) -> int:
    try:
        client.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        return int(exc.response["ResponseMetadata"]["HTTPStatusCode"])
    return 200


def test_a_key_written_through_one_daemon_is_read_through_another(
    fleet: list[DaemonProcess], bucket: str
) -> None:
    a, b = fleet
    written = a.client().put_object(
        Bucket=bucket,
        Key="docs/one.txt",
        Body=b"written through A",
        ContentType="text/plain",
        Metadata={"origin": "a"},
    )
    through_a = _wait_read(a.client(), bucket, "docs/one.txt")
    through_b = _wait_read(b.client(), bucket, "docs/one.txt")
    assert through_b == through_a
    assert through_b["body"] == b"written through A"
    assert through_b["etag"] == written["ETag"]
    assert through_b["metadata"] == {"origin": "a"}
    head = b.client().head_object(Bucket=bucket, Key="docs/one.txt")
    assert head["ETag"] == written["ETag"]
    assert head["ContentLength"] == len(b"written through A")
    assert head["Metadata"] == {"origin": "a"}
    listed = b.client().list_objects_v2(Bucket=bucket, Prefix="docs/")["Contents"]
    assert [(o["Key"], o["ETag"], o["Size"]) for o in listed] == [
        ("docs/one.txt", written["ETag"], len(b"written through A"))
    ]


def test_a_daemon_started_with_an_empty_spool_reads_every_key_written_before(
    tmp_path: Path, s3_server: LocalS3, bucket: str
) -> None:
    """A rollout with an emptyDir spool: the new pod's catalog is empty; it backfills."""
    bodies = {f"k/{n:03d}": f"object {n}".encode() * (n + 1) for n in range(40)}
    with _daemon(tmp_path / "a", s3_server) as daemon:
        client = daemon.client()
        etags = {
            key: client.put_object(Bucket=bucket, Key=key, Body=body)["ETag"]
            for key, body in bodies.items()
        }
        assert daemon.terminate() == 0  # everything uploaded
    shutil.rmtree(tmp_path / "a" / "spool")
    with _daemon(tmp_path / "a", s3_server) as daemon:
        client = daemon.client()
        for key, body in bodies.items():
            answer = _wait_read(client, bucket, key)
            assert (answer["body"], answer["etag"]) == (body, etags[key])
        listed = client.list_objects_v2(Bucket=bucket, Prefix="k/")["Contents"]
        assert [o["Key"] for o in listed] == sorted(bodies)
        status = render(*fetch(f"http://127.0.0.1:{daemon.admin_port}"))
        assert f"catalog:   {len(bodies)} objects" in status
        assert "backfill done" in status


def test_a_delete_through_one_daemon_hides_the_key_in_the_other(
    fleet: list[DaemonProcess], bucket: str
) -> None:
    a, b = fleet
    a.client().put_object(Bucket=bucket, Key="gone", Body=b"soon deleted")
    _wait_read(b.client(), bucket, "gone")
    b.client().delete_object(Bucket=bucket, Key="gone")
    assert _status(b.client(), bucket, "gone") == 404
    wait_for(lambda: _status(a.client(), bucket, "gone") == 404, timeout=30)


def test_a_delete_through_a_daemon_that_has_not_learned_the_key_yet_hides_it_everywhere(
    tmp_path: Path, s3_server: LocalS3, bucket: str
) -> None:
    """B follows slowly: it has not learned A's key when the delete comes through it; its
    tombstone is written all the same, and A learns it."""
    slow = {"follow_interval_s": 600.0, "follow_idle_max_s": 600.0}
    with (
        _daemon(tmp_path / "a", s3_server) as a,
        _daemon(tmp_path / "b", s3_server, catalog=slow) as b,
    ):
        assert b.client().list_objects_v2(Bucket=bucket)["KeyCount"] == 0  # B's one round
        a.client().put_object(Bucket=bucket, Key="unseen", Body=b"B never learned me")
        b.client().delete_object(Bucket=bucket, Key="unseen")
        wait_for(lambda: _status(a.client(), bucket, "unseen") == 404, timeout=30)
        assert _status(b.client(), bucket, "unseen") == 404


def test_overwrites_through_both_daemons_resolve_to_the_later_write_in_both(
    fleet: list[DaemonProcess], bucket: str
) -> None:
    a, b = fleet
    a.client().put_object(Bucket=bucket, Key="twice", Body=b"first, through A")
    _wait_read(b.client(), bucket, "twice")
    later = b.client().put_object(Bucket=bucket, Key="twice", Body=b"second, through B")

    def both_later() -> bool:
        answers = [_read(d.client(), bucket, "twice") for d in (a, b)]
        return all(x is not None and x["body"] == b"second, through B" for x in answers)

    wait_for(both_later, timeout=30)
    # Later rounds (A learning B's index again, B learning A's) change nothing.
    a.client().put_object(Bucket=bucket, Key="marker", Body=b"m")
    _wait_read(b.client(), bucket, "marker")
    for daemon in (a, b):
        answer = _read(daemon.client(), bucket, "twice")
        assert answer is not None
        assert (answer["body"], answer["etag"]) == (b"second, through B", later["ETag"])


def _list_errors(daemon: DaemonProcess) -> float:
    samples = fetch(f"http://127.0.0.1:{daemon.admin_port}")[1]
    errors = samples.get("s3batchd_catalog_errors_total", {})
    return errors.get((("backend", "sqlite"), ("operation", "list")), 0.0)


def _ready(daemon: DaemonProcess) -> bool:
    try:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{daemon.admin_port}/readyz", timeout=10
        ) as answer:
            return bool(json.loads(answer.read())["status"] == "ready")
    except urllib.error.HTTPError:
        return False


def test_failing_follow_lists_fail_no_put_and_reads_recover(
    tmp_path: Path, s3_server: LocalS3, bucket: str
) -> None:
    proxy = FaultProxy(_port(s3_server)).start()
    try:
        a = _daemon(tmp_path / "a", s3_server)
        b = _daemon(tmp_path / "b", s3_server, upstream={"endpoint_url": proxy.url})
        with a, b:
            a.client().put_object(Bucket=bucket, Key="before", Body=b"before the fault")
            _wait_read(b.client(), bucket, "before")
            proxy.set("error", status=503, code="SlowDown", only_target="list-type=2")
            failures: list[BaseException] = []

            def load() -> None:
                client = b.client()
                for n in range(150):
                    try:
                        client.put_object(Bucket=bucket, Key=f"load/{n}", Body=b"x" * 100)
                    except ClientError as exc:
                        failures.append(exc)

            writer = threading.Thread(target=load)
            writer.start()
            a.client().put_object(Bucket=bucket, Key="during", Body=b"during the fault")
            wait_for(lambda: _list_errors(b) > 0, timeout=60)
            # A key only the shared catalog could know: 503 SlowDown, not a NoSuchKey lie.
            assert _status(b.client(), bucket, "during") == 503
            with pytest.raises(ClientError) as listing:  # it would miss keys
                b.client().list_objects_v2(Bucket=bucket)
            assert listing.value.response["Error"]["Code"] == "SlowDown"
            assert _read(b.client(), bucket, "before") is not None  # learned before: still read
            assert _ready(b)
            writer.join(120)
            assert not failures
            own = _read(b.client(), bucket, "load/149")
            assert own is not None
            assert own["body"] == b"x" * 100
            samples = fetch(f"http://127.0.0.1:{b.admin_port}")[1]
            assert samples["s3batchd_catalog_follow_up"][(("bucket", bucket),)] == 0
            proxy.set("pass")
            answer = _wait_read(b.client(), bucket, "during")
            assert answer["body"] == b"during the fault"
            samples = fetch(f"http://127.0.0.1:{b.admin_port}")[1]
            assert samples["s3batchd_catalog_follow_up"][(("bucket", bucket),)] == 1
    finally:
        proxy.stop()
