"""What works against the bucket works through the daemon, for batched keys too.

Each behaviour is checked twice with boto3: against SeaweedFS directly, for a key it holds, and
through the daemon, for a key the daemon batched (it lives in a tar, not under its own key). The
answers must agree. Groups from a run of the Ceph s3-tests suite through the daemon.
"""

from __future__ import annotations

import base64
import re
import urllib.error
import urllib.request
import zlib
from typing import TYPE_CHECKING, Any

import pytest
from botocore.auth import S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from tests.batches import indexed_objects
from tests.conftest import wait_for

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from s3batchd.cli.seaweed import LocalS3
    from tests.conftest import Daemon, DaemonFactory


def _batched(answer: Any) -> bool:
    return "x-s3batchd-tar" in answer["ResponseMetadata"]["HTTPHeaders"]


def _status_code(error: ClientError) -> tuple[int, str]:
    answer = error.response
    return answer["ResponseMetadata"]["HTTPStatusCode"], answer["Error"]["Code"]


def _error(call: Any, **kwargs: Any) -> tuple[int, str]:
    """The status and code of a call that must fail."""
    with pytest.raises(ClientError) as caught:
        call(**kwargs)
    return _status_code(caught.value)


def _put_outcomes(client: S3Client, bucket: str, key: str) -> list[object]:
    """The outcomes of conditional PUTs of a key that holds b"first": a matching and a
    different ETag in If-None-Match, and If-Match on a key that does not exist."""
    etag = client.put_object(Bucket=bucket, Key=key, Body=b"first")["ETag"]
    outcomes: list[object] = [
        _error(client.put_object, Bucket=bucket, Key=key, Body=b"x", IfNoneMatch=etag),
    ]
    client.put_object(Bucket=bucket, Key=key, Body=b"second", IfNoneMatch='"0123abcd"')
    outcomes.append(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    outcomes.append(
        _error(client.put_object, Bucket=bucket, Key=f"{key}-none", Body=b"x", IfMatch=etag)
    )
    return outcomes


def test_put_if_none_match_etag_is_decided_as_the_bucket_does(
    daemon: Daemon, s3: S3Client, bucket: str
) -> None:
    """``If-None-Match: <etag>``: 412 when the key's ETag is one of the list, else written."""
    client = daemon.client()
    direct = _put_outcomes(s3, bucket, "direct/k")
    through = _put_outcomes(client, bucket, "batched/k")
    assert daemon.pipeline.catalog.get(bucket, "batched/k") is not None
    assert through == direct
    assert direct[:2] == [(412, "PreconditionFailed"), b"second"]


def _delete_outcomes(client: S3Client, bucket: str, prefix: str) -> list[object]:
    """DeleteObjects with ETag conditions: one that holds, one that does not; then which of
    the keys are left."""
    keys = [f"{prefix}/match", f"{prefix}/differ"]
    etags = [client.put_object(Bucket=bucket, Key=key, Body=key.encode())["ETag"] for key in keys]
    answer = client.delete_objects(
        Bucket=bucket,
        Delete={
            "Objects": [
                {"Key": keys[0], "ETag": etags[0]},
                {"Key": keys[1], "ETag": '"0123456789abcdef0123456789abcdef"'},
            ]
        },
    )
    deleted = sorted(d["Key"].removeprefix(prefix) for d in answer.get("Deleted", []))
    errors = sorted((e["Key"].removeprefix(prefix), e["Code"]) for e in answer.get("Errors", []))
    listed = client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/").get("Contents", [])
    return [deleted, errors, sorted(o["Key"].removeprefix(prefix) for o in listed)]


def test_delete_objects_with_etag_conditions_on_batched_keys(
    daemon: Daemon, s3: S3Client, bucket: str
) -> None:
    """The daemon decides an ETag condition on a batched key (the bucket does not hold it)."""
    direct = _delete_outcomes(s3, bucket, "direct")
    through = _delete_outcomes(daemon.client(), bucket, "batched")
    assert through == direct
    assert direct[0] == ["/match"]
    assert direct[2] == ["/differ"]


def _delete_one_outcomes(client: S3Client, bucket: str, key: str) -> list[object]:
    """DeleteObject with If-Match: a different ETag, then the right one; then what is left."""
    etag = client.put_object(Bucket=bucket, Key=key, Body=b"x")["ETag"]
    wrong = '"0123456789abcdef0123456789abcdef"'
    outcomes: list[object] = [_error(client.delete_object, Bucket=bucket, Key=key, IfMatch=wrong)]
    client.delete_object(Bucket=bucket, Key=key, IfMatch=etag)
    outcomes.append(_error(client.head_object, Bucket=bucket, Key=key))
    return outcomes


def test_delete_object_if_match_on_a_batched_key(daemon: Daemon, s3: S3Client, bucket: str) -> None:
    direct = _delete_one_outcomes(s3, bucket, "direct/one")
    through = _delete_one_outcomes(daemon.client(), bucket, "batched/one")
    assert through == direct


def _write_mixed(daemon: Daemon, s3: S3Client, bucket: str) -> None:
    """Keys a/ and c/ in the bucket itself, b/ and d/ batched by the daemon."""
    for key in ("a/1", "c/3"):
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode())
    client = daemon.client()
    for key in ("b/2", "d/4"):
        assert _batched(client.put_object(Bucket=bucket, Key=key, Body=key.encode()))


def test_list_objects_v2_echoes_the_continuation_token(
    daemon: Daemon, s3: S3Client, bucket: str
) -> None:
    _write_mixed(daemon, s3, bucket)
    client = daemon.client()
    seen: list[str] = []
    token = None
    while True:
        kwargs: dict[str, Any] = {"ContinuationToken": token} if token else {}
        page = client.list_objects_v2(Bucket=bucket, MaxKeys=1, **kwargs)
        assert page.get("ContinuationToken") == token
        seen += [item["Key"] for item in page.get("Contents", [])]
        if not page["IsTruncated"]:
            break
        token = page["NextContinuationToken"]
    assert seen == ["a/1", "b/2", "c/3", "d/4"]


@pytest.mark.parametrize("uploaded", [False, True])
def test_list_objects_v2_fetch_owner(
    start_daemon: DaemonFactory, s3: S3Client, bucket: str, uploaded: bool
) -> None:
    """FetchOwner: every object has the Owner the bucket reports for objects the daemon's
    credentials wrote (batched objects are held in tars the daemon wrote): the owner of a
    batch in the bucket, or before one was uploaded the bucket's owner."""
    daemon = start_daemon(batch={"linger_ms": 50}) if uploaded else start_daemon()
    _write_mixed(daemon, s3, bucket)
    if uploaded:
        wait_for(lambda: indexed_objects(s3, bucket) == 2)
    direct = s3.list_objects_v2(Bucket=bucket, FetchOwner=True)["Contents"]
    owner = direct[0]["Owner"]
    assert owner.get("ID")
    for fetch in (True, False):
        listed = daemon.client().list_objects_v2(Bucket=bucket, FetchOwner=fetch)["Contents"]
        assert [item["Key"] for item in listed] == ["a/1", "b/2", "c/3", "d/4"]
        assert [item.get("Owner") for item in listed] == [owner if fetch else None] * 4
    # ListObjects (v1) always lists owners, in the bucket as through the daemon.
    assert s3.list_objects(Bucket=bucket)["Contents"][0]["Owner"] == owner
    listed = daemon.client().list_objects(Bucket=bucket)["Contents"]
    assert [item.get("Owner") for item in listed] == [owner] * 4


@pytest.mark.parametrize("parameter", ["allow-unordered=true", "unknown-option=1"])
def test_unknown_list_parameters_keep_the_merge(
    daemon: Daemon, s3: S3Client, bucket: str, parameter: str
) -> None:
    """S3 ignores list parameters it does not know (RGW's ``allow-unordered``): the listing
    is still the merged one, with the batched keys."""
    _write_mixed(daemon, s3, bucket)
    client = daemon.client()

    def add_parameter(request: Any, **_: Any) -> None:
        request.url += f"&{parameter}" if "?" in request.url else f"?{parameter}"

    for operation in ("ListObjectsV2", "ListObjects"):
        client.meta.events.register(f"before-sign.s3.{operation}", add_parameter)
    for version in (client.list_objects_v2, client.list_objects):
        keys = [item["Key"] for item in version(Bucket=bucket)["Contents"]]
        assert keys == ["a/1", "b/2", "c/3", "d/4"]


def test_a_daemon_token_stays_with_the_daemon_when_the_batched_keys_are_gone(
    daemon: Daemon, s3: S3Client, bucket: str
) -> None:
    """A listing the daemon began goes on with its token even when no batched key is left
    under the prefix (the bucket does not know the daemon's token)."""
    for key in ("p/1", "p/3"):
        s3.put_object(Bucket=bucket, Key=key, Body=b"x")
    client = daemon.client()
    client.put_object(Bucket=bucket, Key="p/2", Body=b"x")
    first = client.list_objects_v2(Bucket=bucket, Prefix="p/", MaxKeys=1)
    token = first["NextContinuationToken"]
    client.delete_object(Bucket=bucket, Key="p/2")
    rest = client.list_objects_v2(Bucket=bucket, Prefix="p/", ContinuationToken=token)
    assert rest["ContinuationToken"] == token
    assert [item["Key"] for item in first["Contents"] + rest["Contents"]] == ["p/1", "p/3"]


def _copy_range_outcomes(client: S3Client, bucket: str, source: str) -> list[tuple[int, str]]:
    """UploadPartCopy of a 10-byte source with ranges past its end."""
    client.put_object(Bucket=bucket, Key=source, Body=b"0123456789")
    upload = client.create_multipart_upload(Bucket=bucket, Key=f"{source}-copy")["UploadId"]
    outcomes = [
        _error(
            client.upload_part_copy,
            Bucket=bucket,
            Key=f"{source}-copy",
            UploadId=upload,
            PartNumber=1,
            CopySource={"Bucket": bucket, "Key": source},
            CopySourceRange=byte_range,
        )
        for byte_range in ("bytes=0-21", "bytes=10-12", "bytes=2-10")
    ]
    client.abort_multipart_upload(Bucket=bucket, Key=f"{source}-copy", UploadId=upload)
    return outcomes


def test_copy_range_past_the_end_is_invalid_range(
    daemon: Daemon, s3: S3Client, bucket: str
) -> None:
    direct = _copy_range_outcomes(s3, bucket, "direct/src")
    through = _copy_range_outcomes(daemon.client(), bucket, "batched/src")
    assert daemon.pipeline.catalog.get(bucket, "batched/src") is not None
    assert through == direct
    assert [code for _, code in direct] == ["InvalidRange"] * 3


def _presigned_statuses(
    endpoint: str, credentials: Credentials, bucket: str, key: str
) -> list[tuple[int, str]]:
    """Status and error code of SigV4 presigned GETs whose X-Amz-Expires is 0, negative, or
    past the 7-day limit (botocore's own signer: the CRT one refuses to sign them)."""
    outcomes = []
    for expires in (0, -7, 604801):
        request = AWSRequest("GET", f"{endpoint}/{bucket}/{key}")
        S3SigV4QueryAuth(credentials, "s3", "us-east-1", expires=expires).add_auth(request)
        assert request.url is not None
        try:
            with urllib.request.urlopen(request.url, timeout=10) as answer:  # noqa: S310
                outcomes.append((answer.status, ""))
        except urllib.error.HTTPError as error:
            code = re.search(rb"<Code>([^<]*)</Code>", error.read())
            error.close()
            outcomes.append((error.code, code[1].decode() if code else ""))
    return outcomes


def test_presigned_expiry_out_of_range_is_access_denied(
    start_daemon: DaemonFactory, s3_server: LocalS3, s3: S3Client, bucket: str
) -> None:
    daemon = start_daemon(
        auth={
            "mode": "sigv4",
            "access_keys": [{"access_key_id": "app-key", "secret_access_key": "app-secret"}],
        }
    )
    s3.put_object(Bucket=bucket, Key="direct", Body=b"x")
    assert _batched(daemon.client().put_object(Bucket=bucket, Key="batched", Body=b"x"))
    theirs = Credentials(s3_server.access_key, s3_server.secret_key)
    direct = _presigned_statuses(s3_server.endpoint_url, theirs, bucket, "direct")
    mine = Credentials("app-key", "app-secret")
    assert _presigned_statuses(daemon.url, mine, bucket, "batched") == direct
    assert direct[0] == (403, "AccessDenied")


def _complete_with_checksum(
    client: S3Client, bucket: str, key: str, value: str, upload: str | None = None, **create: Any
) -> str:
    """Complete a one-part upload with ``x-amz-checksum-crc32: value`` (the object's
    checksum, not the XML body's): the outcome."""
    if upload is None:
        upload = client.create_multipart_upload(Bucket=bucket, Key=key, **create)["UploadId"]
    part = client.upload_part(
        Bucket=bucket,
        Key=key,
        UploadId=upload,
        PartNumber=1,
        Body=b"X" * 8,
        ChecksumAlgorithm="CRC32",
    )
    listed: dict[str, Any] = {"PartNumber": 1, "ETag": part["ETag"]}
    if "ChecksumCRC32" in part:
        listed["ChecksumCRC32"] = part["ChecksumCRC32"]
    try:
        answer = client.complete_multipart_upload(
            Bucket=bucket,
            Key=key,
            UploadId=upload,
            MultipartUpload={"Parts": [listed]},  # type: ignore[list-item]
            ChecksumCRC32=value,
        )
    except ClientError as error:
        status, code = _status_code(error)
        return f"{status} {code}"
    return f"200 {answer.get('ChecksumCRC32')}"


@pytest.mark.parametrize(
    "create", [{}, {"ChecksumAlgorithm": "CRC32", "ChecksumType": "FULL_OBJECT"}]
)
def test_complete_checksum_header_is_the_objects(
    daemon: Daemon, s3: S3Client, bucket: str, create: dict[str, Any]
) -> None:
    """CompleteMultipartUpload's ``x-amz-checksum-*`` header is the object's checksum: a
    malformed or wrong one is the bucket's BadDigest (or ignored for an upload that asked for
    no checksum), never checked against the XML body. Held uploads and forwarded ones."""
    full = base64.b64encode(zlib.crc32(b"X" * 8).to_bytes(4, "big")).decode()
    client = daemon.client()
    for value in ("notvalid!!", "AAAAAA==", full):
        direct = _complete_with_checksum(s3, bucket, "direct", value, **create)
        held = _complete_with_checksum(client, bucket, "held", value, **create)
        theirs = s3.create_multipart_upload(Bucket=bucket, Key="forwarded", **create)["UploadId"]
        forwarded = _complete_with_checksum(client, bucket, "forwarded", value, theirs)
        assert (held, forwarded) == (direct, direct), value


def _resent_part_outcomes(client: S3Client, bucket: str, prefix: str) -> list[object]:
    """Part 1 sent twice (X, then Y: Y finished last), Complete listing part 1 once per
    upload (X's ETag, then Y's; and the other way round); a listed checksum that is not the
    part's. The bytes stored, or the error."""
    outcomes: list[object] = []
    for order in ((0, 1), (1, 0), (1,), (0, 0, 1)):
        key = f"{prefix}/{''.join(map(str, order))}"
        upload = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        etags = [
            client.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=1, Body=body)[
                "ETag"
            ]
            for body in (b"X" * 8, b"Y" * 8)
        ]
        parts: Any = [{"PartNumber": 1, "ETag": etags[i]} for i in order]
        client.complete_multipart_upload(
            Bucket=bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": parts}
        )
        outcomes.append(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    key = f"{prefix}/checksum"
    upload = client.create_multipart_upload(Bucket=bucket, Key=key, ChecksumAlgorithm="CRC32")[
        "UploadId"
    ]
    etag = client.upload_part(
        Bucket=bucket, Key=key, UploadId=upload, PartNumber=1, Body=b"Z", ChecksumAlgorithm="CRC32"
    )["ETag"]
    parts = [{"PartNumber": 1, "ETag": etag, "ChecksumCRC32": "AAAAAA=="}]
    outcomes.append(
        _error(
            client.complete_multipart_upload,
            Bucket=bucket,
            Key=key,
            UploadId=upload,
            MultipartUpload={"Parts": parts},
        )
    )
    return outcomes


def test_resent_part_and_part_list_checks_as_the_bucket(
    daemon: Daemon, s3: S3Client, bucket: str
) -> None:
    """A part sent again: the one that finished last is the part (S3 keeps the most recently
    completed upload of a part number), and a Complete that lists the part number once per
    upload, the last-finished one among them, is accepted; a listed checksum that is not the
    part's is BadDigest."""
    direct = _resent_part_outcomes(s3, bucket, "direct")
    through = _resent_part_outcomes(daemon.client(), bucket, "held")
    assert through == direct
    assert direct == [b"Y" * 8] * 4 + [(400, "BadDigest")]


def _complete_if_none_match(client: S3Client, bucket: str, key: str) -> list[object]:
    """CompleteMultipartUpload with If-None-Match naming the key's ETag, then another."""
    etag = client.put_object(Bucket=bucket, Key=key, Body=b"first")["ETag"]
    outcomes: list[object] = []
    for condition in (etag, '"0123abcd"'):
        upload = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        part = client.upload_part(
            Bucket=bucket, Key=key, UploadId=upload, PartNumber=1, Body=b"second"
        )
        parts: Any = [{"PartNumber": 1, "ETag": part["ETag"]}]
        try:
            client.complete_multipart_upload(
                Bucket=bucket,
                Key=key,
                UploadId=upload,
                MultipartUpload={"Parts": parts},
                IfNoneMatch=condition,
            )
            outcomes.append(client.get_object(Bucket=bucket, Key=key)["Body"].read())
        except ClientError as error:
            outcomes.append(_status_code(error))
            client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload)
    return outcomes


def test_complete_if_none_match_etag_on_a_batched_key(
    daemon: Daemon, s3: S3Client, bucket: str
) -> None:
    direct = _complete_if_none_match(s3, bucket, "direct/mpu")
    through = _complete_if_none_match(daemon.client(), bucket, "batched/mpu")
    assert through == direct
    assert direct == [(412, "PreconditionFailed"), b"second"]
