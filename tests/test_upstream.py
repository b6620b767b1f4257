"""One classification of upstream failures (upload/upstream.py): what the uploads, the probe,
reads through the daemon and the HeadBucket check make of each."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.credentials import Credentials
from botocore.exceptions import (
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

from s3batchd.cli.seaweed import LocalS3, free_ports
from s3batchd.config import UploadConfig, UpstreamConfig
from s3batchd.errors import UploadError
from s3batchd.forward.buckets import Answer, answer_of
from s3batchd.server.errormap import s3_error_of
from s3batchd.upload.credentials import NoCredentialsYetError
from s3batchd.upload.upstream import ProbeResult, check, classify, make_client, upstream_failed


def refusal(code: str, status: int, message: str = "") -> ClientError:
    error = {"Code": code, "Message": message} if message else {"Code": code}
    answer: Any = {"Error": error, "ResponseMetadata": {"HTTPStatusCode": status}}
    return ClientError(answer, "GetObject")


UNREACHABLE = EndpointConnectionError(endpoint_url="http://127.0.0.1:1")
TIMED_OUT = ReadTimeoutError(endpoint_url="http://127.0.0.1:1")


def outcome(error: UploadError) -> tuple[str, bool, str, str]:
    return str(error), error.retriable, error.code, error.reason


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (
            refusal("NoSuchBucket", 404),
            (
                "upload x: NoSuchBucket: An error occurred (NoSuchBucket) when calling the "
                "GetObject operation: Unknown",
                False,
                "NoSuchBucket",
                "no_such_bucket",
            ),
        ),
        (
            refusal("SlowDown", 503, "Reduce your rate"),
            (
                "upload x: SlowDown: An error occurred (SlowDown) when calling the GetObject "
                "operation: Reduce your rate",
                True,
                "SlowDown",
                "throttled",
            ),
        ),
        (
            refusal("", 429),
            (
                "upload x: 429: An error occurred () when calling the GetObject operation: Unknown",
                True,
                "",
                "throttled",
            ),
        ),
        (
            refusal("RequestTimeTooSkewed", 403),
            (
                "upload x: RequestTimeTooSkewed: An error occurred (RequestTimeTooSkewed) when "
                "calling the GetObject operation: Unknown",
                True,
                "RequestTimeTooSkewed",
                "other",
            ),
        ),
        (
            UNREACHABLE,
            (
                f"upload x: {UNREACHABLE}",
                True,
                "EndpointConnectionError",
                "network",
            ),
        ),
        (TIMED_OUT, (f"upload x: {TIMED_OUT}", True, "ReadTimeoutError", "network")),
        (
            ConnectionResetError(104, "reset"),
            ("upload x: [Errno 104] reset", True, "ConnectionResetError", "network"),
        ),
        (
            NoCredentialsYetError(),
            ("upload x: Unable to locate credentials", True, "NoCredentialsYetError", "other"),
        ),
        (OSError(5, "I/O"), ("upload x: [Errno 5] I/O", True, "OSError", "other")),
        (ValueError("odd"), ("upload x: unexpected ValueError: odd", True, "", "other")),
    ],
)
def test_an_upload_failure_is_classified(
    exc: Exception, expected: tuple[str, bool, str, str]
) -> None:
    assert outcome(classify(exc, "upload x")) == expected


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (None, Answer.UNKNOWN),
        (200, Answer.EXISTS),
        (301, Answer.EXISTS),
        (307, Answer.EXISTS),
        (400, Answer.UNKNOWN),
        (403, Answer.DENIED),
        (404, Answer.MISSING),
        (429, Answer.UNKNOWN),
        (500, Answer.UNKNOWN),
        (503, Answer.UNKNOWN),
    ],
)
def test_a_head_bucket_status_says_what_is_known_of_the_bucket(
    status: int | None, expected: Answer
) -> None:
    assert answer_of(status) is expected


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (
            refusal("AccessDenied", 403, "Denied by policy"),
            (403, "AccessDenied", "Denied by policy", {}),
        ),
        (
            refusal("", 304),
            (502, "InternalError", "We encountered an internal error. Please try again.", {}),
        ),
        (
            UNREACHABLE,
            (
                503,
                "ServiceUnavailable",
                "The upstream S3 endpoint could not be reached; please retry.",
                {"Retry-After": "1"},
            ),
        ),
        (
            NoCredentialsYetError(),
            (
                503,
                "ServiceUnavailable",
                "The daemon has no upstream credentials yet; please retry.",
                {"Retry-After": "1"},
            ),
        ),
        (
            NoCredentialsError(),
            (
                503,
                "ServiceUnavailable",
                "The upstream S3 endpoint could not be reached; please retry.",
                {"Retry-After": "1"},
            ),
        ),
    ],
)
def test_a_read_on_a_clients_behalf_is_answered_as_the_bucket_answered(
    exc: ClientError | EndpointConnectionError, expected: tuple[int, str, str, dict[str, str]]
) -> None:
    error = s3_error_of(upstream_failed(exc))
    assert (error.status_code, error.code, error.message, error.headers) == expected


def test_the_probe_reads_the_same_classification(s3_server: LocalS3, bucket: str) -> None:
    client = s3_server.client()
    assert check(client, bucket, "p/") == ProbeResult(up=True, problem=None)
    missing = check(client, "no-such-bucket-here", "p/")
    assert missing.up
    assert (missing.problem or "").startswith("s3://no-such-bucket-here: NoSuchBucket: ")
    [port] = free_ports(1)
    dead = UpstreamConfig(endpoint_url=f"http://127.0.0.1:{port}")
    keys = Credentials(s3_server.access_key, s3_server.secret_key)
    unreachable = check(make_client(dead, UploadConfig(), keys, timeout_s=1), bucket, "p/")
    assert not unreachable.up
    assert (unreachable.problem or "").startswith(f"s3://{bucket}: unreachable: ")
    # No AWS_* in the tests' environment: the default chain finds nothing.
    nothing = check(make_client(dead, UploadConfig(), timeout_s=1), bucket, "p/")
    assert nothing == ProbeResult(
        up=False, problem=f"s3://{bucket}: no upstream credentials found (yet)"
    )
