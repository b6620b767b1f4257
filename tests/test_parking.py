"""Parked batches: a bucket that refuses uploads holds up no other bucket, its batches stay in
the spool (across restarts) until retried, or exported and discarded by an operator.

The daemon runs against a SeaweedFS of its own whose identities file gives the daemon's key
write access to a few buckets only: the others answer AccessDenied, as a bucket the
credentials may not write does on AWS."""

from __future__ import annotations

import http.client
import json
import pickle
import random
import tarfile
import urllib.parse
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, cast

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from click.testing import CliRunner

from s3batchd.cli.main import EXIT_BATCHES_KEPT, main
from s3batchd.cli.seaweed import LocalS3, start_local_s3
from s3batchd.cli.status import Samples, fetch
from s3batchd.config import UploadConfig
from s3batchd.constants import MB
from s3batchd.errors import FAILURE_REASONS, ConflictError, UploadError
from s3batchd.server.metrics import OTHER_BUCKETS, PARKED_BUCKET_LABELS, parked_by_bucket
from s3batchd.spool.parking import parks, retry_wait_s
from s3batchd.upload.upstream import classify, failure_reason
from tests.conftest import wait_for
from tests.daemon_process import DaemonProcess

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from s3batchd.batching.pipeline import Pipeline

DAEMON_KEY, DAEMON_SECRET = "parking-daemon", "parking-daemon-secret"
DAEMON_ENV = {"AWS_ACCESS_KEY_ID": DAEMON_KEY, "AWS_SECRET_ACCESS_KEY": DAEMON_SECRET}
#: The buckets the daemon's key may write (every other bucket answers AccessDenied).
WRITABLE = ("good-threads", "good-child", "later", "good-quota", "gone-soon")


@pytest.fixture(scope="module")
def restricted_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalS3]:
    """A SeaweedFS where the test's key is admin and the daemon's may write ``WRITABLE``."""
    directory = tmp_path_factory.mktemp("restricted-seaweedfs")
    identities = directory / "identities.json"
    admin_key, admin_secret = "parking-admin", "parking-admin-secret"
    identities.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "admin",
                        "credentials": [{"accessKey": admin_key, "secretKey": admin_secret}],
                        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                    },
                    {
                        "name": "daemon",
                        "credentials": [{"accessKey": DAEMON_KEY, "secretKey": DAEMON_SECRET}],
                        "actions": ["Read", "List", "Tagging", *(f"Write:{b}" for b in WRITABLE)],
                    },
                ]
            }
        )
    )
    server = start_local_s3(
        directory / "data", access_key=admin_key, secret_key=admin_secret, s3_config=identities
    )
    yield server
    server.stop()


def _samples(daemon: DaemonProcess) -> Samples:
    return fetch(f"http://127.0.0.1:{daemon.admin_port}")[1]


def _by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    return {dict(labels)[label]: value for labels, value in samples.get(name, {}).items()}


def _keys(s3: S3Client, bucket: str) -> list[str]:
    return [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]


def client_keys(daemon: DaemonProcess, bucket: str) -> list[Any]:
    """The listing of ``bucket`` through the daemon (the objects it serves)."""
    return list(daemon.client().list_objects_v2(Bucket=bucket).get("Contents", []))


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


@pytest.mark.parametrize("child_processes", [False, True], ids=["threads", "child"])
def test_refused_buckets_do_not_hold_up_the_others(
    restricted_s3: LocalS3, tmp_path: Path, child_processes: bool
) -> None:
    mode = "child" if child_processes else "threads"
    admin = restricted_s3.client()
    good, denied = f"good-{mode}", [f"denied-a-{mode}", f"denied-b-{mode}"]
    for bucket in (good, *denied):
        admin.create_bucket(Bucket=bucket)
    daemon = DaemonProcess(
        tmp_path,
        restricted_s3,
        env=DAEMON_ENV,
        # Parked batches are not tried again while the test looks at them: a retry in
        # progress takes a batch out of the parked counts for a moment.
        upload={
            "concurrency": 2,
            "child_processes": child_processes,
            "parked_retry_base_s": 3600,
            "parked_retry_max_s": 7200,
        },
        batch={"max_records": 1},
    )
    with daemon:
        client = daemon.client()
        for bucket in denied:  # one 1-byte PUT each, acknowledged, then refused upstream
            client.put_object(Bucket=bucket, Key="one-byte", Body=b"x")
        # Both upload workers have met a refusal (on old code each then retried it forever).
        # Counted by the parking lines: the bucketmodes lookups log AccessDenied too.
        wait_for(lambda: daemon.log().count("parked batch") >= 2, timeout=60)
        client.put_object(Bucket=good, Key="k", Body=b"good")
        wait_for(lambda: len(_keys(admin, good)) == 2, timeout=60)  # its tar and index

        samples = _samples(daemon)
        assert _by_label(samples, "s3batchd_parked_batches", "bucket") == dict.fromkeys(denied, 1)
        failures = _by_label(samples, "s3batchd_upload_failures_total", "reason")
        assert set(failures) == set(FAILURE_REASONS)
        assert failures["access_denied"] >= 2
        code, status = _cli("status", "--config", str(daemon.config_path))
        assert code == 0, status
        assert "parked:    2 batches" in status
        assert all(f"{bucket} 1" in status for bucket in denied)
        code, listed = _cli("parked", "list", "--config", str(daemon.config_path))
        assert code == 0, listed
        assert listed.count("access_denied") == 2
        assert all(bucket in listed for bucket in denied)
        spool = tmp_path / "spool"
        assert sorted(p.parent.name for p in spool.glob("*/*.parked")) == sorted(denied)
        # PUTs are still taken, to every bucket.
        client.put_object(Bucket=good, Key="k2", Body=b"more")
        client.put_object(Bucket=denied[0], Key="two", Body=b"y")
        wait_for(lambda: len(_keys(admin, good)) == 4, timeout=60)
        assert daemon.terminate() == EXIT_BATCHES_KEPT  # parked batches kept in the spool
    assert len(list(spool.glob("*/*.tar"))) == 3


def test_parked_batches_survive_a_restart_then_retry_export_and_discard(
    restricted_s3: LocalS3, tmp_path: Path
) -> None:
    admin = restricted_s3.client()
    later, denied = "later", "denied-c"
    for bucket in (later, denied):
        admin.create_bucket(Bucket=bucket)
    daemon = DaemonProcess(
        tmp_path,
        restricted_s3,
        env=DAEMON_ENV,
        batch={"linger_ms": 600_000},
        upload={"parked_retry_base_s": 3600, "parked_retry_max_s": 7200},
    )
    config = str(daemon.config_path)
    spool = tmp_path / "spool"
    with daemon:
        client = daemon.client()
        client.put_object(Bucket=later, Key="a", Body=b"alpha")
        client.put_object(Bucket=denied, Key="b", Body=b"beta")
        # The bucket disappears after the 200, before the batch is sealed and uploaded.
        admin.delete_bucket(Bucket=later)
        assert daemon.terminate() == EXIT_BATCHES_KEPT
    assert sorted(p.parent.name for p in spool.glob("*/*.parked")) == [denied, later]
    [later_id] = [p.stem for p in (spool / later).glob("*.parked")]
    [denied_id] = [p.stem for p in (spool / denied).glob("*.parked")]
    assert "no_such_bucket" in (spool / later / f"{later_id}.parked").read_text()

    daemon.start()  # the same spool: both stay parked, no attempt before the wait is over
    try:
        samples = _samples(daemon)
        assert _by_label(samples, "s3batchd_parked_batches", "bucket") == {denied: 1, later: 1}
        assert sum(_by_label(samples, "s3batchd_upload_failures_total", "reason").values()) == 0

        admin.create_bucket(Bucket=later)
        code, output = _cli("parked", "retry", later_id, "--config", config)
        assert code == 0, output
        wait_for(lambda: len(_keys(admin, later)) == 2, timeout=60)
        wait_for(lambda: not (spool / later / f"{later_id}.parked").exists())
        assert daemon.client().get_object(Bucket=later, Key="a")["Body"].read() == b"alpha"
        code, output = _cli("parked", "retry", later_id, "--config", config)
        assert code != 0
        assert "not parked" in output

        code, output = _cli("parked", "discard", denied_id, "--config", config)
        assert code != 0
        assert "Export it first" in output
        assert (spool / denied / f"{denied_id}.tar").exists()

        exported = tmp_path / "exported"
        code, output = _cli("parked", "export", denied_id, str(exported), "--config", config)
        assert code == 0, output
        with tarfile.open(exported / f"{denied_id}.tar") as archive:
            [member] = archive.getmembers()
            body = archive.extractfile(member)
            assert body is not None
            assert body.read() == b"beta"
        index = json.loads((exported / f"{denied_id}.index.json").read_text())
        assert index["tar"]["bucket"] == denied
        state = json.loads((exported / f"{denied_id}.parked.json").read_text())
        assert state["reason"] == "access_denied"

        assert [o["Key"] for o in client_keys(daemon, denied)] == ["b"]
        code, output = _cli("parked", "discard", denied_id, "--yes", "--config", config)
        assert code == 0, output
        assert not list((spool / denied).iterdir())
        assert client_keys(daemon, denied) == []  # forgotten by the catalog too
        code, output = _cli("parked", "list", "--config", config)
        assert code == 0
        assert "0 parked batches" in output
        samples = _samples(daemon)
        assert _by_label(samples, "s3batchd_parked_batches", "bucket") == {}
    finally:
        status = daemon.terminate()
    assert status == 0  # nothing left in the spool


def test_discard_offline_needs_the_spool_lock_and_confirmation(
    restricted_s3: LocalS3, tmp_path: Path
) -> None:
    admin = restricted_s3.client()
    admin.create_bucket(Bucket="denied-d")
    daemon = DaemonProcess(tmp_path, restricted_s3, env=DAEMON_ENV, batch={"linger_ms": 600_000})
    with daemon:
        daemon.client().put_object(Bucket="denied-d", Key="c", Body=b"gamma")
        assert daemon.terminate() == EXIT_BATCHES_KEPT
    config = str(daemon.config_path)
    [batch_id] = [p.stem for p in (tmp_path / "spool" / "denied-d").glob("*.parked")]
    exported = tmp_path / "exported"
    code, output = _cli(
        "parked", "discard", batch_id, "--yes", "--export-to", str(exported), "--config", config
    )
    assert code == 0, output
    assert (exported / f"{batch_id}.tar").stat().st_size > 0
    assert not list((tmp_path / "spool" / "denied-d").iterdir())


def test_failure_reasons_are_a_small_fixed_set() -> None:
    cases = {
        ("NoSuchBucket", 404): "no_such_bucket",
        ("AccessDenied", 403): "access_denied",
        ("AllAccessDisabled", 403): "access_denied",
        ("InvalidAccessKeyId", 403): "credentials",
        ("SignatureDoesNotMatch", 403): "credentials",
        ("InvalidBucketName", 400): "invalid_bucket_name",
        ("KMS.DisabledException", 400): "kms",
        ("SlowDown", 503): "throttled",
        ("", 429): "throttled",
        ("InternalError", 500): "server_error",
        ("ServiceUnavailable", 503): "server_error",
        ("InvalidArgument", 400): "other",
    }
    assert {case: failure_reason(*case) for case in cases} == cases
    assert set(cases.values()) <= set(FAILURE_REASONS)
    assert ConflictError("taken").reason == "conflict"


def test_only_refusals_of_one_bucket_or_batch_park() -> None:
    def error(code: str, status: int) -> UploadError:
        answer: Any = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
        return classify(ClientError(answer, "PutObject"), "upload")

    for code, status in (("NoSuchBucket", 404), ("AccessDenied", 403), ("KMS.NotFound", 400)):
        assert parks(error(code, status)), code
    for code, status in (("SlowDown", 503), ("InternalError", 500), ("ExpiredToken", 400)):
        assert not parks(error(code, status)), code
    assert parks(ConflictError("s3://b/k holds another object"))


def test_upload_error_keeps_its_reason_across_processes() -> None:
    error = UploadError("refused", retriable=False, code="AccessDenied", reason="access_denied")
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301  our own bytes
    assert (copy.retriable, copy.code, copy.reason) == (False, "AccessDenied", "access_denied")


def test_parked_waits_double_up_to_the_cap_and_never_near_zero() -> None:
    config = UploadConfig(parked_retry_base_s=60, parked_retry_max_s=600)
    rng = random.Random(1)
    for attempts, ceiling in ((1, 60), (2, 120), (4, 480), (5, 600), (40, 600)):
        waits = [retry_wait_s(attempts, config, rng) for _ in range(200)]
        assert min(waits) >= ceiling / 2
        assert max(waits) <= ceiling


def test_parked_gauges_label_a_bounded_number_of_buckets() -> None:
    batches = [
        SimpleNamespace(batch=SimpleNamespace(bucket=f"b{i:02d}", size=10))
        for i in range(PARKED_BUCKET_LABELS + 5)
        for _ in range(1 + (i < 3))  # b00..b02 have two each: they rank first
    ]
    pipeline = cast("Pipeline", SimpleNamespace(uploader=SimpleNamespace(parked=batches)))
    counts, sizes = parked_by_bucket(pipeline)
    assert len(counts) == PARKED_BUCKET_LABELS + 1
    assert counts["b00"] == 2
    assert counts[OTHER_BUCKETS] == 5
    assert sum(counts.values()) == len(batches)
    assert sizes[OTHER_BUCKETS] == 50


def _put_on_fresh_connections(port: int, bucket: str, count: int) -> None:
    """PUT ``count`` objects, each on a new connection (the kernel spreads them over workers)."""
    for number in range(count):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("PUT", f"/{bucket}/w/{number}", body=b"v")
        reply = connection.getresponse()
        reply.read()
        connection.close()
        assert reply.status == 200


def _parked_from_admin(admin_port: int) -> list[dict[str, Any]]:
    """``GET /parked`` on a new connection (either worker may take it)."""
    connection = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=10)
    connection.request("GET", "/parked")
    reply = connection.getresponse()
    body = json.loads(reply.read())
    connection.close()
    assert reply.status == 200
    return list(body["parked"])


def test_parked_commands_reach_every_worker(restricted_s3: LocalS3, tmp_path: Path) -> None:
    restricted_s3.client().create_bucket(Bucket="denied-w")
    daemon = DaemonProcess(
        tmp_path,
        restricted_s3,
        env=DAEMON_ENV,
        server={"workers": 2},
        batch={"max_records": 1},
        upload={"parked_retry_base_s": 3600, "parked_retry_max_s": 7200},
    )
    config = str(daemon.config_path)
    spool = tmp_path / "spool"
    with daemon:
        wait_for(lambda: daemon.log().count("Application startup complete") == 2)
        _put_on_fresh_connections(daemon.port, "denied-w", 20)
        wait_for(lambda: len(list(spool.glob("**/denied-w/*.parked"))) == 20, timeout=60)
        by_worker = [
            [p.stem for p in (spool / "denied-w").glob("*.parked")],
            [p.stem for p in (spool / "_workers" / "1" / "denied-w").glob("*.parked")],
        ]
        assert all(by_worker), by_worker  # both workers parked some
        for _ in range(6):  # any worker answers with every worker's
            assert len(_parked_from_admin(daemon.admin_port)) == 20
        code, listed = _cli("parked", "list", "--config", config)
        assert code == 0
        assert "20 parked batches" in listed

        code, output = _cli("parked", "retry", "--all", "--config", config)
        assert code == 0, output
        assert output.count("retrying ") == 20
        wait_for(lambda: daemon.log().count("access_denied, attempt 2)") == 20, timeout=60)

        for ids in by_worker:  # one batch of each worker, through whichever takes the request
            code, output = _cli("parked", "discard", ids[0], "--yes", "--config", config)
            assert code == 0, output
        assert len(_parked_from_admin(daemon.admin_port)) == 18
        assert len(list(spool.glob("**/denied-w/*.tar"))) == 18
        assert daemon.terminate() == EXIT_BATCHES_KEPT
    # One worker again: it adopts worker 1's batches with their parked state.
    single = DaemonProcess(
        tmp_path,
        restricted_s3,
        env=DAEMON_ENV,
        upload={"parked_retry_base_s": 3600, "parked_retry_max_s": 7200},
    )
    with single:
        assert "adopted" in single.log()
        assert not list((spool / "_workers" / "1").rglob("*.parked"))
        assert len(list((spool / "denied-w").glob("*.parked"))) == 18
        samples = _samples(single)
        assert _by_label(samples, "s3batchd_parked_batches", "bucket") == {"denied-w": 18}
        assert sum(_by_label(samples, "s3batchd_upload_failures_total", "reason").values()) == 0
        assert single.terminate() == EXIT_BATCHES_KEPT


#: Parked batches are not tried again while a test looks at them.
NO_RETRY = {"parked_retry_base_s": 3600, "parked_retry_max_s": 7200}


def _error_of(call: Any) -> dict[str, Any]:
    """The S3 error a boto3 call raised (its code, message, HTTP status)."""
    with pytest.raises(ClientError) as raised:
        call()
    response = raised.value.response
    return {**response["Error"], "status": response["ResponseMetadata"]["HTTPStatusCode"]}


def _status(url: str, method: str = "GET", body: bytes = b"", **headers: str) -> int:
    """The HTTP status of a request to the admin listener."""
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    connection.request(method, parts.path, body=body, headers=headers)
    reply = connection.getresponse()
    reply.read()
    connection.close()
    return reply.status


def _all_parked(folder: Path, count: int) -> bool:
    return len(list(folder.glob("*.parked"))) == count


def test_a_refusing_bucket_gets_a_bounded_share_of_the_spool(
    restricted_s3: LocalS3, tmp_path: Path
) -> None:
    admin = restricted_s3.client()
    good, denied = "good-quota", "denied-quota"
    for bucket in (good, denied):
        admin.create_bucket(Bucket=bucket)
    daemon = DaemonProcess(
        tmp_path,
        restricted_s3,
        env=DAEMON_ENV,
        spool={"max_bytes": 1 * MB},
        batch={"max_records": 1},
        upload=NO_RETRY,
    )
    body = b"x" * 20_000
    parked_dir = tmp_path / "spool" / denied
    with daemon:
        client = daemon.client()
        accepted = 0
        while accepted < 100:  # a steady writer (the spool holds about 50 such batches)
            try:
                client.put_object(Bucket=denied, Key=f"w/{accepted}", Body=body)
            except ClientError as exc:
                refused: dict[str, Any] = {**exc.response["Error"]}
                refused["status"] = exc.response["ResponseMetadata"]["HTTPStatusCode"]
                break
            accepted += 1
            wait_for(partial(_all_parked, parked_dir, accepted), timeout=60)
        else:
            pytest.fail("every PUT to the refusing bucket was taken")
        assert refused["status"] == 503
        assert refused["Code"] == "SlowDown"
        assert "AccessDenied" in refused["Message"]
        assert "parked" in refused["Message"]
        # A quarter of the spool (the default cap), give or take one batch.
        assert accepted <= (MB // 4) // len(body) + 1
        # Every other bucket is still served, and the daemon is ready.
        for number in range(3):
            client.put_object(Bucket=good, Key=f"k/{number}", Body=body)
        assert _status(f"http://127.0.0.1:{daemon.admin_port}/readyz") == 200
        assert (
            _error_of(lambda: client.put_object(Bucket=denied, Key="more", Body=b"y"))["Code"]
            == "SlowDown"
        )
        # Discarding a parked batch makes room for the bucket again.
        batch_id = next(parked_dir.glob("*.parked")).stem
        code, output = _cli(
            "parked", "discard", batch_id, "--yes", "--config", str(daemon.config_path)
        )
        assert code == 0, output
        client.put_object(Bucket=denied, Key="after-discard", Body=b"z")
        assert daemon.terminate() == EXIT_BATCHES_KEPT


def test_a_bucket_deleted_after_its_check_answers_no_such_bucket_once_refused(
    restricted_s3: LocalS3, tmp_path: Path
) -> None:
    admin = restricted_s3.client()
    bucket = "gone-soon"
    admin.create_bucket(Bucket=bucket)
    daemon = DaemonProcess(
        tmp_path, restricted_s3, env=DAEMON_ENV, batch={"max_records": 1}, upload=NO_RETRY
    )
    with daemon:
        client = daemon.client()
        client.put_object(Bucket=bucket, Key="first", Body=b"1")  # the check: it exists
        wait_for(lambda: len(_keys(admin, bucket)) == 2, timeout=60)
        for key in _keys(admin, bucket):
            admin.delete_object(Bucket=bucket, Key=key)
        admin.delete_bucket(Bucket=bucket)
        client.put_object(Bucket=bucket, Key="second", Body=b"2")  # still cached as existing
        spool = tmp_path / "spool" / bucket
        wait_for(lambda: len(list(spool.glob("*.parked"))) == 1, timeout=60)
        wait_for(lambda: f"bucket {bucket} is missing upstream" in daemon.log(), timeout=60)
        refused = _error_of(lambda: client.put_object(Bucket=bucket, Key="third", Body=b"3"))
        assert (refused["status"], refused["Code"]) == (404, "NoSuchBucket")
        assert len(list(spool.glob("*.tar"))) == 1  # nothing more was spooled
        assert daemon.terminate() == EXIT_BATCHES_KEPT


def test_upload_durability_writers_get_the_refusal_of_a_parked_batch(
    restricted_s3: LocalS3, tmp_path: Path
) -> None:
    admin = restricted_s3.client()
    denied = "denied-upload"
    admin.create_bucket(Bucket=denied)
    daemon = DaemonProcess(
        tmp_path,
        restricted_s3,
        env=DAEMON_ENV,
        spool={"durability": "upload"},
        batch={"linger_ms": 50},
        upload=NO_RETRY,
    )
    with daemon:
        # A read timeout in place of the hang of old code, so the test ends by itself.
        client = boto3.client(
            "s3",
            endpoint_url=daemon.url,
            region_name="us-east-1",
            aws_access_key_id="app-key",
            aws_secret_access_key="app-secret",
            config=Config(read_timeout=30, retries={"total_max_attempts": 1}),
        )
        refused = _error_of(lambda: client.put_object(Bucket=denied, Key="k", Body=b"kept"))
        assert (refused["status"], refused["Code"]) == (403, "AccessDenied")
        # Not lost: parked in the spool, and readable through the daemon.
        assert len(list((tmp_path / "spool" / denied).glob("*.parked"))) == 1
        assert client.get_object(Bucket=denied, Key="k")["Body"].read() == b"kept"
        assert daemon.terminate() == EXIT_BATCHES_KEPT


def test_parked_commands_need_a_json_body(restricted_s3: LocalS3, tmp_path: Path) -> None:
    admin = restricted_s3.client()
    denied = "denied-csrf"
    admin.create_bucket(Bucket=denied)
    daemon = DaemonProcess(
        tmp_path, restricted_s3, env=DAEMON_ENV, batch={"max_records": 1}, upload=NO_RETRY
    )
    spool = tmp_path / "spool" / denied
    with daemon:
        daemon.client().put_object(Bucket=denied, Key="k", Body=b"v")
        wait_for(lambda: len(list(spool.glob("*.parked"))) == 1, timeout=60)
        batch_id = next(spool.glob("*.parked")).stem
        base = f"http://127.0.0.1:{daemon.admin_port}/parked"
        # What a web page may send cross-site without a CORS preflight.
        for path, body in (("/discard", {"batch_id": batch_id}), ("/retry", {"all": True})):
            for content_type in ("text/plain", "application/x-www-form-urlencoded"):
                status = _status(
                    base + path, "POST", json.dumps(body).encode(), **{"Content-Type": content_type}
                )
                assert status == 415, (path, content_type)
        assert _status(base + "/retry", "POST", json.dumps({"all": True}).encode()) == 415
        assert len(list(spool.glob("*.tar"))) == 1
        code, output = _cli(
            "parked", "discard", batch_id, "--yes", "--config", str(daemon.config_path)
        )
        assert code == 0, output
        assert not list(spool.glob("*.tar"))
        daemon.terminate()
