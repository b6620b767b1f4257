"""The blocking upload steps of one sealed batch: the tar (PutObject, or a multipart upload
whose id is kept on disk until completed or aborted), then its index.

Each step is idempotent: keys are deterministic and written with ``If-None-Match: *``; a 412
means an earlier attempt succeeded but its answer was lost, so the object is checked (HEAD) to
be this batch and the upload moves on. Runs on an upload thread or in an upload process
(:mod:`s3batchd.upload.attempt`); the retries and parking are the uploader's.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import os
import zlib
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

from botocore.exceptions import BotoCoreError, ClientError

from s3batchd.errors import ConflictError, UploadError
from s3batchd.index import fragment_object, render_index
from s3batchd.records import SealedBatch
from s3batchd.spool.files import remove_durably, scan, upload_id_path, write_durably
from s3batchd.upload.bucketmodes import SSE, tar_encryption
from s3batchd.upload.policy import needs_multipart, part_size
from s3batchd.upload.upstream import status_of

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

    from s3batchd.config import UploadConfig
    from s3batchd.upload.stats import UploadStats
    from s3batchd.uploadsettings import UploadSettings

logger = logging.getLogger(__name__)

TAR_CONTENT_TYPE = "application/x-tar"
INDEX_CONTENT_TYPE = "application/json"
META_BATCH_ID = "s3batchd-batch-id"
META_TAR_CRC32 = "s3batchd-tar-crc32"


def file_crc32(path: Path) -> str:
    """CRC32 of a whole file, as 8 hex digits (kept in the tar's metadata)."""
    value = 0
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            value = zlib.crc32(chunk, value)
    return f"{value:08x}"


class FileSection(io.RawIOBase):
    """A part of an open file as a seekable stream (read with ``pread``): botocore reads a
    part twice (checksum, then the request) without the part ever being held in memory, so
    an upload costs a few read buffers, not ``part_concurrency`` x ``part_size_bytes``."""

    def __init__(self, fd: int, start: int, length: int) -> None:
        super().__init__()
        self._fd = fd
        self._start = start
        self._length = length
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._length}[whence]
        self._position = max(0, min(self._length, base + offset))
        return self._position

    def read(self, size: int = -1) -> bytes:
        remaining = self._length - self._position
        if size < 0 or size > remaining:
            size = remaining
        data = os.pread(self._fd, size, self._start + self._position) if size else b""
        self._position += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def crc32_header(hex_crc: str) -> str:
    """A CRC32 kept as 8 hex digits, as the base64 value of ``x-amz-checksum-crc32``."""
    return base64.b64encode(bytes.fromhex(hex_crc)).decode()


#: In a member's index fragment only when it has stored encryption headers.
_SSE_MARK = f'"{SSE}"'.encode()


def encrypted_members(batch: SealedBatch) -> Iterable[Mapping[str, str]]:
    """The stored headers of those members of ``batch`` that may carry encryption headers
    (from the index fragments when the batch has them, else read back from the tar)."""
    if batch.index_fragments is None:
        return [entry.record.headers for entry in scan(batch.path).entries]
    found = (fragment_object(f) for f in batch.index_fragments if _SSE_MARK in f)
    return [entry["headers"] for entry in found if entry is not None]


PartsAtOnce = Callable[[], int]
"""How many parts of a batch may be in flight now (asked again as each part ends)."""


class BatchUpload:
    """The blocking upload steps of one batch (run in the uploader's thread pool).
    ``parts_at_once``: how many parts to send side by side, asked again whenever a part ends
    (default: ``part_concurrency`` always)."""

    def __init__(
        self,
        client: S3Client,
        config: UploadConfig | UploadSettings,
        stats: UploadStats,
        parts_at_once: PartsAtOnce | None = None,
    ) -> None:
        self._client = client
        self._config = config
        self._stats = stats
        self._parts_at_once = parts_at_once or (lambda: config.part_concurrency)

    def tar(self, batch: SealedBatch, *, crc32: str | None = None) -> None:
        """Upload the tar under its key, unless an earlier attempt already did; encrypted as
        strongly as its most demanding member asked (bucketmodes.tar_encryption). ``crc32``:
        the tar's (8 hex digits) when its writer computed it, else it is read from the file."""
        crc = crc32 if crc32 is not None else file_crc32(batch.path)
        metadata = {META_BATCH_ID: batch.batch_id, META_TAR_CRC32: crc}
        encryption = tar_encryption(encrypted_members(batch))
        if needs_multipart(batch.size, self._config):
            self._multipart(batch, metadata, encryption)
        else:
            self._single(batch, metadata, encryption)

    def _single(
        self, batch: SealedBatch, metadata: dict[str, str], encryption: dict[str, Any]
    ) -> None:
        with batch.path.open("rb") as body:
            try:
                self._call(
                    "PutObject",
                    lambda: self._client.put_object(
                        Bucket=batch.bucket,
                        Key=batch.tar_key,
                        Body=body,
                        ContentLength=batch.size,
                        ContentType=TAR_CONTENT_TYPE,
                        Metadata=metadata,
                        IfNoneMatch="*",
                        # Computed once for the metadata: botocore would read the file again.
                        ChecksumCRC32=crc32_header(metadata[META_TAR_CRC32]),
                        **encryption,
                    ),
                )
            except ClientError as exc:
                self._settle_conflict(exc, batch, metadata)

    def _multipart(
        self, batch: SealedBatch, metadata: dict[str, str], encryption: dict[str, Any]
    ) -> None:
        self._abort_leftover(batch)
        created = self._call(
            "CreateMultipartUpload",
            lambda: self._client.create_multipart_upload(
                Bucket=batch.bucket,
                Key=batch.tar_key,
                ContentType=TAR_CONTENT_TYPE,
                Metadata=metadata,
                ChecksumAlgorithm="CRC32",
                **encryption,
            ),
        )
        upload_id = created["UploadId"]
        # Kept durably until completed or aborted, so a crash leaves no orphaned upload.
        sidecar = upload_id_path(batch)
        try:
            write_durably(sidecar, upload_id.encode())
            parts = self._parts(batch, upload_id)
            self._call(
                "CompleteMultipartUpload",
                lambda: self._client.complete_multipart_upload(
                    Bucket=batch.bucket,
                    Key=batch.tar_key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                    IfNoneMatch="*",
                ),
            )
        except ClientError as exc:
            self._abort(batch, upload_id)
            self._settle_conflict(exc, batch, metadata)
        except BaseException:
            self._abort(batch, upload_id)
            raise
        remove_durably(sidecar)

    def _abort_leftover(self, batch: SealedBatch) -> None:
        """Abort the multipart upload an earlier attempt or process left behind, if any."""
        sidecar = upload_id_path(batch)
        if not sidecar.exists():
            return
        upload_id = sidecar.read_text().strip()
        logger.info("aborting multipart upload %s left by an earlier attempt", upload_id)
        self._abort(batch, upload_id)
        if sidecar.exists():  # keep its id rather than start a second upload and forget it
            raise UploadError(f"could not abort multipart upload {upload_id}", retriable=True)

    def _parts(self, batch: SealedBatch, upload_id: str) -> list[CompletedPartTypeDef]:
        chunk = part_size(batch.size, self._config)
        offsets = range(0, batch.size, chunk)
        fd = os.open(batch.path, os.O_RDONLY | os.O_CLOEXEC)

        def one(number: int) -> CompletedPartTypeDef:
            start = offsets[number - 1]
            section = FileSection(fd, start, min(chunk, batch.size - start))
            return self._part(batch, upload_id, number, section)

        numbers = iter(range(1, len(offsets) + 1))
        done: dict[int, CompletedPartTypeDef] = {}
        in_flight: dict[Future[CompletedPartTypeDef], int] = {}
        try:
            # The pool starts a thread only when no idle one is left: as many as were ever
            # in flight at once.
            # Parts fan out from this upload thread, not from the loop (concurrency.py).
            with ThreadPoolExecutor(self._config.part_concurrency, "s3batchd-part") as pool:
                while True:
                    limit = max(1, min(self._parts_at_once(), self._config.part_concurrency))
                    while len(in_flight) < limit and (number := next(numbers, None)):
                        in_flight[pool.submit(one, number)] = number
                    if not in_flight:
                        return [done[number] for number in sorted(done)]
                    ended, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                    for future in ended:
                        # A failed part raises here; the pool waits for those in flight.
                        done[in_flight.pop(future)] = future.result()
        finally:
            os.close(fd)

    def _part(
        self, batch: SealedBatch, upload_id: str, number: int, data: FileSection
    ) -> CompletedPartTypeDef:
        answer = self._call(
            "UploadPart",
            lambda: self._client.upload_part(
                Bucket=batch.bucket,
                Key=batch.tar_key,
                UploadId=upload_id,
                PartNumber=number,
                Body=cast("IO[bytes]", data),
                ChecksumAlgorithm="CRC32",
            ),
        )
        part: CompletedPartTypeDef = {"ETag": answer["ETag"], "PartNumber": number}
        if "ChecksumCRC32" in answer:
            part["ChecksumCRC32"] = answer["ChecksumCRC32"]
        return part

    def _abort(self, batch: SealedBatch, upload_id: str) -> None:
        """Abort an upload; forget its id once S3 no longer has it (aborted or completed)."""
        try:
            self._call(
                "AbortMultipartUpload",
                lambda: self._client.abort_multipart_upload(
                    Bucket=batch.bucket, Key=batch.tar_key, UploadId=upload_id
                ),
            )
        except ClientError as exc:
            if status_of(exc) != 404:  # NoSuchUpload: already completed or aborted
                logger.warning("could not abort multipart upload %s: %s", upload_id, exc)
                return
        except (BotoCoreError, OSError) as exc:
            logger.warning("could not abort multipart upload %s: %s", upload_id, exc)
            return
        remove_durably(upload_id_path(batch))

    def _settle_conflict(
        self, exc: ClientError, batch: SealedBatch, metadata: dict[str, str]
    ) -> None:
        """A 412 is success if the object under the key is this batch (same batch id, size and
        CRC32 in its metadata); anything else raises."""
        if status_of(exc) != 412:
            raise exc
        head = self._call(
            "HeadObject", lambda: self._client.head_object(Bucket=batch.bucket, Key=batch.tar_key)
        )
        ours = head.get("Metadata", {}) == metadata
        if not ours or head["ContentLength"] != batch.size:
            raise ConflictError(f"s3://{batch.bucket}/{batch.tar_key} holds another object")
        logger.info("tar %s was already uploaded by an earlier attempt", batch.tar_key)

    def index(self, batch: SealedBatch) -> None:
        """Write the index JSON beside the tar (the batch's commit marker)."""
        fragments = batch.index_fragments
        entries = scan(batch.path).entries if fragments is None else None
        body = render_index(
            bucket=batch.bucket,
            batch_id=batch.batch_id,
            tar_key=batch.tar_key,
            tar_size=batch.size,
            entries=entries,
            fragments=None if fragments is None else list(fragments),
        )
        encryption = tar_encryption(
            encrypted_members(batch) if entries is None else (e.record.headers for e in entries)
        )
        try:
            self._call(
                "PutObject",
                lambda: self._client.put_object(
                    Bucket=batch.bucket,
                    Key=batch.index_key,
                    Body=body,
                    ContentType=INDEX_CONTENT_TYPE,
                    Metadata={META_BATCH_ID: batch.batch_id},
                    IfNoneMatch="*",
                    # It lists the members' keys and metadata: encrypted as the tar is.
                    **encryption,
                ),
            )
        except ClientError as exc:
            if status_of(exc) != 412:
                raise
            head = self._call(
                "HeadObject",
                lambda: self._client.head_object(Bucket=batch.bucket, Key=batch.index_key),
            )
            expected = '"' + hashlib.md5(body, usedforsecurity=False).hexdigest() + '"'
            if head.get("ETag") != expected:
                raise ConflictError(f"s3://{batch.bucket}/{batch.index_key} differs") from exc

    def _call(self, operation: str, call: Callable[[], Any]) -> Any:
        try:
            result = call()
        except ClientError as exc:
            self._stats.count(operation, f"http_{status_of(exc)}")
            raise
        except Exception:
            self._stats.count(operation, "error")
            raise
        self._stats.count(operation, "ok")
        return result
