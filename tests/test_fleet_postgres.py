"""A fleet on one PostgreSQL catalog (``catalog.backend = "postgres"``): daemons as real
processes with separate spools in front of one SeaweedFS, each seeing every batched key."""

from __future__ import annotations

import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from botocore.exceptions import ClientError
from prometheus_client.parser import text_string_to_metric_families

from s3batchd.cli.seaweed import LocalS3
from tests.conftest import wait_for
from tests.daemon_process import DaemonProcess
from tests.postgres import LocalPostgres, start_local_postgres

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

HEADERS = ("ETag", "ContentType", "ContentLength", "Metadata")


def fleet_daemon(
    directory: Path, s3_server: LocalS3, dsn: str, password: str | None = None
) -> DaemonProcess:
    """A daemon on the PostgreSQL catalog ``dsn`` (its password from PGPASSWORD if given)."""
    directory.mkdir(parents=True, exist_ok=True)
    env = {"PGPASSWORD": password} if password is not None else None
    return DaemonProcess(
        directory,
        s3_server,
        env=env,
        catalog={"backend": "postgres", "dsn": dsn},
        batch={"linger_ms": 200},
    )


def readable(client: S3Client, bucket: str, key: str) -> bool:
    try:
        client.head_object(Bucket=bucket, Key=key)
    except ClientError:
        return False
    return True


def summary(answer: Any) -> dict[str, Any]:
    return {name: answer.get(name) for name in HEADERS}


def scrape(daemon: DaemonProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    url = f"http://127.0.0.1:{daemon.admin_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as answer:
        text = answer.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def ready(daemon: DaemonProcess) -> int:
    url = f"http://127.0.0.1:{daemon.admin_port}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.fixture
def two(
    tmp_path: Path, s3_server: LocalS3, postgres_dsn: str, postgres_server: LocalPostgres
) -> Iterator[tuple[DaemonProcess, DaemonProcess]]:
    """Daemons A (DSN with its password) and B (password from PGPASSWORD), separate spools."""
    bare = postgres_dsn.replace(f":{postgres_server.password}@", "@")
    with (
        fleet_daemon(tmp_path / "a", s3_server, postgres_dsn) as a,
        fleet_daemon(tmp_path / "b", s3_server, bare, postgres_server.password) as b,
    ):
        yield a, b


KEYS = {
    "plain.txt": b"hello",
    "dir/sub/\u00fc \u00f1+%&=.bin": bytes(range(256)) * 9,
    "empty": b"",
}


def test_written_through_a_read_through_b(
    two: tuple[DaemonProcess, DaemonProcess], bucket: str
) -> None:
    a, b = two
    writer, reader = a.client(), b.client()
    for key, body in KEYS.items():
        writer.put_object(
            Bucket=bucket, Key=key, Body=body, ContentType="text/x-test", Metadata={"n": "1"}
        )
    for key in KEYS:
        wait_for(lambda key=key: readable(reader, bucket, key))  # type: ignore[misc]
    for key, body in KEYS.items():
        mine, theirs = (
            writer.get_object(Bucket=bucket, Key=key),
            reader.get_object(Bucket=bucket, Key=key),
        )
        assert mine["Body"].read() == theirs["Body"].read() == body, key
        assert summary(mine) == summary(theirs), key
        assert summary(writer.head_object(Bucket=bucket, Key=key)) == summary(
            reader.head_object(Bucket=bucket, Key=key)
        )
    listed = {
        (item["Key"], item["ETag"], item["Size"])
        for item in reader.list_objects_v2(Bucket=bucket)["Contents"]
    }
    assert listed == {
        (item["Key"], item["ETag"], item["Size"])
        for item in writer.list_objects_v2(Bucket=bucket)["Contents"]
    }
    assert {key for key, _, _ in listed} == set(KEYS)
    page = reader.list_objects_v2(Bucket=bucket, Prefix="dir/", Delimiter="/")
    assert [p["Prefix"] for p in page["CommonPrefixes"]] == ["dir/sub/"]
    metrics = scrape(b)
    assert ("s3batchd_catalog_rows", (("backend", "postgres"),)) in metrics  # counted at start
    assert metrics[("s3batchd_catalog_rows", (("backend", "sqlite"),))] == 0  # B wrote nothing
    errors = {k: v for k, v in metrics.items() if k[0] == "s3batchd_catalog_errors_total"}
    assert len(errors) == 6 and sum(errors.values()) == 0


def test_a_rollout_with_empty_spools_reads_everything(
    tmp_path: Path, s3_server: LocalS3, postgres_dsn: str, bucket: str
) -> None:
    with fleet_daemon(tmp_path / "old", s3_server, postgres_dsn) as old:
        client = old.client()
        for n in range(30):
            client.put_object(Bucket=bucket, Key=f"r/{n}", Body=f"body {n}".encode())
        assert old.terminate() == 0  # drained: uploaded, rows in PostgreSQL
    with fleet_daemon(tmp_path / "new", s3_server, postgres_dsn) as new:
        client = new.client()
        for n in range(30):
            assert client.get_object(Bucket=bucket, Key=f"r/{n}")["Body"].read() == (
                f"body {n}".encode()
            )
        listed = client.list_objects_v2(Bucket=bucket, Prefix="r/")["Contents"]
        assert len(listed) == 30


def test_deletes_and_overwrites_resolve_to_the_latest_write_everywhere(
    two: tuple[DaemonProcess, DaemonProcess], bucket: str
) -> None:
    a, b = two
    through_a, through_b = a.client(), b.client()
    through_a.put_object(Bucket=bucket, Key="gone", Body=b"soon deleted")
    wait_for(lambda: readable(through_b, bucket, "gone"))
    through_b.delete_object(Bucket=bucket, Key="gone")
    assert not readable(through_b, bucket, "gone")
    wait_for(lambda: not readable(through_a, bucket, "gone"))
    assert "Contents" not in through_a.list_objects_v2(Bucket=bucket, Prefix="gone")

    through_a.put_object(Bucket=bucket, Key="k", Body=b"first, through A")
    wait_for(lambda: readable(through_b, bucket, "k"))
    through_b.put_object(Bucket=bucket, Key="k", Body=b"second, through B")

    def later_everywhere() -> bool:
        return all(
            client.get_object(Bucket=bucket, Key="k")["Body"].read() == b"second, through B"
            for client in (through_a, through_b)
        )

    wait_for(later_everywhere)
    listed = through_a.list_objects_v2(Bucket=bucket, Prefix="k")["Contents"]
    assert [(item["Key"], item["Size"]) for item in listed] == [("k", 17)]


def test_postgres_stopped_under_put_load_loses_nothing(
    tmp_path: Path, s3_server: LocalS3, bucket: str
) -> None:
    server = start_local_postgres()  # its own: stopping it leaves the session's alone
    try:
        with (
            fleet_daemon(tmp_path / "a", s3_server, server.dsn()) as a,
            fleet_daemon(tmp_path / "b", s3_server, server.dsn()) as b,
        ):
            _outage(server, a, b, bucket)
    finally:
        server.remove()


def _outage(server: LocalPostgres, a: DaemonProcess, b: DaemonProcess, bucket: str) -> None:
    writer, reader = a.client(), b.client()
    written: dict[str, bytes] = {}
    failures: list[BaseException] = []
    stop = threading.Event()

    def load() -> None:
        n = 0
        while not stop.is_set():
            key, body = f"load/{n:05d}", f"object {n}".encode() * 10
            try:
                writer.put_object(Bucket=bucket, Key=key, Body=body)
            except Exception as exc:  # noqa: BLE001  every failure is a finding
                failures.append(exc)
            else:
                written[key] = body
            n += 1

    thread = threading.Thread(target=load)
    thread.start()
    try:
        wait_for(lambda: len(written) >= 50)
        wait_for(lambda: readable(reader, bucket, "load/00000"))
        server.stop()
        during = len(written)
        wait_for(lambda: len(written) >= during + 100)
        # A's own keys stay readable; B cannot know whether a key is batched: 503.
        assert (
            writer.get_object(Bucket=bucket, Key="load/00001")["Body"].read()
            == (written["load/00001"])
        )
        with pytest.raises(ClientError) as refused:
            reader.get_object(Bucket=bucket, Key=f"load/{during + 50:05d}")
        assert refused.value.response["Error"]["Code"] == "SlowDown"
        assert refused.value.response["ResponseMetadata"]["HTTPHeaders"]["retry-after"] == "1"
        wait_for(lambda: _errors(a) > 0)
        assert ready(a) == 200
        assert ready(b) == 200
        # A delete through B while B cannot know whether the key is batched: still hidden.
        reader.delete_object(Bucket=bucket, Key="load/00002")
        server.start()
        wait_for(lambda: len(written) >= during + 200)
    finally:
        stop.set()
        thread.join(60)
    assert failures == []
    del written["load/00002"]
    wait_for(lambda: not readable(writer, bucket, "load/00002"))

    def all_readable_through_b() -> bool:
        return all(readable(reader, bucket, key) for key in sorted(written)[-1:])

    wait_for(all_readable_through_b, timeout=60)
    for key, body in sorted(written.items()):
        assert reader.get_object(Bucket=bucket, Key=key)["Body"].read() == body, key
    listed = [
        item["Key"]
        for page in reader.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="load/")
        for item in page.get("Contents", [])
    ]
    assert listed == sorted(written)
    assert scrape(a)[("s3batchd_catalog_pending_batches", ())] == 0


def _errors(daemon: DaemonProcess) -> float:
    return sum(
        value
        for (name, labels), value in scrape(daemon).items()
        if name == "s3batchd_catalog_errors_total"
    )


def test_tags_set_through_a_are_read_through_b(
    two: tuple[DaemonProcess, DaemonProcess], bucket: str
) -> None:
    a, b = two
    through_a, through_b = a.client(), b.client()
    through_a.put_object(Bucket=bucket, Key="tagged", Body=b"x")
    wait_for(lambda: readable(through_b, bucket, "tagged"))
    through_a.put_object_tagging(
        Bucket=bucket, Key="tagged", Tagging={"TagSet": [{"Key": "team", "Value": "blue"}]}
    )

    def tagged_in_b() -> bool:
        tags = through_b.get_object_tagging(Bucket=bucket, Key="tagged")["TagSet"]
        return tags == [{"Key": "team", "Value": "blue"}]

    wait_for(tagged_in_b)
    assert through_b.get_object(Bucket=bucket, Key="tagged")["Body"].read() == b"x"


def test_batches_left_for_postgres_at_shutdown_are_written_after_a_restart(
    tmp_path: Path, s3_server: LocalS3, bucket: str
) -> None:
    server = start_local_postgres()
    try:
        spool = tmp_path / "a"
        with fleet_daemon(spool, s3_server, server.dsn()) as a:
            server.stop()
            for n in range(5):
                a.client().put_object(Bucket=bucket, Key=f"left/{n}", Body=b"%d" % n)
            assert a.terminate() == 0  # uploaded; their rows could not be written
        assert (spool / "spool" / "_catalog" / "postgres-pending.json").is_file()
        server.start()
        with fleet_daemon(tmp_path / "b", s3_server, server.dsn()) as b:
            assert not readable(b.client(), bucket, "left/0")
            with fleet_daemon(spool, s3_server, server.dsn()):  # the same spool again
                for n in range(5):
                    wait_for(lambda n=n: readable(b.client(), bucket, f"left/{n}"))  # type: ignore[misc]
        assert not (spool / "spool" / "_catalog" / "postgres-pending.json").exists()
    finally:
        server.remove()
