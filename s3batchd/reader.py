"""Read objects back from the batches s3batchd wrote, with any boto3 S3 client.

A consumer needs nothing from the daemon: the PUT response headers (or a batch's index) say
which tar holds an object and at which byte range, and one ranged GET of the tar returns it.

```python
from s3batchd import reader

location = reader.Location.from_headers(answer["ResponseMetadata"]["HTTPHeaders"])
data = reader.get(s3, location)  # one ranged GET, length, MD5 and checksums verified
many = reader.get_many(s3, locations)  # neighbouring ranges coalesced, fetched in parallel
for position, pieces in reader.iter_many(s3, locations):  # the same, in bounded memory
    ...
for entry, data in reader.iter_batch(s3, bucket, tar_key):  # a whole batch, via its index
    ...
reader.download(s3, bucket, tar_key, file)  # a whole tar, streamed (then Verifier per object)
```

Pass a :class:`ReadStats` to see how many GETs a read cost.

Every object returned has been verified: its length, its MD5 against the ETag (when known) and
every checksum the client sent. Everything raised on purpose is a :class:`ReaderError`:

```
ReaderError(S3BatchdError)
├── NotFoundError      the tar or index key does not exist
├── NotABatchError     the key or document is not an s3batchd batch (or a newer format)
├── FetchError         any other S3 or connection failure (the boto3 error is the cause)
└── IntegrityError     the bytes read do not match the recorded length, ETag or checksum
```

Locations are trusted only as far as they go: the bucket and tar key come from the caller (an
index copied or replicated to another bucket still reads from where it is now, not from the
``tar.bucket`` recorded in it).

One module of about 700 lines, on purpose: it is the public library, imported whole as
``s3batchd.reader`` by applications (and the CLI) without the daemon; its parts (locations,
verification, coalesced ranged reads, the index, whole-tar downloads) share the ranged GET and
the S3-error mapping below. Should it grow, it becomes a package re-exporting these names.
"""

from __future__ import annotations

import base64
import hashlib
import re
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from s3batchd.constants import HEADER_PREFIX, MB
from s3batchd.errors import IndexFormatError, InvalidDigest, S3BatchdError
from s3batchd.index import (
    INDEX_SUFFIX,
    TAR_SUFFIX,
    check_object,
    parse_index,
    updated_objects,
)
from s3batchd.records import byte_range as range_header
from s3batchd.s3.checksums import ALGORITHMS, Hasher, decode_checksum, new_hasher

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = [
    "FetchError",
    "IntegrityError",
    "Location",
    "NotABatchError",
    "NotFoundError",
    "ReadStats",
    "ReaderError",
    "Sink",
    "Verifier",
    "download",
    "get",
    "get_many",
    "index_key_for",
    "iter_batch",
    "iter_many",
    "load_index",
    "locations",
    "parse_s3_url",
    "tar_key_for",
    "verify",
]

#: Defaults of :func:`get_many` and :func:`iter_batch`.
DEFAULT_CONCURRENCY = 8
DEFAULT_MAX_GAP = 64 * 1024
DEFAULT_MAX_SPAN = 8 * MB

_CHUNK = 1 * MB
_ETAG = re.compile(r'^"?([0-9a-fA-F]{32})"?$')
_CHECKSUM_HEADER = "x-amz-checksum-"


class Sink(Protocol):
    """Where :func:`download` writes: a binary file or anything with ``write(bytes)``."""

    def write(self, data: bytes, /) -> object:
        """Take the next piece."""


class ReaderError(S3BatchdError):
    """Root of everything the reader raises on purpose."""


class NotFoundError(ReaderError):
    """The tar or index key does not exist (or is not readable as such)."""


class NotABatchError(ReaderError):
    """The key or document is not an s3batchd batch this reader understands."""


class FetchError(ReaderError):
    """An S3 request failed; the boto3 exception is the ``__cause__``."""


class IntegrityError(ReaderError):
    """The bytes read do not match the recorded length, ETag (MD5) or a checksum."""


@dataclass(frozen=True, slots=True)
class Location:
    """Where one object's data is: a byte range of a batch tar, plus what it must hash to."""

    bucket: str
    tar_key: str
    offset: int
    """Offset of the object's data inside the tar."""
    length: int
    """Length of the data in bytes."""
    etag: str | None = None
    """The ETag (quoted hex MD5), or None when unknown (then the MD5 is not checked)."""
    checksums: Mapping[str, str] = field(default_factory=dict, hash=False)
    """Base64 checksums by lower-case algorithm (``crc32``, ``crc32c``, ``crc64nvme``,
    ``sha1``, ``sha256``), each verified on read."""

    def __post_init__(self) -> None:
        if not self.bucket or not self.tar_key:
            raise ReaderError("a location needs a bucket and a tar key")
        if self.offset < 0 or self.length < 0:
            raise ReaderError(f"invalid offset/length {self.offset}/{self.length}")
        if self.etag is not None:
            match = _ETAG.match(self.etag)
            if match is None:
                raise ReaderError(f"not the ETag of a single-part object: {self.etag!r}")
            object.__setattr__(self, "etag", f'"{match[1].lower()}"')
        for algorithm, value in self.checksums.items():
            _decode_checksum(algorithm, value)
        object.__setattr__(self, "checksums", dict(self.checksums))

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> Location:
        """The location in a PutObject response's headers (any case, e.g. boto3's
        ``answer["ResponseMetadata"]["HTTPHeaders"]``): ``x-s3batchd-tar``,
        ``x-s3batchd-offset``, ``x-s3batchd-length``, ``ETag`` and ``x-amz-checksum-*``."""
        lower = {name.lower(): value for name, value in headers.items()}
        missing = [
            HEADER_PREFIX + name
            for name in ("tar", "offset", "length")
            if HEADER_PREFIX + name not in lower
        ]
        if missing:
            raise ReaderError(f"not an s3batchd PutObject response: no {', '.join(missing)}")
        bucket, tar_key = parse_s3_url(lower[HEADER_PREFIX + "tar"])
        try:
            offset = int(lower[HEADER_PREFIX + "offset"])
            length = int(lower[HEADER_PREFIX + "length"])
        except ValueError as exc:
            raise ReaderError(f"invalid x-s3batchd-offset or -length: {exc}") from exc
        checksums = {
            name.removeprefix(_CHECKSUM_HEADER): value
            for name, value in lower.items()
            if name.startswith(_CHECKSUM_HEADER)
            and name.removeprefix(_CHECKSUM_HEADER) in ALGORITHMS
        }
        etag = lower.get("etag")
        if etag is not None and "-" in etag:
            etag = None  # a multipart ETag is not the MD5 of the data
        location = cls(bucket, tar_key, offset, length, etag, checksums)
        sent_range = lower.get(HEADER_PREFIX + "range")
        if sent_range is not None and sent_range != location.byte_range:
            raise ReaderError(
                f"x-s3batchd-range {sent_range!r} disagrees with offset {offset} and "
                f"length {length}"
            )
        return location

    @classmethod
    def from_index_entry(cls, bucket: str, tar_key: str, entry: Mapping[str, Any]) -> Location:
        """The location of one entry of an index's ``objects`` (the tar at ``bucket`` /
        ``tar_key``, which need not be the ``tar`` the index names if it was copied)."""
        try:
            check_object(entry)
        except IndexFormatError as exc:
            raise NotABatchError(f"not an index entry: {exc}") from exc
        etag = entry["etag"]
        md5 = entry.get("md5")
        if md5 is not None:  # an assembled multipart upload: its ETag is not an MD5
            etag = f'"{md5}"'
        return cls(bucket, tar_key, entry["offset"], entry["length"], etag, entry["checksums"])

    @property
    def end(self) -> int:
        """Offset just after the data (exclusive)."""
        return self.offset + self.length

    @property
    def byte_range(self) -> str | None:
        """``bytes=<first>-<last>`` for a ranged GET, or None for a zero-length object."""
        return range_header(self.offset, self.length)

    @property
    def url(self) -> str:
        """``s3://<bucket>/<tar key>``."""
        return f"s3://{self.bucket}/{self.tar_key}"


@dataclass
class ReadStats:
    """Counters a caller may pass in to see what reading cost (thread-safe)."""

    requests: int = 0
    """GET requests sent (ranged or whole)."""
    bytes_fetched: int = 0
    """Bytes received, gaps between coalesced objects included."""
    objects: int = 0
    """Objects returned, each verified."""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, *, requests: int = 0, bytes_fetched: int = 0, objects: int = 0) -> None:
        """Count more work."""
        with self._lock:
            self.requests += requests
            self.bytes_fetched += bytes_fetched
            self.objects += objects


def parse_s3_url(url: str, *, prefix: bool = False) -> tuple[str, str]:
    """``s3://bucket/key`` -> ``(bucket, key)``; ReaderError when it is not one.

    With ``prefix``, the part after the bucket is a key prefix and may be empty
    (``s3://bucket`` and ``s3://bucket/`` give ``(bucket, "")``)."""
    if not url.startswith("s3://"):
        raise ReaderError(f"not an s3:// URL: {url!r}")
    bucket, _, key = url.removeprefix("s3://").partition("/")
    if not bucket:
        raise ReaderError(f"no bucket in {url!r}")
    if not key and not prefix:
        raise ReaderError(f"not an s3://<bucket>/<key> URL: {url!r}")
    return bucket, key


def index_key_for(key: str) -> str:
    """The index key of a batch given its tar key or index key."""
    if key.endswith(INDEX_SUFFIX):
        return key
    if key.endswith(TAR_SUFFIX):
        return key.removesuffix(TAR_SUFFIX) + INDEX_SUFFIX
    raise NotABatchError(f"not a batch key (neither .tar nor .index.json): {key!r}")


def tar_key_for(key: str) -> str:
    """The tar key of a batch given its tar key or index key."""
    return index_key_for(key).removesuffix(INDEX_SUFFIX) + TAR_SUFFIX


# --- single objects --------------------------------------------------------------------------


def get(client: S3Client, location: Location, *, stats: ReadStats | None = None) -> bytes:
    """The object at ``location``: one ranged GET of its tar (none for a zero-length object).

    Raises:
        IntegrityError: the bytes have another length, MD5 or checksum than recorded.
        NotFoundError: the tar does not exist (not uploaded yet, or deleted).
        FetchError: another S3 failure.
    """
    if location.length == 0:
        data = b""
    else:
        data = _get_range(
            client, location.bucket, location.tar_key, location.offset, location.end, stats
        )
    verify(location, data)
    if stats is not None:
        stats.add(objects=1)
    return data


def verify(location: Location, data: bytes | memoryview) -> None:
    """Raise IntegrityError unless ``data`` is the object ``location`` describes."""
    checker = Verifier(location)
    checker.update(data)
    checker.check()


class Verifier:
    """Incremental verification of one object's bytes (for data read in pieces)."""

    def __init__(self, location: Location) -> None:
        self.location = location
        self.size = 0
        self._md5 = hashlib.md5(usedforsecurity=False) if location.etag is not None else None
        self._hashers: dict[str, Hasher] = {name: new_hasher(name) for name in location.checksums}

    def update(self, data: bytes | memoryview) -> None:
        """Feed the next piece of the object."""
        self.size += len(data)
        if self._md5 is not None:
            self._md5.update(data)
        for hasher in self._hashers.values():
            hasher.update(data)

    def check(self) -> None:
        """Raise IntegrityError unless everything fed matches the location."""
        where = f"{self.location.url} at {self.location.offset}"
        if self.size != self.location.length:
            raise IntegrityError(
                f"{where}: read {self.size} bytes, expected {self.location.length}"
            )
        if self._md5 is not None:
            actual = f'"{self._md5.hexdigest()}"'
            if actual != self.location.etag:
                raise IntegrityError(
                    f"{where}: MD5 {actual} does not match ETag {self.location.etag}"
                )
        for name, hasher in self._hashers.items():
            expected = _decode_checksum(name, self.location.checksums[name])
            if hasher.digest() != expected:
                raise IntegrityError(
                    f"{where}: {name} {base64.b64encode(hasher.digest()).decode()} does not "
                    f"match {self.location.checksums[name]}"
                )


# --- many objects: coalesced ranges -----------------------------------------------------------


@dataclass
class _Span:
    """One GET: the byte range [start, end) of a tar covering several objects."""

    bucket: str
    tar_key: str
    start: int
    end: int
    members: list[tuple[int, Location]]

    def accepts(self, location: Location, max_gap: int, max_span: int) -> bool:
        if (location.bucket, location.tar_key) != (self.bucket, self.tar_key):
            return False
        if location.length == 0:
            return True  # costs nothing wherever it is
        if self.start == self.end:  # no bytes yet: only zero-length members
            return True
        if location.offset < self.start or location.offset > self.end + max_gap:
            return False
        return max(self.end, location.end) - self.start <= max_span

    def add(self, position: int, location: Location) -> None:
        if location.length:
            if self.start == self.end:
                self.start, self.end = location.offset, location.end
            else:
                self.end = max(self.end, location.end)
        self.members.append((position, location))


def _plan(items: Iterable[tuple[int, Location]], max_gap: int, max_span: int) -> list[_Span]:
    """Group consecutive items into spans, in the order given."""
    spans: list[_Span] = []
    for position, location in items:
        if spans and spans[-1].accepts(location, max_gap, max_span):
            spans[-1].add(position, location)
            continue
        span = _Span(location.bucket, location.tar_key, location.offset, location.offset, [])
        span.add(position, location)
        spans.append(span)
    return spans


def _fetch_span(client: S3Client, span: _Span, stats: ReadStats | None) -> list[tuple[int, bytes]]:
    data = b""
    if span.end > span.start:
        data = _get_range(client, span.bucket, span.tar_key, span.start, span.end, stats)
    view = memoryview(data)
    found: list[tuple[int, bytes]] = []
    for position, location in span.members:
        piece = b""
        if location.length:
            piece = bytes(view[location.offset - span.start : location.end - span.start])
        verify(location, piece)
        found.append((position, piece))
    if stats is not None:
        stats.add(objects=len(found))
    return found


def _fetch_in_order(
    client: S3Client,
    spans: Sequence[_Span],
    max_concurrency: int,
    stats: ReadStats | None,
    *,
    window: int,
) -> Iterator[list[tuple[int, bytes]]]:
    """Fetch spans with at most ``max_concurrency`` GETs in flight; yield them in order.

    At most ``window`` spans are submitted and not yet consumed at a time, so memory stays
    bounded however slowly the caller consumes them.
    """
    if max_concurrency == 1 or len(spans) <= 1:
        for span in spans:
            yield _fetch_span(client, span, stats)
        return
    # A pool of its own: a client library runs without the daemon's Threads (concurrency.py).
    pool = ThreadPoolExecutor(
        max_workers=min(max_concurrency, len(spans)), thread_name_prefix="s3batchd-reader"
    )
    pending: deque[Future[list[tuple[int, bytes]]]] = deque()
    try:
        upcoming = iter(spans)
        for span in upcoming:
            pending.append(pool.submit(_fetch_span, client, span, stats))
            if len(pending) >= window:
                break
        while pending:
            done = pending.popleft().result()
            following = next(upcoming, None)
            if following is not None:
                pending.append(pool.submit(_fetch_span, client, following, stats))
            yield done
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _check_limits(max_concurrency: int, max_gap: int, max_span: int) -> None:
    if max_concurrency < 1 or max_gap < 0 or max_span < 1:
        raise ValueError("need max_concurrency >= 1, max_gap >= 0 and max_span >= 1")


def get_many(
    client: S3Client,
    locations: Sequence[Location],
    *,
    max_concurrency: int = DEFAULT_CONCURRENCY,
    max_gap: int = DEFAULT_MAX_GAP,
    max_span: int = DEFAULT_MAX_SPAN,
    stats: ReadStats | None = None,
) -> list[bytes]:
    """The objects at ``locations``, in the same order, each verified.

    Locations in the same tar whose ranges are adjacent or at most ``max_gap`` bytes apart are
    read with one ranged GET, as long as that range stays within ``max_span`` bytes (an object
    larger than ``max_span`` gets a GET of its own). The GETs run on up to ``max_concurrency``
    threads (give the client at least that many ``max_pool_connections``). Zero-length objects
    cost no request. The first failure is raised (see :func:`get`) and the remaining GETs are
    cancelled.
    """
    _check_limits(max_concurrency, max_gap, max_span)
    order = sorted(
        enumerate(locations), key=lambda item: (item[1].bucket, item[1].tar_key, item[1].offset)
    )
    results: list[bytes | None] = [None] * len(locations)
    spans = _plan(order, max_gap, max_span)
    # Every result is kept anyway: submit all spans, the pool bounds the GETs in flight.
    for found in _fetch_in_order(client, spans, max_concurrency, stats, window=len(spans)):
        for position, data in found:
            results[position] = data
    return [data if data is not None else b"" for data in results]


def iter_many(
    client: S3Client,
    locations: Sequence[Location],
    *,
    max_concurrency: int = DEFAULT_CONCURRENCY,
    max_gap: int = DEFAULT_MAX_GAP,
    max_span: int = DEFAULT_MAX_SPAN,
    stats: ReadStats | None = None,
) -> Generator[tuple[int, Iterator[bytes]], None, None]:
    """The objects at ``locations`` in the order given, as ``(position in locations, pieces
    of its data)``, in bounded memory whatever their number and size.

    Neighbouring objects are read together as :func:`get_many` reads them (ranges of at most
    ``max_span`` bytes), at most ``max_concurrency`` ranges fetched ahead of the caller: each
    such object comes verified, in one piece. An object longer than ``max_span`` is streamed
    from a GET of its own in pieces of 1 MiB and verified as its last piece is read (its
    IntegrityError comes after the pieces before it). Take every piece of an object before
    the next object. Raises as :func:`get` does, when the failing object is reached.
    """
    _check_limits(max_concurrency, max_gap, max_span)
    spans = _plan(enumerate(locations), max_gap, max_span)
    start = 0
    while start < len(spans):
        if spans[start].end - spans[start].start > max_span:  # one object, too long to hold
            yield from _stream_span(client, spans[start], stats)
            start += 1
            continue
        end = start + 1
        while end < len(spans) and spans[end].end - spans[end].start <= max_span:
            end += 1
        run = spans[start:end]
        for found in _fetch_in_order(client, run, max_concurrency, stats, window=max_concurrency):
            for position, data in found:
                yield position, iter((data,))
        start = end


def _stream_span(
    client: S3Client, span: _Span, stats: ReadStats | None
) -> Iterator[tuple[int, Iterator[bytes]]]:
    """The members of a span holding one object longer than a span may be: that object
    streamed, the zero-length members beside it as they are."""
    for position, location in span.members:
        if location.length:
            yield position, _stream(client, location, stats)
            continue
        verify(location, b"")
        if stats is not None:
            stats.add(objects=1)
        yield position, iter((b"",))


def _stream(client: S3Client, location: Location, stats: ReadStats | None) -> Iterator[bytes]:
    """One object's data from a ranged GET, in pieces of at most 1 MiB, verified at its end."""
    checker = Verifier(location)
    try:
        with _s3_errors(location.bucket, location.tar_key, location.byte_range):
            answer = client.get_object(
                Bucket=location.bucket,
                Key=location.tar_key,
                Range=f"bytes={location.offset}-{location.end - 1}",  # length > 0
            )
            for piece in answer["Body"].iter_chunks(_CHUNK):
                checker.update(piece)
                if stats is not None:
                    stats.add(bytes_fetched=len(piece))
                yield piece
    finally:
        if stats is not None:
            stats.add(requests=1)
    checker.check()
    if stats is not None:
        stats.add(objects=1)


# --- whole batches ---------------------------------------------------------------------------


def load_index(
    client: S3Client, bucket: str, key: str, *, stats: ReadStats | None = None
) -> dict[str, Any]:
    """The index document of a batch, given its tar key or its index key, as stored (see
    docs/index-format.md; :func:`iter_batch` applies its ``updates`` to its objects).

    Raises:
        NotABatchError: the key is neither, or the document is not an s3batchd index of a
            version this reader knows.
        NotFoundError: the index does not exist (the batch is not completely uploaded, or the
            key is wrong).
        FetchError: another S3 failure.
    """
    index_key = index_key_for(key)
    body = _get(client, bucket, index_key, None, stats)
    try:
        return parse_index(body, where=f"s3://{bucket}/{index_key}")
    except IndexFormatError as exc:
        raise NotABatchError(str(exc)) from exc


def locations(bucket: str, tar_key: str, index: Mapping[str, Any]) -> list[Location]:
    """The location of every object an index lists, in index (tar) order."""
    return [Location.from_index_entry(bucket, tar_key, entry) for entry in index["objects"]]


def iter_batch(
    client: S3Client,
    bucket: str,
    tar_key: str,
    *,
    max_concurrency: int = DEFAULT_CONCURRENCY,
    max_gap: int = DEFAULT_MAX_GAP,
    max_span: int = DEFAULT_MAX_SPAN,
    stats: ReadStats | None = None,
) -> Iterator[tuple[dict[str, Any], bytes]]:
    """Every object of a batch as ``(index entry, data)``, in index order, each verified.

    The entries are the index's ``objects`` with the tags and canned ACL of the index's
    ``updates`` applied (docs/index-format.md). ``tar_key`` may also be the index key. After
    the index (one GET), the tar is read with coalesced ranged GETs of at most ``max_span``
    bytes (a small batch in one GET), ``max_concurrency`` at a time; at most that many spans
    are held in memory. Raises as :func:`load_index` and :func:`get` do, when the failing part
    is reached.
    """
    _check_limits(max_concurrency, max_gap, max_span)
    index = load_index(client, bucket, tar_key, stats=stats)
    entries = updated_objects(index)
    wanted = locations(bucket, tar_key_for(tar_key), index)
    spans = _plan(enumerate(wanted), max_gap, max_span)
    for found in _fetch_in_order(client, spans, max_concurrency, stats, window=max_concurrency):
        for position, data in found:
            yield entries[position], data


# --- S3 requests -----------------------------------------------------------------------------


def _get_range(
    client: S3Client, bucket: str, key: str, start: int, end: int, stats: ReadStats | None
) -> bytes:
    data = _get(client, bucket, key, range_header(start, end - start), stats)
    if len(data) != end - start:
        raise IntegrityError(
            f"s3://{bucket}/{key}: asked for bytes {start}-{end - 1} ({end - start} bytes), "
            f"got {len(data)}"
        )
    return data


def _get(
    client: S3Client, bucket: str, key: str, byte_range: str | None, stats: ReadStats | None = None
) -> bytes:
    try:
        with _s3_errors(bucket, key, byte_range):
            if byte_range is None:
                answer = client.get_object(Bucket=bucket, Key=key)
            else:
                answer = client.get_object(Bucket=bucket, Key=key, Range=byte_range)
            data = answer["Body"].read()
    finally:
        if stats is not None:
            stats.add(requests=1)
    if stats is not None:
        stats.add(bytes_fetched=len(data))
    return data


def download(
    client: S3Client,
    bucket: str,
    key: str,
    sink: Sink,
    *,
    progress: Callable[[int], object] | None = None,
    stats: ReadStats | None = None,
) -> int:
    """Stream a whole object (a batch tar) into ``sink`` with one GET, never holding more than
    a MiB of it in memory; ``progress`` is called with each piece's size. Returns the bytes
    written. Raises NotFoundError or FetchError as :func:`get` does."""
    written = 0
    try:
        with _s3_errors(bucket, key, None):
            body = client.get_object(Bucket=bucket, Key=key)["Body"]
            for chunk in body.iter_chunks(_CHUNK):
                sink.write(chunk)
                written += len(chunk)
                if progress is not None:
                    progress(len(chunk))
    finally:
        if stats is not None:
            stats.add(requests=1, bytes_fetched=written)
    return written


@contextmanager
def _s3_errors(bucket: str, key: str, byte_range: str | None) -> Iterator[None]:
    """Turn boto3's exceptions into ReaderErrors (the original stays the ``__cause__``)."""
    url = f"s3://{bucket}/{key}"
    try:
        yield
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code in ("NoSuchKey", "NoSuchBucket", "404") or status == 404:
            raise NotFoundError(f"{url}: {code or 'not found'}") from exc
        if byte_range is not None and (code == "InvalidRange" or status == 416):
            raise IntegrityError(f"{url}: {byte_range} is beyond the end of the object") from exc
        raise FetchError(f"{url}: {code or status}: {exc}") from exc
    except BotoCoreError as exc:
        raise FetchError(f"{url}: {exc}") from exc


def _decode_checksum(algorithm: str, value: str) -> bytes:
    if algorithm not in ALGORITHMS:
        raise ReaderError(f"unknown checksum algorithm {algorithm!r}")
    if value != value.strip():  # the header parser strips; a recorded value must be exact
        raise ReaderError(f"{algorithm} checksum {value!r} is not base64")
    try:
        return decode_checksum(algorithm, value)
    except InvalidDigest as exc:
        raise ReaderError(f"{algorithm} checksum {value!r}: {exc}") from exc
