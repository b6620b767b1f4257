"""The boto3 client for the real bucket, and how its failures are classified: ``failure_of``
(one classification of an upstream call's failure) and ``failure_reason`` (what an S3
refusal means), used by the uploads, the probe, ``check-config``, reads through the daemon
and the HeadBucket check."""

from __future__ import annotations

import builtins
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, cast

from botocore.auth import AUTH_TYPE_MAPS, S3SigV4Auth
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError,
    HTTPClientError,
    NoCredentialsError,
)

from s3batchd.errors import UploadError, UpstreamFailed
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


#: What a GET of a key that does not exist may answer when the endpoint, the bucket and the
#: credentials are fine (AccessDenied: no s3:ListBucket; "404"/"403": an answer without body).
PROBE_ANSWERS = frozenset({"NoSuchKey", "AccessDenied", "404", "403"})


def check(client: S3Client, bucket: str, prefix: str) -> ProbeResult:
    """One cheap authenticated request to ``bucket``. A GET of a key that does not exist
    needs only s3:GetObject: NoSuchKey (or AccessDenied without s3:ListBucket) proves the
    endpoint, the bucket and the credentials."""
    try:
        client.get_object(Bucket=bucket, Key=f"{prefix}.s3batchd-probe")
    except Exception as exc:
        failure = failure_of(exc)
        if failure.kind == "unexpected":
            raise
        if failure.kind == "no_credentials":
            return ProbeResult(
                up=False, problem=f"s3://{bucket}: no upstream credentials found (yet)"
            )
        if failure.kind != "refused":
            return ProbeResult(up=False, problem=f"s3://{bucket}: unreachable: {exc}")
        if failure.code in PROBE_ANSWERS:
            return ProbeResult(up=True, problem=None)
        problem = f"s3://{bucket}: {failure.code or failure.status}: {exc}"
        return ProbeResult(up=failure.status < 500, problem=problem)
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


def upstream_failed(exc: ClientError | BotoCoreError) -> UpstreamFailed:
    """A failed call of the daemon's own client on a client's behalf (a read of an uploaded
    object), as a domain error: server/errormap.py answers the bucket's refusal as the
    bucket gave it, and 503 when the bucket could not be reached or there are no
    credentials (clients retry 503)."""
    failure = failure_of(exc)
    return UpstreamFailed(
        failure.message,
        code=failure.code,
        status=failure.status,
        # The daemon's own chain found none yet; botocore's plain NoCredentialsError (never
        # raised by the daemon's clients) was answered as an unreachable bucket, and still is.
        no_credentials=isinstance(exc, NoCredentialsYetError),
    )


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


FailureKind = Literal["refused", "no_credentials", "network", "transport", "unexpected"]


@dataclass(frozen=True, slots=True)
class UpstreamFailure:
    """One failed upstream call as the daemon reads it: the one classification behind the
    uploads (``classify``), the probe and ``check-config`` (``check``), reads on a client's
    behalf (``upstream_failed``) and, through ``failure_reason``, the HeadBucket check
    (forward/buckets.py)."""

    kind: FailureKind
    """``refused``: S3 answered with an error; ``no_credentials``: the daemon has none (yet);
    ``network``: no connection or no answer; ``transport``: another failure below HTTP;
    ``unexpected``: not a failure of the call (a bug)."""
    code: str = ""
    """S3's error code (``refused``), else the exception's class name."""
    status: int = 0
    """HTTP status (``refused``), else 0."""
    message: str = ""
    """S3's error message (``refused``)."""

    @property
    def reason(self) -> str:
        """Which of ``errors.FAILURE_REASONS`` it is."""
        if self.kind == "refused":
            return failure_reason(self.code, self.status)
        return "network" if self.kind == "network" else "other"

    @property
    def retriable(self) -> bool:
        """Whether trying again can help by itself."""
        if self.kind != "refused":
            return True
        return self.status >= 500 or self.status == 429 or self.code in RETRIABLE_CODES


#: botocore's connection failures (and the socket's own, raised past it).
_NETWORK = (ConnectionError, HTTPClientError, builtins.ConnectionError, TimeoutError)


def failure_of(exc: BaseException) -> UpstreamFailure:
    """The classification of a boto3 call's exception."""
    if isinstance(exc, ClientError):
        message = str(exc.response.get("Error", {}).get("Message", ""))
        return UpstreamFailure("refused", code_of(exc), status_of(exc), message)
    name = type(exc).__name__
    if isinstance(exc, NoCredentialsError):
        return UpstreamFailure("no_credentials", name)
    if isinstance(exc, _NETWORK):
        return UpstreamFailure("network", name)
    if isinstance(exc, (BotoCoreError, OSError)):
        return UpstreamFailure("transport", name)
    return UpstreamFailure("unexpected")


def classify(exc: Exception, action: str) -> UploadError:
    """Wrap a boto3 failure in an UploadError that says whether a retry can help and which of
    ``errors.FAILURE_REASONS`` it is."""
    if isinstance(exc, UploadError):
        return exc
    failure = failure_of(exc)
    if failure.kind == "refused":
        message = f"{action}: {failure.code or failure.status}: {exc}"
    elif failure.kind == "unexpected":
        message = f"{action}: unexpected {type(exc).__name__}: {exc}"
    else:
        message = f"{action}: {exc}"
    return UploadError(
        message, retriable=failure.retriable, code=failure.code, reason=failure.reason
    )
