"""``Daemon``: what one daemon process builds once at start and every handler receives
explicitly (through the request's ``passthrough.Call``), instead of looking it up on the
Starlette app's ``state`` per request.

It is defined here, in the ``forward`` layer, because forwarding needs most of it (settings,
the forwarder, the pipeline's spill directory, the body pace) and the handlers above may
import it; the server layer (``server/app.py``) builds it in the lifespan and hands it to
``handlers/dispatch.serve``. What belongs to a higher layer is typed by what the handlers
use of it (``OwnerLookup``), so nothing here imports ``handlers`` or ``server``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import AsyncIterable

    import httpx
    from prometheus_client import Counter

    from s3batchd.batching.pipeline import Pipeline
    from s3batchd.config import Settings
    from s3batchd.forward.buckets import BucketCheck
    from s3batchd.forward.passthrough import Call
    from s3batchd.forward.proxy import Query
    from s3batchd.s3.auth import Authenticator
    from s3batchd.s3.stall import BodyPace
    from s3batchd.spool.uploads import UploadStore
    from s3batchd.upload.bucketmodes import BucketModes

Owner = tuple[str, str]
"""``(ID, DisplayName)`` of an S3 owner."""


class Upstream(Protocol):
    """The way to the bucket as handlers use it: ``forward/proxy.Forwarder`` (re-signed,
    streamed), or a fake in handler tests (tests/test_handlers_dispatch.py)."""

    async def send(
        self,
        method: str,
        bucket: str,
        key: str,
        query: Query,
        headers: dict[str, str],
        body: bytes | AsyncIterable[bytes] = b"",
        length: int | None = None,
        payload_hash: str = ...,
        *,
        timeout_s: float | None = None,
    ) -> httpx.Response:
        """Send one request to the bucket; the answer is open (streaming) until closed."""

    async def aclose(self) -> None:
        """Close the connections to the bucket."""


class OwnerLookup(Protocol):
    """The owner a listing shows for batched objects (``handlers/owners.Owners``)."""

    async def of(self, call: Call, bucket: str) -> Owner | None:
        """The owner of the daemon's objects in ``bucket``, None if unknown."""

    async def of_bucket(self, call: Call, bucket: str) -> Owner | None:
        """The owner of ``bucket`` (its ACL's ``Owner``), None if unknown."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Daemon:
    """The long-lived parts of one daemon process, built by the lifespan once the pipeline
    started; closed by the lifespan in reverse order."""

    settings: Settings
    pipeline: Pipeline
    """The batcher, the uploader and the catalog."""
    forwarder: Upstream
    """The way to the bucket (re-signed, streamed)."""
    buckets: BucketCheck
    """Which buckets exist upstream (cached HeadBucket)."""
    bucket_modes: BucketModes
    """Each bucket's versioning, object lock and default encryption."""
    uploads: UploadStore
    """Client multipart uploads held in the spool."""
    owners: OwnerLookup
    """The owner listings show for batched objects."""
    authenticator: Authenticator
    """Verifies each request's signature (``auth``)."""
    body_pace: BodyPace
    """The pace request bodies must keep."""
    received_bytes: Counter
    """``s3batchd_received_bytes``: decoded object bytes accepted."""
