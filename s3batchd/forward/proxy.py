"""The way to the bucket for requests the daemon does not batch.

A forwarded request is sent to ``upstream.endpoint_url`` re-signed with the daemon's own
credentials (SigV4 from botocore's signer, the same credential chain as the uploader: IRSA,
instance roles and session tokens included) and streamed both ways: the request body as it
arrives from the client, the response body as it arrives from the bucket. httpx carries it
(async, streaming in both directions, connection pooling); botocore only signs.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterable, AsyncIterator, Coroutine
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx
from botocore.auth import UNSIGNED_PAYLOAD, S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import RefreshableCredentials
from botocore.exceptions import BotoCoreError
from starlette.responses import Response, StreamingResponse

from s3batchd.config import UpstreamConfig
from s3batchd.errors import (
    RETRY_SOON,
    ClientClosedRequest,
    InvalidArgument,
    NoUpstreamCredentials,
    ServiceUnavailable,
)
from s3batchd.upload.credentials import LateCredentials, NoCredentialsYetError, upstream_credentials

if TYPE_CHECKING:
    from botocore.credentials import Credentials, ReadOnlyCredentials
    from starlette.types import Receive, Scope, Send

logger = logging.getLogger(__name__)

#: Connection-level headers (RFC 9110 §7.6.1) and the ones the daemon sets itself.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
#: Client headers that belong to the client's own signature or body framing: the daemon
#: re-signs and re-frames, so they are not forwarded.
CLIENT_ONLY = frozenset(
    {
        "host",
        "content-length",
        "expect",
        "authorization",
        "x-amz-date",
        "x-amz-content-sha256",
        "x-amz-security-token",
        "x-amz-decoded-content-length",
        "x-amz-trailer",
        "accept-encoding",
    }
)
Query = list[tuple[str, str]]


class _Signer(S3SigV4Auth):
    """botocore's S3 SigV4 signer with the payload hash chosen by the caller (a hex SHA-256
    for a body in hand, ``UNSIGNED-PAYLOAD`` for a body still streaming in)."""

    def payload(self, request: AWSRequest) -> str:
        return str(request.context.get("payload_hash", UNSIGNED_PAYLOAD))


class Forwarder:
    """An HTTP client for the bucket's endpoint that signs as the daemon."""

    def __init__(self, upstream: UpstreamConfig, credentials: Credentials | None = None) -> None:
        self._region = upstream.region
        self._style = upstream.addressing_style
        self._endpoint = upstream.endpoint_url.rstrip("/")
        self._aws = not self._endpoint
        if self._aws:
            self._endpoint = f"https://s3.{upstream.region}.amazonaws.com"
        self._credentials = credentials or upstream_credentials()
        timeout = httpx.Timeout(
            connect=upstream.connect_timeout_s,
            read=upstream.read_timeout_s,
            write=upstream.read_timeout_s,
            pool=upstream.connect_timeout_s,
        )
        self._client = httpx.AsyncClient(
            timeout=timeout,
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
            follow_redirects=False,
            trust_env=False,  # HTTP(S)_PROXY would send the daemon's credentials elsewhere
        )

    async def aclose(self) -> None:
        """Close pooled connections."""
        await self._client.aclose()

    def url(self, bucket: str, key: str, query: Query) -> str:
        """The upstream URL of ``bucket``/``key`` (path-style unless virtual is configured,
        or ``auto`` on AWS with a DNS-compatible bucket name)."""
        path = _quote_key(key)
        base = self._endpoint
        if bucket and self._virtual(bucket):
            scheme, _, host = base.partition("://")
            base = f"{scheme}://{bucket}.{host}"
        elif bucket:
            path = f"/{bucket}" + (f"/{path[1:]}" if key else "")
        url = base + (path or "/")
        if query:
            url += "?" + "&".join(f"{_quote(name)}={_quote(value)}" for name, value in query)
        return url

    def _virtual(self, bucket: str) -> bool:
        if self._style == "virtual":
            return True
        return self._style == "auto" and self._aws and "." not in bucket

    async def send(
        self,
        method: str,
        bucket: str,
        key: str,
        query: Query,
        headers: dict[str, str],
        body: bytes | AsyncIterable[bytes] = b"",
        length: int | None = None,
        payload_hash: str = UNSIGNED_PAYLOAD,
        *,
        timeout_s: float | None = None,
    ) -> httpx.Response:
        """Send one signed request; the response is open (streaming) and must be closed.

        ``body`` is bytes, or an iterable of ``length`` bytes in all (S3 needs the length
        up front) whose ``x-amz-content-sha256`` is ``payload_hash``; ``timeout_s`` bounds
        each phase (connect, send, wait) instead of ``upstream.*_timeout_s``. Raises
        ServiceUnavailable when the endpoint cannot be reached."""
        url = self.url(bucket, key, query)
        out = dict(headers)
        if isinstance(body, bytes):
            payload_hash = hashlib.sha256(body).hexdigest()
            length = len(body)
        if length or method in ("PUT", "POST"):
            out["content-length"] = str(length or 0)
        out["accept-encoding"] = "identity"
        signed = self._sign(method, url, out, payload_hash, await self._frozen())
        request = self._client.build_request(
            method,
            url,
            headers=signed,
            content=body,
            timeout=httpx.USE_CLIENT_DEFAULT if timeout_s is None else httpx.Timeout(timeout_s),
        )
        try:
            return await self._client.send(request, stream=True)
        except httpx.TransportError as exc:
            logger.warning("upstream %s %s/%s failed: %r", method, bucket, key, exc)
            raise ServiceUnavailable(headers=RETRY_SOON) from exc

    async def _frozen(self) -> ReadOnlyCredentials:
        """The credentials to sign with. Temporary ones (IRSA, instance roles) are refreshed,
        and a chain that was empty at start is looked up again, in a thread when due: both
        are HTTP calls that must not stall the loop."""
        credentials = self._credentials
        try:
            if _may_block(credentials):
                return await asyncio.to_thread(credentials.get_frozen_credentials)
            return credentials.get_frozen_credentials()
        except NoCredentialsYetError as exc:
            raise NoUpstreamCredentials(headers=RETRY_SOON) from exc
        except BotoCoreError as exc:
            logger.warning("upstream credentials could not be refreshed: %s", exc)
            raise ServiceUnavailable(
                "The daemon's upstream credentials could not be refreshed; please retry.",
                headers=RETRY_SOON,
            ) from exc

    def _sign(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        payload: str,
        credentials: ReadOnlyCredentials,
    ) -> dict[str, str]:
        request = AWSRequest(method=method, url=url, headers=headers)
        request.context["payload_hash"] = payload
        _Signer(credentials, "s3", self._region).add_auth(request)
        return dict(request.headers.items())


def _may_block(credentials: Credentials) -> bool:
    if isinstance(credentials, LateCredentials):
        return credentials.may_block()
    return isinstance(credentials, RefreshableCredentials) and credentials.refresh_needed()


def _quote(text: str) -> str:
    return quote(text, safe="-_.~")


def _quote_key(key: str) -> str:
    """The key as a URL path: every byte S3 would decode, with ``.`` and ``..`` segments
    escaped so no HTTP library resolves them away."""
    if not key:
        return ""
    segments = quote(key, safe="/~").split("/")
    escaped = [s.replace(".", "%2E") if s in (".", "..") else s for s in segments]
    return "/" + "/".join(escaped)


def forward_headers(headers: dict[str, str], drop_prefix: str) -> dict[str, str]:
    """The client's headers that travel to the bucket (not its signature or framing)."""
    out: dict[str, str] = {}
    for name, value in headers.items():
        if name in HOP_BY_HOP or name in CLIENT_ONLY or name.startswith(drop_prefix):
            continue
        if name == "content-encoding":
            tokens = [t.strip() for t in value.split(",") if t.strip().lower() != "aws-chunked"]
            if not any(tokens):
                continue
            value = ",".join(t for t in tokens if t)
        if not value.isascii():
            # S3 takes US-ASCII header values only (user metadata included); a batched object
            # may keep others, but they cannot be signed and sent on unchanged.
            raise InvalidArgument(f"The {name} header holds characters other than US-ASCII.")
        out[name] = value
    return out


def _relayed_headers(upstream: httpx.Response) -> list[tuple[bytes, bytes]]:
    return [
        (name.lower(), value)
        for name, value in upstream.headers.raw
        if name.decode("latin-1").lower() not in HOP_BY_HOP
    ]


class _Relayed(StreamingResponse):
    """A streamed upstream answer that closes the upstream response however it ends: also
    when the client is gone before the body starts (Starlette then never iterates it), which
    would otherwise hold a pooled connection for good."""

    def __init__(self, upstream: httpx.Response, *, head: bool) -> None:
        self._upstream = upstream
        super().__init__(self._body(head), status_code=upstream.status_code)
        self.raw_headers = _relayed_headers(upstream)

    async def _body(self, head: bool) -> AsyncIterator[bytes]:
        if not head:
            async for chunk in self._upstream.aiter_raw():
                yield chunk

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._upstream.aclose()


async def unless_client_leaves(
    receive: Receive, sending: Coroutine[Any, Any, httpx.Response]
) -> httpx.Response:
    """The bucket's answer from ``sending``, unless the client hangs up first: then the
    upstream request is cancelled, which closes its pooled connection and frees it (and the
    request's slot) at once instead of when a slow bucket answers, and ClientClosedRequest
    is raised.

    For requests without a body only (``receive`` then gives nothing but the disconnect),
    and only where nothing is left to do after the answer but relay it: for a GET or HEAD,
    not sending it on, or not waiting for it, changes nothing the client could see.
    """
    answer = asyncio.ensure_future(sending)
    left = asyncio.ensure_future(_client_left(receive))
    try:
        await asyncio.wait((answer, left), return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        await _abandon(answer)
        raise
    finally:
        left.cancel()
    if not answer.done():
        await _abandon(answer)
        raise ClientClosedRequest()
    return answer.result()


async def _client_left(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _abandon(answer: asyncio.Future[httpx.Response]) -> None:
    """Cancel an upstream request; an answer that arrived meanwhile is closed."""
    answer.cancel()
    await asyncio.wait((answer,))
    if not answer.cancelled() and answer.exception() is None:
        await answer.result().aclose()


def relay(upstream: httpx.Response, *, head: bool = False) -> Response:
    """The upstream response, status, headers and body unchanged, streamed to the client."""
    return _Relayed(upstream, head=head)


def relay_read(upstream: httpx.Response, data: bytes) -> Response:
    """An upstream response whose body was read (``read_all``), status and headers unchanged."""
    response = Response(data, status_code=upstream.status_code)
    response.raw_headers = _relayed_headers(upstream)
    return response


async def read_all(upstream: httpx.Response, limit: int = 64 * 1024 * 1024) -> bytes:
    """The whole (small, XML) body of an upstream response, which is then closed."""
    try:
        data = bytearray()
        async for chunk in upstream.aiter_bytes():
            data += chunk
            if len(data) > limit:
                raise ServiceUnavailable("The upstream answer is too large.")
        return bytes(data)
    except httpx.HTTPError as exc:  # cut or timed out while the body was read
        logger.warning("upstream answer could not be read: %r", exc)
        raise ServiceUnavailable(headers=RETRY_SOON) from exc
    finally:
        await upstream.aclose()
