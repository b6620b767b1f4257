"""Which S3 error answers an exception: the one map from the exception tree (errors.py) to
what a client is told.

An ``S3Error`` (raised by the HTTP-level layers: s3, handlers, forward) is its own answer.
Every other exception is a domain error (spool, batching, upload, catalog), which never names
an HTTP status: ``ANSWERS`` gives, by exception class (the nearest class in its MRO), the S3
error, its message and its extra headers, or the function that builds it from the
exception. Anything else is a bug: logged with its traceback by ``app.s3_endpoint`` and
answered ``500 InternalError`` (never a traceback on the wire). ``app.render_s3_error`` turns
the result into the S3 XML answer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from s3batchd.errors import (
    RETRY_SOON,
    AccessDenied,
    CatalogUnavailable,
    DiskFull,
    Draining,
    InternalError,
    InvalidBucketName,
    NoSuchBucket,
    NotStored,
    NoUpstreamCredentials,
    S3Error,
    ServiceUnavailable,
    SlowDown,
    SpoolError,
    UploadRefused,
    UpstreamFailed,
)


@dataclass(frozen=True, slots=True)
class Answer:
    """How a domain error is answered."""

    error: type[S3Error] = InternalError
    """The S3 error (its code and status)."""
    message: str | None = None
    """The message; None: the exception's own (written for clients)."""
    headers: Mapping[str, str] = field(default_factory=dict)
    """Headers added to the answer."""
    logged: bool = False
    """Logged at ERROR with the exception's message (it names paths, not fit for clients)."""
    render: Callable[[Any], S3Error] | None = None
    """Builds the S3 error from the exception instead (the other fields unused)."""

    def s3_error(self, exc: BaseException) -> S3Error:
        """The S3 error answering ``exc``."""
        if self.render is not None:
            return self.render(exc)
        return self.error(self.message or str(exc), headers=dict(self.headers))


def refusal_error(refused: UploadRefused) -> S3Error:
    """The answer to a writer waiting (durability ``upload``) for a batch that was parked:
    the S3 error the bucket would have given it, saying the object is kept."""
    kind = REFUSALS.get(refused.reason, InternalError)
    error = NoSuchBucket(refused.bucket) if kind is NoSuchBucket else kind()
    error.message = str(refused)
    return error


#: The S3 error a bucket gives for an upload refused for ``UploadError.reason`` (others: 500).
REFUSALS: Mapping[str, type[S3Error]] = {
    "no_such_bucket": NoSuchBucket,
    "access_denied": AccessDenied,
    "kms": AccessDenied,
    "invalid_bucket_name": InvalidBucketName,
}


def upstream_error(failed: UpstreamFailed) -> S3Error:
    """The bucket's refusal as the bucket gave it (a status below 400: 502); 503 when it
    could not be reached or the daemon has no credentials yet (clients retry 503)."""
    if failed.no_credentials:
        return NoUpstreamCredentials(headers=RETRY_SOON)
    if failed.status == 0:
        return ServiceUnavailable(headers=RETRY_SOON)
    error = S3Error(str(failed) or None)
    error.code = failed.code or "InternalError"
    error.status_code = failed.status if failed.status >= 400 else 502
    return error


#: Domain errors by class; a subclass not listed is answered as its nearest listed base.
ANSWERS: Mapping[type[BaseException], Answer] = {
    Draining: Answer(SlowDown, headers=RETRY_SOON),
    DiskFull: Answer(SlowDown, "The local spool's disk is full.", RETRY_SOON, logged=True),
    SpoolError: Answer(message="The object could not be stored; please retry.", logged=True),
    NotStored: Answer(),
    UploadRefused: Answer(render=refusal_error),
    UpstreamFailed: Answer(render=upstream_error),
    # A read that needs the fleet's catalog (PostgreSQL) while it fails: retried, not a 404.
    CatalogUnavailable: Answer(SlowDown, "The catalog is unavailable; please retry.", RETRY_SOON),
}


def answer_of(exc: BaseException) -> Answer | None:
    """The answer listed for ``exc``'s class or its nearest base; None when none is (an
    S3Error, or a bug)."""
    for kind in type(exc).__mro__:
        answer = ANSWERS.get(kind)
        if answer is not None:
            return answer
    return None


def s3_error_of(exc: BaseException) -> S3Error:
    """The S3 error a client is answered for ``exc``."""
    if isinstance(exc, S3Error):
        return exc
    answer = answer_of(exc)
    return InternalError() if answer is None else answer.s3_error(exc)
