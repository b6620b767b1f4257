"""auth.mode = "sigv4": real SDK signatures accepted, everything else refused."""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.conftest import ChecksumMode, Daemon, DaemonFactory
from tests.wire import WIRE_DIR, recorded_requests, send_raw

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

KEYS = [
    {"access_key_id": "app", "secret_access_key": "app-secret"},
    {"access_key_id": "narrow", "secret_access_key": "narrow-secret", "buckets": ["only/logs/"]},
    {"access_key_id": "AKIDWIRETEST", "secret_access_key": "wiresecret"},
]


@pytest.fixture
def signed(start_daemon: DaemonFactory) -> Daemon:
    return start_daemon(auth={"mode": "sigv4", "access_keys": KEYS})


def client(
    daemon: Daemon, key: str, secret: str, checksums: ChecksumMode = "when_supported", **extra: Any
) -> S3Client:
    return boto3.client(
        "s3",
        endpoint_url=daemon.url,
        region_name="us-east-1",
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        config=Config(
            request_checksum_calculation=checksums, retries={"total_max_attempts": 1}, **extra
        ),
    )


def code(call: Any) -> tuple[int, str]:
    with pytest.raises(ClientError) as caught:
        call()
    return caught.value.response["ResponseMetadata"]["HTTPStatusCode"], caught.value.response[
        "Error"
    ]["Code"]


@pytest.mark.parametrize("checksums", ["when_supported", "when_required"])
def test_signed_sdk_requests_pass(signed: Daemon, bucket: str, checksums: ChecksumMode) -> None:
    app = client(signed, "app", "app-secret", checksums)
    app.put_object(Bucket=bucket, Key="k", Body=b"signed")
    assert app.get_object(Bucket=bucket, Key="k")["Body"].read() == b"signed"
    sigv2 = client(signed, "app", "app-secret", checksums, signature_version="s3")
    sigv2.put_object(Bucket=bucket, Key="v2", Body=b"signed v2")
    assert sigv2.get_object(Bucket=bucket, Key="v2")["Body"].read() == b"signed v2"


def test_bad_credentials_are_refused(signed: Daemon, bucket: str) -> None:
    put: dict[str, Any] = {"Bucket": bucket, "Key": "k", "Body": b"x"}
    assert code(lambda: client(signed, "app", "wrong").put_object(**put)) == (
        403,
        "SignatureDoesNotMatch",
    )
    assert code(lambda: client(signed, "who", "x").put_object(**put)) == (
        403,
        "InvalidAccessKeyId",
    )
    anonymous = boto3.client(
        "s3",
        endpoint_url=signed.url,
        region_name="us-east-1",
        config=Config(signature_version=UNSIGNED, retries={"total_max_attempts": 1}),
    )
    assert code(lambda: anonymous.put_object(**put)) == (403, "AccessDenied")
    assert signed.pipeline.catalog.count() == 0


def test_allowlist_limits_a_key(signed: Daemon, s3: S3Client) -> None:
    if "only" not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
        s3.create_bucket(Bucket="only")
    narrow = client(signed, "narrow", "narrow-secret")
    narrow.put_object(Bucket="only", Key="logs/1", Body=b"allowed")
    assert code(lambda: narrow.put_object(Bucket="only", Key="other/1", Body=b"x")) == (
        403,
        "AccessDenied",
    )


@pytest.mark.parametrize("version", ["s3v4", "s3"])
def test_presigned_put(signed: Daemon, bucket: str, version: str) -> None:
    presigner = client(signed, "app", "app-secret", signature_version=version)
    url = presigner.generate_presigned_url(
        "put_object", Params={"Bucket": bucket, "Key": f"pre-{version}"}, ExpiresIn=60
    )
    # urllib would add Content-Type: application/x-www-form-urlencoded, which SigV2 signs.
    plain = {"Content-Type": ""}
    request = urllib.request.Request(url, b"presigned body", plain, method="PUT")  # noqa: S310
    with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310
        assert answer.status == 200
    got = presigner.get_object(Bucket=bucket, Key=f"pre-{version}")["Body"].read()
    assert got == b"presigned body"
    position = url.index("Signature=") + len("Signature=")
    # Digits, so the tampering never depends on how the case of hex letters is compared (it
    # flipped "a" to "A" once, which the daemon then still accepted).
    flipped = "1" if url[position] == "0" else "0"
    tampered = url[:position] + flipped + url[position + 1 :]
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(  # noqa: S310
            urllib.request.Request(tampered, b"x", plain, method="PUT"),  # noqa: S310
            timeout=10,
        )
    assert caught.value.code == 403
    caught.value.close()


def test_signed_streaming_uploads_from_restic(signed: Daemon, s3: S3Client) -> None:
    """minio-go (restic) signs every aws-chunked chunk: replayed at their recorded time."""
    if "wire" not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
        s3.create_bucket(Bucket="wire")
    puts = [
        r for r in recorded_requests(WIRE_DIR / "restic-init-backup") if r.meta["op"] == "PutObject"
    ]
    assert len(puts) >= 5
    port = signed.settings.server.port
    authenticator = signed.app.state.authenticator
    for record in puts:
        stamp = datetime.strptime(str(record.header("x-amz-date")), "%Y%m%dT%H%M%SZ")
        authenticator.clock = lambda stamp=stamp: stamp.replace(tzinfo=UTC)
        answer = send_raw(port, record.raw)  # Host 127.0.0.1:9123, exactly as signed
        assert answer.status == 200, answer.body
        assert answer.headers["etag"] == f'"{record.md5_hex}"'
        # One flipped byte in a chunk's data breaks its chunk signature.
        head, sep, body = record.raw.partition(b"\r\n\r\n")
        data_start = body.index(b"\r\n") + 2
        flipped = body[:data_start] + bytes([body[data_start] ^ 1]) + body[data_start + 1 :]
        refused = send_raw(port, head + sep + flipped)
        assert refused.status == 403
        assert b"<Code>SignatureDoesNotMatch</Code>" in refused.body


def test_signed_requests_allow_a_non_loopback_listener(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from s3batchd.cli.main import main

    env = {
        "S3BATCHD_SERVER__HOST": "0.0.0.0",
        "S3BATCHD_AUTH__MODE": "sigv4",
        "S3BATCHD_AUTH__ACCESS_KEYS": '[{"access_key_id": "a", "secret_access_key": "s"}]',
    }
    result = CliRunner().invoke(main, ["check-config", "--offline"], env=env)
    assert result.exit_code == 0, result.output
    assert "**********" in result.stdout  # the secret is never printed
    assert '"s"' not in result.stdout


def test_clock_skew_is_refused(signed: Daemon, bucket: str) -> None:
    signed.app.state.authenticator.clock = lambda: datetime.now(tz=UTC) + timedelta(minutes=20)
    app = client(signed, "app", "app-secret")
    assert code(lambda: app.put_object(Bucket=bucket, Key="k", Body=b"x")) == (
        403,
        "RequestTimeTooSkewed",
    )


def test_presigned_put_with_a_signed_payload_hash(signed: Daemon, bucket: str) -> None:
    """A presigned URL may carry X-Amz-Content-Sha256 as a signed query parameter: the body
    must then hash to it."""
    body = b"hash-pinned body"
    for payload, expected in ((body, 200), (b"another body", 400)):
        url = _presign_with_payload_hash(signed, bucket, "pinned", hashlib.sha256(body).hexdigest())
        request = urllib.request.Request(url, payload, {"Content-Type": ""}, method="PUT")  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310
                status = answer.status
        except urllib.error.HTTPError as error:
            status = error.code
            assert b"XAmzContentSHA256Mismatch" in error.read()
            error.close()
        assert status == expected


def _presign_with_payload_hash(daemon: Daemon, bucket: str, key: str, sha256: str) -> str:
    from botocore.auth import S3SigV4QueryAuth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    class PinnedPayload(S3SigV4QueryAuth):
        def payload(self, request: AWSRequest) -> str:
            return sha256  # the signed query parameter is the payload hash

    url = f"{daemon.url}/{bucket}/{key}?X-Amz-Content-Sha256={sha256}"
    request = AWSRequest(method="PUT", url=url)
    PinnedPayload(Credentials("app", "app-secret"), "s3", "us-east-1", expires=60).add_auth(request)
    return str(request.url)
