"""Upstream credentials that appear after the daemon started (an agent writing the shared
credentials file, an instance role not reachable yet): PUTs are kept, uploads and forwarded
requests wait for them, and the daemon uses them once they exist, without a restart."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError, NoCredentialsError

from s3batchd.cli.seaweed import LocalS3
from s3batchd.upload.credentials import LateCredentials, upstream_credentials
from tests.batches import indexed_objects
from tests.conftest import DaemonFactory, wait_for
from tests.test_admin import get_json

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_late_credentials_look_the_chain_up_again_at_most_every_interval() -> None:
    clock = Clock()
    found: list[Credentials | None] = [None]
    lookups: list[float] = []

    def lookup() -> Credentials | None:
        lookups.append(clock.now)
        return found[0]

    late = LateCredentials(lookup, interval_s=5, clock=clock)
    assert late.may_block()
    with pytest.raises(NoCredentialsError):
        late.get_frozen_credentials()
    assert not late.may_block()
    clock.now += 4.9
    with pytest.raises(NoCredentialsError):
        late.get_frozen_credentials()
    assert lookups == [100.0]  # not looked up again within the interval
    found[0] = Credentials("AKIDLATE", "late-secret", method="shared-credentials-file")
    clock.now += 0.1
    assert late.may_block()
    frozen = late.get_frozen_credentials()
    assert (frozen.access_key, frozen.secret_key) == ("AKIDLATE", "late-secret")
    clock.now += 60
    late.get_frozen_credentials()
    assert lookups == [100.0, 105.0]  # found: never looked up again
    assert not late.may_block()


def test_a_failing_lookup_is_tried_again_after_the_interval() -> None:
    clock = Clock()
    calls = []

    def lookup() -> Credentials | None:
        calls.append(clock.now)
        if len(calls) == 1:
            raise NoCredentialsError()  # as a malformed credentials file would
        return Credentials("AKID", "secret")

    late = LateCredentials(lookup, interval_s=5, clock=clock)
    with pytest.raises(NoCredentialsError):
        late.get_frozen_credentials()
    with pytest.raises(NoCredentialsError):
        late.get_frozen_credentials()
    clock.now += 5
    assert late.get_frozen_credentials().access_key == "AKID"
    assert calls == [100.0, 105.0]


def test_credentials_found_at_start_are_used_as_found(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDENV")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    found = upstream_credentials()
    assert not isinstance(found, LateCredentials)
    assert found.get_frozen_credentials().access_key == "AKIDENV"


@pytest.mark.parametrize("child_processes", [False, True], ids=["threads", "child"])
def test_credentials_written_after_start_are_picked_up_without_a_restart(
    start_daemon: DaemonFactory,
    s3_server: LocalS3,
    s3: S3Client,
    bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    child_processes: bool,
) -> None:
    credentials_file = tmp_path / "credentials"
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials_file))
    daemon = start_daemon(
        batch={"linger_ms": 50},
        upstream={"probe_interval_s": 0.2},
        upload={"child_processes": child_processes},
    )
    client = daemon.client(retries={"total_max_attempts": 1})

    def forwarded() -> tuple[str, str]:
        with pytest.raises(ClientError) as caught:
            client.get_object(Bucket=bucket, Key="not-batched")  # forwarded to the bucket
        error = caught.value.response["Error"]
        return error.get("Code", ""), error.get("Message", "")

    client.put_object(Bucket=bucket, Key="early", Body=b"kept until the credentials exist")
    code, message = forwarded()
    assert code == "ServiceUnavailable"
    assert "no upstream credentials" in message
    wait_for(lambda: "warnings" in get_json(daemon.admin_url + "/readyz")[1])
    status, body = get_json(daemon.admin_url + "/readyz")
    assert status == 200  # the spool takes writes meanwhile
    assert "credentials" in " ".join(body["warnings"]), body
    assert indexed_objects(s3, bucket) == 0

    credentials_file.write_text(
        "[default]\n"
        f"aws_access_key_id = {s3_server.access_key}\n"
        f"aws_secret_access_key = {s3_server.secret_key}\n"
    )
    # Each process looks the chain up again at most every 5 s (LOOKUP_INTERVAL_S).
    wait_for(lambda: indexed_objects(s3, bucket) == 1, timeout=15)
    wait_for(lambda: forwarded()[0] == "NoSuchKey", timeout=15)  # the bucket's answer
    assert client.get_object(Bucket=bucket, Key="early")["Body"].read() == (
        b"kept until the credentials exist"
    )
    wait_for(lambda: get_json(daemon.admin_url + "/readyz")[0] == 200)
