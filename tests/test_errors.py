"""The exception tree (errors.py) and the one map from it to S3 errors (server/errormap.py)."""

from __future__ import annotations

import errno

import pytest

from s3batchd.errors import (
    DiskFull,
    Draining,
    FailedDiskFull,
    NoSuchBucket,
    NotStored,
    SpoolError,
    SpoolFailedError,
    UploadRefused,
    with_disk_full,
)
from s3batchd.server.errormap import s3_error_of

Answer = tuple[int, str, str, dict[str, str]]


def answer(exc: BaseException) -> Answer:
    error = s3_error_of(exc)
    return error.status_code, error.code, error.message, error.headers


FULL: Answer = (503, "SlowDown", "The local spool's disk is full.", {"Retry-After": "1"})
NOT_STORED: Answer = (500, "InternalError", "The object could not be stored; please retry.", {})


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (DiskFull("/spool/x.open: [Errno 28] No space left on device"), FULL),
        (FailedDiskFull("fdatasync of /spool/x.open failed"), FULL),
        (SpoolError("cannot append to /spool/x.open: [Errno 5] EIO"), NOT_STORED),
        (SpoolFailedError("fdatasync of /spool/x.open failed"), NOT_STORED),
        (Draining(), (503, "SlowDown", "The daemon is shutting down.", {"Retry-After": "1"})),
        (NotStored("Nothing was stored."), (500, "InternalError", "Nothing was stored.", {})),
        (
            ValueError("a bug"),
            (500, "InternalError", "We encountered an internal error. Please try again.", {}),
        ),
    ],
)
def test_domain_errors_are_answered_by_their_class(exc: BaseException, expected: Answer) -> None:
    assert answer(exc) == expected


def test_an_s3_error_is_its_own_answer() -> None:
    missing = NoSuchBucket("gone")
    assert s3_error_of(missing) is missing


KEPT = (
    "The upload was refused upstream ({}); the object is kept in the daemon's spool, see "
    "`s3batchd parked list`."
)


@pytest.mark.parametrize(
    ("reason", "status", "code", "name"),
    [
        ("no_such_bucket", 404, "NoSuchBucket", "NoSuchBucket"),
        ("access_denied", 403, "AccessDenied", "AccessDenied"),
        ("kms", 403, "AccessDenied", "a KMS error"),
        ("invalid_bucket_name", 400, "InvalidBucketName", "InvalidBucketName"),
        ("conflict", 500, "InternalError", "another object under the batch key"),
        ("other", 500, "InternalError", "other"),
    ],
)
def test_a_parked_upload_is_answered_as_the_bucket_refused_it(
    reason: str, status: int, code: str, name: str
) -> None:
    error = s3_error_of(UploadRefused("bkt", reason))
    assert (error.status_code, error.code, error.message) == (status, code, KEPT.format(name))
    assert error.details == ({"BucketName": "bkt"} if code == "NoSuchBucket" else {})


def test_an_answer_is_a_new_error_each_time() -> None:
    first, second = s3_error_of(Draining()), s3_error_of(Draining())
    assert first is not second
    first.headers["Connection"] = "close"
    assert second.headers == {"Retry-After": "1"}


def _raised(exc: SpoolError, cause: OSError) -> SpoolError:
    try:
        raise exc from cause
    except SpoolError as raised:
        return raised


def test_a_spool_write_that_found_the_disk_full_becomes_disk_full() -> None:
    full = OSError(errno.ENOSPC, "No space left on device")
    appended = _raised(SpoolError("cannot append"), full)
    assert type(with_disk_full(appended)) is DiskFull
    assert with_disk_full(appended).__cause__ is appended
    synced = with_disk_full(_raised(SpoolFailedError("fdatasync failed"), full))
    assert isinstance(synced, SpoolFailedError)
    assert isinstance(synced, DiskFull)
    other = _raised(SpoolError("cannot append"), OSError(errno.EIO, "Input/output error"))
    assert with_disk_full(other) is other
