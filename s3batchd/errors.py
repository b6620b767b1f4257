"""The exception tree of s3batchd: every class the package raises on purpose.

Domain errors (the spool, batching, upload and catalog layers) name no HTTP status; the one
map from a class to the S3 error a client is answered (code, status, message, headers such as
Retry-After) is ``server/errormap.py``. Only the HTTP-level layers (s3, handlers, forward,
server) raise ``S3Error`` subclasses, which are their own answer; ``server/app.py`` renders
them as S3 XML, in one place. The module is long because it is the whole tree: some fifty
declarative classes of a few lines each, kept together so that the drawing below is checked
against one file (tests/test_errors.py).

```
S3BatchdError                      root of everything the daemon raises on purpose
├── ConfigError                    settings missing or invalid (refused at start)
├── StartupError                   a listener, the spool or the catalog is unusable at start
├── SpoolError                     the local spool cannot take or keep data (500 InternalError)
│   ├── SpoolFailedError           a write or fdatasync failed: the file acknowledges nothing more
│   │   └── FailedDiskFull         ... because the file system was full (also a DiskFull)
│   └── DiskFull                   the spool's file system is full (ENOSPC, or SQLITE_FULL of
│                                  the catalog): 503 SlowDown, Retry-After, like backpressure
├── Draining                       the daemon is shutting down: the batcher takes no new records
│                                  (503 SlowDown, Retry-After)
├── NotStored                      a batch ``upload``-durability writers wait for will not be
│                                  stored or uploaded (500 InternalError, the message as it is)
├── UploadRefused(bucket, reason, entry)  a batch ``upload``-durability writers wait for was
│                                  parked: answered as the bucket refused it (NoSuchBucket, ...)
├── UpstreamFailed(code, status)   a read of the bucket on a client's behalf failed: answered as
│                                  the bucket answered, or 503 (unreachable, no credentials yet)
├── UploadError(retriable, reason) an upstream S3 call failed; ``retriable`` says whether to retry,
│   │                              ``reason`` which of ``FAILURE_REASONS`` it was (metrics, parking)
│   └── ConflictError              the key exists upstream and holds another object
├── IndexFormatError               a document is not a batch index of a version s3batchd knows
├── CatalogUnavailable             the shared catalog (PostgreSQL) failed or is out of reach:
│   │                              503 SlowDown for a read that needs it
│   └── CatalogRejected            a batch a retry cannot write (index gone, rows refused): dropped
├── LookupFailedError              a bucket's configuration could not be read (bucketmodes.py)
├── ReaderError                    the reader library's (defined in reader.py, its public API)
│   ├── NotFoundError              the tar or index key does not exist
│   ├── NotABatchError             not an s3batchd batch this reader understands
│   ├── FetchError                 an S3 request failed (the boto3 exception is the cause)
│   └── IntegrityError             bytes read do not match the length, ETag or a checksum
├── CompactionError                a compaction pass cannot run (no conditional writes upstream)
│   └── LeaseHeld                  another compactor holds the bucket's compaction lease
└── S3Error(code, status_code)     answered to the client as S3 XML, as it is
    ├── AccessDenied (403), InvalidBucketName (400), KeyTooLongError (400)
    ├── InvalidArgument, InvalidRequest, InvalidTag, MalformedXML (400)
    ├── SignatureDoesNotMatch, InvalidAccessKeyId, RequestTimeTooSkewed (403)
    ├── AuthorizationHeaderMalformed, AuthorizationQueryParametersError (400)
    ├── MissingContentLength (411), EntityTooLarge, EntityTooSmall, MetadataTooLarge (400)
    ├── IncompleteBody (400)
    │   └── ClientDisconnectedError    the client went away before its whole body (never sent)
    ├── RequestHeaderSectionTooLarge (answered by protocol.py: no request exists yet)
    ├── InvalidDigest, BadDigest, XAmzContentSHA256Mismatch (400)
    ├── NotImplementedS3 (501 NotImplemented)
    ├── NoSuchKey (404), PreconditionFailed (412), InvalidRange (416)
    ├── NoSuchBucket (404, the bucket is named in <BucketName>)
    ├── NoSuchUpload (404), InvalidPart, InvalidPartOrder (400)
    ├── RequestTimeout (400, a stalled body)
    ├── SlowDown (503, Retry-After)
    ├── ServiceUnavailable (503, the bucket could not be reached)
    │   └── NoUpstreamCredentials  the daemon's credential chain has found nothing yet
    ├── InternalError (500)
    │   └── CorruptObject          stored bytes do not match the object's ETag (never served)
    └── ClientClosedRequest (499, never sent: the client is gone; counted in the metrics)
```

Outside the tree, because they must subclass another library's class: ``NoCredentialsYetError``
(upload/credentials.py, a botocore ``NoCredentialsError``, so botocore retries it) and
``ConfigRefused`` (cli/main.py, a ``click.ClickException``: one line on stderr, exit status 2).
"""

from __future__ import annotations

from errno import ENOSPC
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from s3batchd.records import SpoolEntry


class S3BatchdError(Exception):
    """Root of all s3batchd errors."""


class ConfigError(S3BatchdError):
    """Settings are missing or invalid."""


class StartupError(S3BatchdError):
    """The daemon cannot start: a port is taken, the spool or the catalog is unusable. The
    message names the setting and the path or address."""


class IndexFormatError(S3BatchdError):
    """A document is not a batch index (docs/index-format.md) of a version s3batchd knows:
    the message names the first field that is missing or of another type."""


class SpoolError(S3BatchdError):
    """The spool cannot accept or keep data."""


class SpoolFailedError(SpoolError):
    """A write or fdatasync failed; the spool file acknowledges nothing more."""


class CatalogUnavailable(S3BatchdError):
    """The shared catalog (``catalog.backend = "postgres"``) could not be reached or failed a
    query. PUTs are still taken; a read that needs it answers ``503 SlowDown``."""


class CatalogRejected(CatalogUnavailable):
    """The shared catalog refused a batch for a reason a retry does not change: its index is
    gone from the bucket or is not an index, or PostgreSQL rejected its rows (a data or
    integrity error). The batch is dropped from the writer's queue, with an error log."""


class DiskFull(SpoolError):
    """The spool's file system is full: a spool file's append was rolled back (ENOSPC), or
    the catalog kept there could not commit (SQLITE_FULL). Nothing acknowledged was lost;
    uploads free the room, so the client is told to retry."""


class FailedDiskFull(SpoolFailedError, DiskFull):
    """An fdatasync found the file system full: the file acknowledges nothing more, and the
    client is answered as for a full disk."""


def with_disk_full(exc: SpoolError) -> SpoolError:
    """``exc`` as a DiskFull (caused by ``exc``) when the write it reports found the file
    system full; else ``exc`` itself."""
    cause = exc.__cause__
    if isinstance(exc, DiskFull) or not isinstance(cause, OSError) or cause.errno != ENOSPC:
        return exc
    full = FailedDiskFull(str(exc)) if isinstance(exc, SpoolFailedError) else DiskFull(str(exc))
    full.__cause__ = exc
    return full


class Draining(S3BatchdError):
    """The daemon is shutting down: the batcher takes no new records (the client retries
    against another instance)."""

    def __init__(self, message: str = "The daemon is shutting down.") -> None:
        super().__init__(message)


class CompactionError(S3BatchdError):
    """A compaction pass cannot run or was stopped (docs/compaction.md)."""


class LeaseHeld(CompactionError):
    """Another compactor holds the bucket's compaction lease (or took it over)."""


#: Why an upload failed: the ``reason`` of an UploadError, the label values of
#: ``s3batchd_upload_failures_total`` (a fixed set: bounded label cardinality).
FAILURE_REASONS = (
    "no_such_bucket",
    "access_denied",
    "credentials",
    "invalid_bucket_name",
    "kms",
    "conflict",
    "throttled",
    "server_error",
    "network",
    "other",
)


class UploadError(S3BatchdError):
    """An upstream S3 call failed."""

    def __init__(
        self, message: str, *, retriable: bool, code: str = "", reason: str = "other"
    ) -> None:
        super().__init__(message)
        self.retriable = retriable
        self.code = code
        self.reason = reason

    def __reduce__(self) -> tuple[object, ...]:
        # Pickled as it is (an upload process sends it back to the daemon): the default
        # would call __init__ with the message alone.
        return _rebuilt_upload_error, (
            type(self),
            str(self),
            self.retriable,
            self.code,
            self.reason,
        )


def _rebuilt_upload_error(
    kind: type[UploadError], message: str, retriable: bool, code: str, reason: str = "other"
) -> UploadError:
    error = kind.__new__(kind)
    Exception.__init__(error, message)
    error.retriable = retriable
    error.code = code
    error.reason = reason
    return error


class ConflictError(UploadError):
    """The batch key exists upstream but holds a different object."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retriable=False, code="PreconditionFailed", reason="conflict")


class S3Error(S3BatchdError):
    """An error answered to the client as S3 XML."""

    code = "InternalError"
    status_code = 500
    default_message = "We encountered an internal error. Please try again."

    def __init__(
        self, message: str | None = None, *, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message or self.default_message)
        self.message = message or self.default_message
        self.headers = headers or {}
        self.details: dict[str, str] = {}
        """More elements of the XML error (S3's ``<BucketName>`` of NoSuchBucket)."""


class AccessDenied(S3Error):
    code, status_code, default_message = "AccessDenied", 403, "Access Denied"


class InvalidBucketName(S3Error):
    code, status_code, default_message = (
        "InvalidBucketName",
        400,
        "The specified bucket is not valid.",
    )


class KeyTooLongError(S3Error):
    code, status_code, default_message = "KeyTooLongError", 400, "Your key is too long"


class InvalidArgument(S3Error):
    code, status_code, default_message = "InvalidArgument", 400, "Invalid Argument"


class InvalidRequest(S3Error):
    code, status_code, default_message = "InvalidRequest", 400, "Invalid Request"


class InvalidTag(S3Error):
    code, status_code, default_message = (
        "InvalidTag",
        400,
        "The tag provided was not a valid tag.",
    )


class MissingContentLength(S3Error):
    code, status_code = "MissingContentLength", 411
    default_message = "You must provide the Content-Length HTTP header."


class IncompleteBody(S3Error):
    code, status_code = "IncompleteBody", 400
    default_message = (
        "You did not provide the number of bytes specified by the Content-Length HTTP header."
    )


class EntityTooLarge(S3Error):
    code, status_code = "EntityTooLarge", 400
    default_message = "Your proposed upload exceeds the maximum allowed object size."


class ClientDisconnectedError(IncompleteBody):
    """The client went away before sending the whole body."""


class RequestHeaderSectionTooLarge(S3Error):
    code, status_code = "RequestHeaderSectionTooLarge", 400
    default_message = "Your request header section exceeds the maximum allowed size."


class MetadataTooLarge(S3Error):
    code, status_code = "MetadataTooLarge", 400
    default_message = "Your metadata headers exceed the maximum allowed metadata size."


class InvalidDigest(S3Error):
    code, status_code = "InvalidDigest", 400
    default_message = "The Content-MD5 or checksum value you specified is not valid."


class BadDigest(S3Error):
    code, status_code = "BadDigest", 400
    default_message = "The Content-MD5 or checksum you specified did not match what we received."


class XAmzContentSHA256Mismatch(S3Error):
    code, status_code = "XAmzContentSHA256Mismatch", 400
    default_message = "The provided 'x-amz-content-sha256' header does not match what was computed."


class NotImplementedS3(S3Error):
    code, status_code = "NotImplemented", 501
    default_message = (
        "A header or operation you provided implies functionality that is not implemented."
    )


class NoSuchKey(S3Error):
    code, status_code, default_message = "NoSuchKey", 404, "The specified key does not exist."


class NoSuchBucket(S3Error):
    code, status_code, default_message = "NoSuchBucket", 404, "The specified bucket does not exist"

    def __init__(self, bucket: str) -> None:
        super().__init__()
        self.details["BucketName"] = bucket


class PreconditionFailed(S3Error):
    code, status_code = "PreconditionFailed", 412
    default_message = "At least one of the preconditions you specified did not hold."


class InvalidRange(S3Error):
    code, status_code, default_message = (
        "InvalidRange",
        416,
        "The requested range is not satisfiable",
    )


class RequestTimeout(S3Error):
    code, status_code = "RequestTimeout", 400
    default_message = (
        "Your socket connection to the server was not read from or written to within the "
        "timeout period."
    )


#: Headers of a 503 the client should retry in a second (SlowDown, ServiceUnavailable).
RETRY_SOON = {"Retry-After": "1"}


class SlowDown(S3Error):
    code, status_code = "SlowDown", 503
    default_message = "Please reduce your request rate."


class InternalError(S3Error):
    """500, retried by every client."""


class CorruptObject(InternalError):
    """500: the bytes read for an object do not match its length or MD5 (answered instead of
    the wrong bytes)."""


class SignatureDoesNotMatch(S3Error):
    """403; ``string_to_sign`` and ``canonical_request`` hold what the server computed (debug)."""

    code, status_code = "SignatureDoesNotMatch", 403
    default_message = (
        "The request signature we calculated does not match the signature you provided. "
        "Check your key and signing method."
    )
    string_to_sign = ""
    canonical_request = ""


class InvalidAccessKeyId(S3Error):
    code, status_code = "InvalidAccessKeyId", 403
    default_message = "The AWS Access Key Id you provided does not exist in our records."


class RequestTimeTooSkewed(S3Error):
    code, status_code = "RequestTimeTooSkewed", 403
    default_message = "The difference between the request time and the current time is too large."


class AuthorizationHeaderMalformed(S3Error):
    code, status_code = "AuthorizationHeaderMalformed", 400
    default_message = "The authorization header is malformed."


class AuthorizationQueryParametersError(S3Error):
    code, status_code = "AuthorizationQueryParametersError", 400
    default_message = "The query-string authentication parameters are malformed."


class ServiceUnavailable(S3Error):
    """The bucket could not be reached for a forwarded request (every client retries 503)."""

    code, status_code = "ServiceUnavailable", 503
    default_message = "The upstream S3 endpoint could not be reached; please retry."


class NoUpstreamCredentials(ServiceUnavailable):
    """The daemon's credential chain has found nothing yet (docs/operations.md)."""

    default_message = "The daemon has no upstream credentials yet; please retry."


class NoSuchUpload(S3Error):
    code, status_code = "NoSuchUpload", 404
    default_message = (
        "The specified multipart upload does not exist. The upload ID may be invalid, or the "
        "upload may have been aborted or completed."
    )


class InvalidPart(S3Error):
    code, status_code = "InvalidPart", 400
    default_message = (
        "One or more of the specified parts could not be found. The part may not have been "
        "uploaded, or the specified entity tag may not match the part's entity tag."
    )


class InvalidPartOrder(S3Error):
    code, status_code = "InvalidPartOrder", 400
    default_message = "The list of parts was not in ascending order."


class EntityTooSmall(S3Error):
    code, status_code = "EntityTooSmall", 400
    default_message = "Your proposed upload is smaller than the minimum allowed object size."


class MalformedXML(S3Error):
    code, status_code = "MalformedXML", 400
    default_message = "The XML you provided was not well-formed or did not validate."


class ClientClosedRequest(S3Error):
    """The client hung up while its forwarded GET or HEAD waited for the bucket's answer; the
    upstream request was given up. Nothing reaches the client: 499 (nginx's "client closed
    request") only labels ``s3batchd_requests_total``."""

    code, status_code = "ClientClosedRequest", 499
    default_message = "The client closed the connection before the answer was ready."


class UpstreamFailed(S3BatchdError):
    """A call of the daemon's own client on a client's behalf (a read of an uploaded object)
    failed: the bucket refused it (``code``, ``status``; the message is the bucket's), or
    did not answer (``status`` 0), or the daemon has no credentials yet."""

    def __init__(self, message: str, *, code: str, status: int, no_credentials: bool) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.no_credentials = no_credentials


class LookupFailedError(S3BatchdError):
    """A bucket's configuration could not be read (other than AccessDenied)."""


class UploadRefused(S3BatchdError):
    """A batch of ``bucket`` was parked for ``reason`` (one of ``FAILURE_REASONS``) while
    writers with durability ``upload`` waited for it; ``entry`` is where one writer's object
    waits in the spool."""

    def __init__(self, bucket: str, reason: str, entry: SpoolEntry | None = None) -> None:
        super().__init__(
            f"The upload was refused upstream ({refusal_name(reason)}); the object is kept in "
            "the daemon's spool, see `s3batchd parked list`."
        )
        self.bucket = bucket
        self.reason = reason
        self.entry = entry


class NotStored(S3BatchdError):
    """A writer waiting for its batch's upload (durability ``upload``) will not see it: the
    batch was not stored, or not uploaded before shutdown. The message is the client's."""


#: How the refusal of a parked batch is named to clients, by ``UploadError.reason``.
REFUSAL_NAMES = {
    "no_such_bucket": "NoSuchBucket",
    "access_denied": "AccessDenied",
    "invalid_bucket_name": "InvalidBucketName",
    "kms": "a KMS error",
    "conflict": "another object under the batch key",
}


def refusal_name(reason: str) -> str:
    """The refusal of reason ``reason`` as a client reads it in a message."""
    return REFUSAL_NAMES.get(reason, reason)
