"""The boto3 client for the real bucket, and how its failures are classified."""

from __future__ import annotations

import builtins
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from botocore.auth import AUTH_TYPE_MAPS, S3SigV4Auth
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectionError,
    EndpointConnectionError,
    HTTPClientError,
    NoCredentialsError,
    ReadTimeoutError,
)

from s3batchd.errors import (
    RETRY_SOON,
    NoUpstreamCredentials,
    S3Error,
    ServiceUnavailable,
    UploadError,
)
from s3batchd.upload.credentials import NoCredentialsYetError, upstream_session

if TYPE_CHECKING:
    from botocore.credentials import Credentials
    from mypy_boto3_s3 import S3Client

    from s3batchd.config import UploadConfig, UpstreamConfig
    from s3batchd.uploadsettings import UploadSettings, UpstreamSettings

RETRIABLE_CODES = frozenset(
    {
        "SlowDown",
        "InternalError",
        "ServiceUnavailable",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "OperationAborted",
    }
)


_Handler = Callable[..., None]


def make_client(
    upstream: UpstreamConfig | UpstreamSettings,
    upload: UploadConfig | UploadSettings,
    credentials: Credentials | None = None,
    *,
    timeout_s: float | None = None,
) -> S3Client:
    """One client shared by every upload thread (clients are thread-safe, sessions are not),
    signing with ``credentials`` (default: ``upstream_credentials()``). ``timeout_s``: one
    attempt, connecting and answering within that many seconds each (the probe's client)."""
    config = Config(
        region_name=upstream.region,
        connect_timeout=upstream.connect_timeout_s if timeout_s is None else timeout_s,
        read_timeout=upstream.read_timeout_s if timeout_s is None else timeout_s,
        retries={"mode": "standard", "max_attempts": 3 if timeout_s is None else 1},
        max_pool_connections=upload.concurrency * upload.part_concurrency + 4,
        s3={"addressing_style": upstream.addressing_style},
        # An empty endpoint_url means AWS: not AWS_ENDPOINT_URL, which a shell that sourced
        # `make run`'s env.sh points at a daemon (possibly this one). botocore >= 1.31 has
        # the option; botocore-stubs do not list it yet.
        ignore_configured_endpoint_urls=True,  # type: ignore[call-arg]
    )
    client = upstream_session(credentials).client(
        "s3", endpoint_url=upstream.endpoint_url or None, config=config
    )
    # botocore-stubs type every event handler as returning None; choose-signer's return one.
    client.meta.events.register_first("choose-signer.s3", cast("_Handler", _python_signer))
    return client


#: botocore signs with awscrt's signer whenever awscrt is installed (the daemon needs it for
#: CRC32C and CRC64NVME). Where the payload is signed (always over plain http) that signer
#: hashes the body by calling back into Python for every 4 KiB: 2,048 calls per 8 MiB part,
#: each taking the GIL from the event loop. botocore's own signer, the one it uses without
#: awscrt, reads 1 MiB at a time (hashlib releases the GIL meanwhile) and signs the same.
_PYTHON_S3V4 = "s3batchd-s3v4"
AUTH_TYPE_MAPS.setdefault(_PYTHON_S3V4, S3SigV4Auth)


def _python_signer(signature_version: str, **_: object) -> str | None:
    """choose-signer handler: botocore's SigV4 signer for S3 where it would take awscrt's
    (presigning and other signers are left as they are)."""
    return _PYTHON_S3V4 if signature_version in ("v4", "s3v4") else None


@dataclass(frozen=True)
class ProbeResult:
    """What one probe request found."""

    up: bool
    """S3 answered, and not with a server error (whatever it said about the bucket)."""
    problem: str | None
    """What is wrong; None when S3 answered as expected."""


def check(client: S3Client, bucket: str, prefix: str) -> ProbeResult:
    """One cheap authenticated request to ``bucket``. A GET of a key that does not exist
    needs only s3:GetObject: NoSuchKey (or AccessDenied without s3:ListBucket) proves the
    endpoint, the bucket and the credentials."""
    try:
        client.get_object(Bucket=bucket, Key=f"{prefix}.s3batchd-probe")
    except ClientError as exc:
        code = code_of(exc)
        if code in ("NoSuchKey", "AccessDenied", "404", "403"):
            return ProbeResult(up=True, problem=None)
        problem = f"s3://{bucket}: {code or status_of(exc)}: {exc}"
        return ProbeResult(up=status_of(exc) < 500, problem=problem)
    except NoCredentialsError:
        return ProbeResult(up=False, problem=f"s3://{bucket}: no upstream credentials found (yet)")
    except (BotoCoreError, OSError) as exc:
        return ProbeResult(up=False, problem=f"s3://{bucket}: unreachable: {exc}")
    return ProbeResult(up=True, problem=None)


def probe(client: S3Client, bucket: str, prefix: str) -> str | None:
    """``check``'s problem: None if S3 answered as expected, else what is wrong."""
    return check(client, bucket, prefix).problem


def status_of(exc: ClientError) -> int:
    """HTTP status of a boto3 ClientError (0 when unknown)."""
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def code_of(exc: ClientError) -> str:
    """S3 error code of a boto3 ClientError."""
    return str(exc.response.get("Error", {}).get("Code", ""))


def as_s3_error(exc: ClientError | BotoCoreError) -> S3Error:
    """A failed call of the daemon's own client on a client's behalf (a read of an uploaded
    object), as the client's answer: the bucket's refusal as the bucket gave it, 503 when
    the bucket could not be reached or there are no credentials (clients retry 503)."""
    if isinstance(exc, NoCredentialsYetError):
        return NoUpstreamCredentials(headers=RETRY_SOON)
    if isinstance(exc, BotoCoreError):
        return ServiceUnavailable(headers=RETRY_SOON)
    error = S3Error(str(exc.response.get("Error", {}).get("Message", "")) or None)
    error.code = code_of(exc) or "InternalError"
    status = status_of(exc)
    error.status_code = status if status >= 400 else 502
    return error


#: S3 error codes of a refusal by the bucket's (or the account's) policy.
ACCESS_DENIED_CODES = frozenset({"AccessDenied", "AllAccessDisabled", "AccountProblem"})
#: S3 error codes saying the daemon's credentials themselves are wrong or expired: every
#: bucket answers the same until they are replaced.
CREDENTIAL_CODES = frozenset(
    {
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
    }
)
THROTTLED_CODES = frozenset(
    {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests"}
)


def failure_reason(code: str, status: int) -> str:
    """Which of ``errors.FAILURE_REASONS`` an upstream refusal (S3 error code, HTTP status) is."""
    if code == "NoSuchBucket":
        return "no_such_bucket"
    if code == "InvalidBucketName":
        return "invalid_bucket_name"
    if code.upper().startswith("KMS"):  # KMS.DisabledException, KMS.NotFoundException, ...
        return "kms"
    if code in CREDENTIAL_CODES:
        return "credentials"
    if code in ACCESS_DENIED_CODES or (status == 403 and not code):
        return "access_denied"
    if code in THROTTLED_CODES or status == 429:
        return "throttled"
    if status >= 500:
        return "server_error"
    return "other"


def classify(exc: Exception, action: str) -> UploadError:
    """Wrap a boto3 failure in an UploadError that says whether a retry can help and which of
    ``errors.FAILURE_REASONS`` it is."""
    if isinstance(exc, UploadError):
        return exc
    if isinstance(exc, ClientError):
        code, status = code_of(exc), status_of(exc)
        retriable = status >= 500 or status == 429 or code in RETRIABLE_CODES
        return UploadError(
            f"{action}: {code or status}: {exc}",
            retriable=retriable,
            code=code,
            reason=failure_reason(code, status),
        )
    # botocore's connection failures (and the socket's own, raised past it).
    network = (ConnectionError, HTTPClientError, builtins.ConnectionError, TimeoutError)
    if isinstance(exc, network):
        return UploadError(
            f"{action}: {exc}", retriable=True, code=type(exc).__name__, reason="network"
        )
    transient = (
        ConnectionError,
        ConnectionClosedError,
        EndpointConnectionError,
        ReadTimeoutError,
        BotoCoreError,
        OSError,
    )
    if isinstance(exc, transient):
        return UploadError(f"{action}: {exc}", retriable=True, code=type(exc).__name__)
    return UploadError(f"{action}: unexpected {type(exc).__name__}: {exc}", retriable=True)
