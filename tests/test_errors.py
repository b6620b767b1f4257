"""The exception tree (errors.py) and the one map from it to S3 errors (server/errormap.py)."""

from __future__ import annotations

import errno
import importlib
import pkgutil
import re

import pytest

import s3batchd
from s3batchd import errors
from s3batchd.errors import (
    DiskFull,
    Draining,
    FailedDiskFull,
    NoSuchBucket,
    NotStored,
    S3BatchdError,
    S3Error,
    SpoolError,
    SpoolFailedError,
    UploadRefused,
    with_disk_full,
)
from s3batchd.reader import ReaderError
from s3batchd.server.errormap import answer_of, s3_error_of

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


def package_exceptions() -> set[type[BaseException]]:
    """Every exception class defined in s3batchd."""
    for info in pkgutil.walk_packages(s3batchd.__path__, "s3batchd."):
        importlib.import_module(info.name)
    found: set[type[BaseException]] = set()
    pending: list[type[BaseException]] = [BaseException]
    while pending:
        kind = pending.pop()
        for sub in kind.__subclasses__():
            if sub not in found:
                found.add(sub)
                pending.append(sub)
    return {kind for kind in found if kind.__module__.startswith("s3batchd.")}


TREE = re.search(r"```\n(.*?)```", errors.__doc__ or "", re.DOTALL)
BRANCH = re.compile(r"[├└]── ")


def drawn_tree() -> dict[str, str | None]:
    """Each class drawn in errors.py's tree, with the class it is drawn under."""
    assert TREE is not None
    parents: dict[str, str | None] = {}
    path: list[str] = []  # the first class of the last row at each depth
    for line in TREE.group(1).splitlines():
        match = BRANCH.search(line)
        if match is None:
            if line and not line[0].isspace() and line[0] not in "│":
                path = [line.split()[0]]
                parents[path[0]] = None
            continue
        depth = match.start() // 4 + 1
        row = re.sub(r" ?\([^)]*\)", "", line[match.end() :])  # no (status) or (fields)
        names = re.match(r"\w+(?:, \w+)*", row).group(0).split(", ")  # type: ignore[union-attr]
        del path[depth:]
        for name in names:
            parents[name] = path[depth - 1]
        path.append(names[0])
    return parents


def test_errors_docstring_draws_every_exception_class_under_its_base() -> None:
    drawn = drawn_tree()
    outside = {"NoCredentialsYetError", "ConfigRefused"}  # named below the drawing
    classes = {kind.__name__: kind for kind in package_exceptions()}
    assert set(classes) - outside == set(drawn)
    for name in outside:
        assert f"``{name}``" in (errors.__doc__ or "")
    for name, parent in drawn.items():
        if parent is not None:
            assert classes[parent] in classes[name].__bases__, (name, parent)


#: Domain errors no request meets, so errormap.py has no answer for them (a bug if one did:
#: logged with its traceback, 500 InternalError).
NEVER_ANSWERED = {
    errors.ConfigError,  # start-up only
    errors.StartupError,  # start-up only
    errors.UploadError,  # the uploader retries or parks; writers meet UploadRefused
    errors.LookupFailedError,  # bucketmodes.py keeps the last answer meanwhile
    errors.IndexFormatError,  # indexes are parsed by the reader, reindex and background tasks
    errors.CompactionError,  # compaction passes run in the background or from the CLI
    ReaderError,  # the reader library's, for its callers
}


def test_every_domain_error_has_an_answer_or_never_meets_a_request() -> None:
    for kind in package_exceptions() - {S3BatchdError}:  # the root is never raised itself
        if not issubclass(kind, S3BatchdError) or issubclass(kind, S3Error):
            continue
        if any(issubclass(kind, never) for never in NEVER_ANSWERED):
            assert answer_of(kind.__new__(kind)) is None, kind
        else:
            assert answer_of(kind.__new__(kind)) is not None, kind
