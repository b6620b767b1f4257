"""The boto3 client for the real bucket, and how its failures are classified."""

from __future__ import annotations

from typing import TYPE_CHECKING

from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectionError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

from s3batchd.credentials import NoCredentialsYetError, upstream_session
from s3batchd.errors import (
    RETRY_SOON,
    NoUpstreamCredentials,
    S3Error,
    ServiceUnavailable,
    UploadError,
)

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


def make_client(
    upstream: UpstreamConfig | UpstreamSettings,
    upload: UploadConfig | UploadSettings,
    credentials: Credentials | None = None,
) -> S3Client:
    """One client shared by every upload thread (clients are thread-safe, sessions are not),
    signing with ``credentials`` (default: ``upstream_credentials()``)."""
    config = Config(
        region_name=upstream.region,
        connect_timeout=upstream.connect_timeout_s,
        read_timeout=upstream.read_timeout_s,
        retries={"mode": "standard", "max_attempts": 3},
        max_pool_connections=upload.concurrency * upload.part_concurrency + 4,
        s3={"addressing_style": upstream.addressing_style},
    )
    return upstream_session(credentials).client(
        "s3", endpoint_url=upstream.endpoint_url or None, config=config
    )


def probe(client: S3Client, bucket: str, prefix: str) -> str | None:
    """One cheap authenticated request to ``bucket``; None if S3 answered as expected, else
    what is wrong. A GET of a key that does not exist needs only s3:GetObject: NoSuchKey (or
    AccessDenied without s3:ListBucket) proves the endpoint, the bucket and the credentials."""
    try:
        client.get_object(Bucket=bucket, Key=f"{prefix}.s3batchd-probe")
    except ClientError as exc:
        code = code_of(exc)
        if code in ("NoSuchKey", "AccessDenied", "404", "403"):
            return None
        return f"s3://{bucket}: {code or status_of(exc)}: {exc}"
    except NoCredentialsError:
        return f"s3://{bucket}: no upstream credentials found (yet)"
    except (BotoCoreError, OSError) as exc:
        return f"s3://{bucket}: unreachable: {exc}"
    return None


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


def classify(exc: Exception, action: str) -> UploadError:
    """Wrap a boto3 failure in an UploadError that says whether a retry can help."""
    if isinstance(exc, UploadError):
        return exc
    if isinstance(exc, ClientError):
        code, status = code_of(exc), status_of(exc)
        retriable = status >= 500 or status == 429 or code in RETRIABLE_CODES
        return UploadError(f"{action}: {code or status}: {exc}", retriable=retriable, code=code)
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
