"""The signature verifier: every recorded real-client request, AWS's published vectors,
tampering, and round trips with botocore's own signers."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from functools import cache
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote, urlsplit

import boto3
import pytest
from botocore.auth import HmacV1Auth, S3SigV4Auth
from botocore.awsrequest import AWSPreparedRequest, AWSRequest, AWSResponse, HTTPHeaders
from botocore.config import Config
from botocore.credentials import Credentials as BotoCredentials
from hypothesis import given, settings
from hypothesis import strategies as st

from s3batchd.errors import (
    AccessDenied,
    AuthorizationHeaderMalformed,
    AuthorizationQueryParametersError,
    InvalidAccessKeyId,
    InvalidArgument,
    InvalidRequest,
    NotImplementedS3,
    RequestTimeTooSkewed,
    S3Error,
    SignatureDoesNotMatch,
)
from s3batchd.s3.awschunked import AwsChunkedDecoder
from s3batchd.s3.sigv4 import (
    AuthContext,
    ChunkVerifier,
    Credentials,
    StreamingSigning,
    derive_signing_key,
    is_anonymous,
    verify_request,
)
from tests.wire import WIRE_DIR

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

AK, SECRET = "AKIDWIRETEST", "wiresecret"
Headers = list[tuple[bytes, bytes]]
_MARK = re.compile(
    rb"\n##### (\S+) -- bytes below exactly as received \(body cut at 2048 B\) #####\n"
)
_TRUNCATED = re.compile(rb"\n<<< capture truncated: \d+ more raw body bytes >>>\n$")


def wire_lookup(access_key_id: str) -> Credentials | None:
    return Credentials(AK, SECRET) if access_key_id == AK else None


# --------------------------------------------------------------------------- recorded data


@dataclass(frozen=True)
class WireRequest:
    """A recorded request as the ASGI app would see it (from raw bytes when kept)."""

    meta: dict[str, Any]
    method: str
    raw_path: bytes
    query_string: bytes
    headers: Headers
    body: bytes | None  # None: raw bytes not kept; possibly cut at 2048 B
    truncated: bool

    @property
    def id(self) -> str:
        return f"{self.meta['case']}-{self.meta['seq']}"

    @property
    def sig(self) -> dict[str, Any]:
        sig: dict[str, Any] = self.meta["analysis"].get("sigv4") or {}
        return sig

    def header(self, name: bytes) -> bytes | None:
        return next((value for key, value in self.headers if key == name), None)

    def params(self) -> dict[str, str]:
        return dict(parse_qsl(self.query_string.decode(), keep_blank_values=True))

    def signing_time(self) -> datetime:
        """A clock at which the request is valid: its date, or just before a v2 Expires."""
        params = self.params()
        if "X-Amz-Date" in params:
            return amz_time(params["X-Amz-Date"])
        if "Expires" in params:
            return datetime.fromtimestamp(int(params["Expires"]) - 60, UTC)
        text = (self.header(b"x-amz-date") or self.header(b"date") or b"").decode()
        if not text:  # anonymous: any time of the capture day
            return datetime(2026, 11, 21, 15, tzinfo=UTC)
        return amz_time(text) if re.fullmatch(r"\d{8}T\d{6}Z", text) else http_time(text)

    def verify(self, **changes: Any) -> AuthContext:
        args: dict[str, Any] = {
            "method": self.method,
            "raw_path": self.raw_path,
            "query_string": self.query_string,
            "headers": self.headers,
            "lookup": wire_lookup,
            "now": self.signing_time(),
        }
        args.update(changes)
        return verify_request(
            args.pop("method"),
            args.pop("raw_path"),
            args.pop("query_string"),
            args.pop("headers"),
            **args,
        )


def amz_time(text: str) -> datetime:
    return datetime.strptime(text, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


def http_time(text: str) -> datetime:
    return parsedate_to_datetime(text).astimezone(UTC)


def _from_raw(meta: dict[str, Any], raw: bytes) -> WireRequest:
    truncated = bool(_TRUNCATED.search(raw))
    raw = _TRUNCATED.sub(b"", raw)
    head, _, body = raw.partition(b"\r\n\r\n")
    request_line, *lines = head.split(b"\r\n")
    method, target, _ = request_line.split(b" ")
    path, _, query = target.partition(b"?")
    headers = []
    for line in lines:
        name, _, value = line.partition(b":")
        headers.append((name.strip().lower(), value.strip(b" \t")))
    return WireRequest(meta, method.decode(), path, query, headers, body, truncated)


def _from_meta(meta: dict[str, Any]) -> WireRequest:
    path, _, query = meta["target"].partition("?")
    headers = []
    for line in meta["headers"]:
        name, _, value = line.partition(":")
        headers.append((name.strip().lower().encode(), value.strip().encode()))
    return WireRequest(meta, meta["method"], path.encode(), query.encode(), headers, None, False)


@cache
def wire_requests() -> tuple[WireRequest, ...]:
    """Every recorded request, from its raw bytes where kept, else from requests.json."""
    found: list[WireRequest] = []
    for case_dir in sorted(WIRE_DIR.iterdir()):
        if not (case_dir / "requests.json").exists():
            continue
        parts = _MARK.split((case_dir / "raw_requests.http").read_bytes())[1:]
        raw = {name.decode(): data for name, data in zip(parts[::2], parts[1::2], strict=True)}
        for meta in json.loads((case_dir / "requests.json").read_text()):
            data = raw.get(meta["raw_capture"])
            found.append(_from_meta(meta) if data is None else _from_raw(meta, data))
    return tuple(found)


def signed_ok() -> list[WireRequest]:
    return [request for request in wire_requests() if request.sig.get("ok")]


def by_case(case: str, index: int = 0) -> WireRequest:
    return [request for request in wire_requests() if request.meta["case"] == case][index]


def with_header(headers: Headers, name: bytes, value: bytes) -> Headers:
    return [(key, value if key == name else old) for key, old in headers]


# --------------------------------------------------------------------------- recorded: pass


@pytest.mark.parametrize("request_", signed_ok(), ids=lambda r: r.id)
def test_recorded_request_verifies(request_: WireRequest) -> None:
    """Every request the capture analysis verified verifies here too, at its own date."""
    context = request_.verify()
    assert context.kind == request_.sig["kind"]
    assert context.access_key_id == AK
    if context.kind.endswith("v4"):
        assert context.payload_hash == request_.sig["payload_hash"]
        assert context.region == "us-east-1"
        streaming = request_.sig["payload_hash"].startswith("STREAMING-AWS4")
        assert (context.streaming is not None) == streaming


def test_recorded_data_covers_every_kind_and_the_raw_bytes() -> None:
    requests = signed_ok()
    kinds = {request.sig["kind"] for request in requests}
    assert kinds == {"header-v4", "presigned-v4", "header-v2", "presigned-v2"}
    assert len(requests) == 435
    assert sum(request.body is not None for request in requests) > 300


def test_recorded_early_rejections_verify() -> None:
    """Answered before the body (no analysis recorded): their headers still verify."""
    early = [r for r in wire_requests() if "sigv4" not in r.meta["analysis"]]
    assert len(early) == 4
    for request in early:
        assert request.verify().kind == "header-v4"


def test_recorded_failures_fail_for_the_recorded_reason() -> None:
    """s3-tests' other users are unknown; its IAM calls have no S3 scope; anonymous is anonymous."""
    failed = [r for r in wire_requests() if r.sig and not r.sig["ok"]]
    assert len(failed) == 26
    for request in failed:
        error = request.sig.get("error", "")
        expected: type[S3Error] = {
            "unknown access key": InvalidAccessKeyId,
            "": AccessDenied,
        }.get(error, AuthorizationHeaderMalformed)
        with pytest.raises(expected):
            request.verify()
        assert is_anonymous(request.query_string, request.headers) == (error == "")


# --------------------------------------------------------------------------- streaming


@dataclass(frozen=True)
class SignedBody:
    """The framing of a signed aws-chunked body, re-parsed independently of the decoder."""

    chunks: list[tuple[str, bytes]]  # (chunk-signature, data), the final empty chunk included
    trailers: list[tuple[str, str]]
    trailer_signature: str | None

    @classmethod
    def parse(cls, body: bytes) -> SignedBody:
        chunks: list[tuple[str, bytes]] = []
        pos = 0
        while not chunks or chunks[-1][1]:
            end = body.index(b"\r\n", pos)
            size_hex, _, extension = body[pos:end].decode().partition(";")
            size = int(size_hex, 16)
            chunks.append((extension.partition("=")[2], body[end + 2 : end + 2 + size]))
            pos = end + 2 + size + (2 if size else 0)
        trailers, signature = [], None
        for line in body[pos:].decode().split("\r\n"):
            name, _, value = line.partition(":")
            if name == "x-amz-trailer-signature":
                signature = value
            elif line:
                trailers.append((name, value))
        return cls(chunks, trailers, signature)

    def frame(self) -> bytes:
        out = bytearray()
        for signature, data in self.chunks:
            out += f"{len(data):x};chunk-signature={signature}\r\n".encode() + data
            out += b"\r\n" if data else b""
        for name, value in self.trailers:
            out += f"{name}:{value}\r\n".encode()
        if self.trailer_signature is not None:
            out += f"x-amz-trailer-signature:{self.trailer_signature}\r\n".encode()
        return bytes(out + b"\r\n")

    def verify(self, verifier: ChunkVerifier, step: int) -> None:
        """Feed every chunk in ``step``-byte updates, then the trailer if one is signed."""
        for signature, data in self.chunks:
            verifier.begin_chunk(signature)
            for start in range(0, len(data), step):
                verifier.update(memoryview(data)[start : start + step])
            verifier.end_chunk()
        if not verifier.complete:
            verifier.verify_trailer(self.trailers, self.trailer_signature)
        verifier.finish()


def check_signed_body(body: bytes, verifier: ChunkVerifier, step: int = 1) -> bytes:
    """Decode with AwsChunkedDecoder, cross-check its view, verify the chain; the payload."""
    decoder = AwsChunkedDecoder()
    payload = b"".join(bytes(piece) for piece in decoder.feed(body))
    decoder.finish()
    parsed = SignedBody.parse(body)
    assert decoder.chunk_signatures == [signature for signature, _ in parsed.chunks]
    assert decoder.trailers == dict(parsed.trailers)
    assert decoder.trailer_signature == parsed.trailer_signature
    assert payload == b"".join(data for _, data in parsed.chunks)
    parsed.verify(verifier, step)
    return payload


def feed_via_decoder(body: bytes, verifier: ChunkVerifier) -> bytes:
    """Drive the verifier from the decoder alone, as a body reader could: one byte per feed,
    so that a new ``chunk_signatures`` entry marks the chunk boundary exactly."""
    decoder = AwsChunkedDecoder()
    out = bytearray()
    for index in range(len(body)):
        known = len(decoder.chunk_signatures)
        pieces = decoder.feed(body[index : index + 1])
        if len(decoder.chunk_signatures) > known:
            if known:
                verifier.end_chunk()
            verifier.begin_chunk(decoder.chunk_signatures[-1])
        for piece in pieces:
            verifier.update(piece)
            out += piece
    decoder.finish()
    verifier.end_chunk()
    if not verifier.complete:
        verifier.verify_trailer(list(decoder.trailers.items()), decoder.trailer_signature)
    verifier.finish()
    return bytes(out)


def restic_requests() -> list[WireRequest]:
    return [r for r in signed_ok() if r.sig.get("payload_hash", "").startswith("STREAMING-AWS4")]


@pytest.mark.parametrize("request_", restic_requests(), ids=lambda r: r.id)
def test_recorded_streaming_chunk_signatures(request_: WireRequest) -> None:
    """minio-go (restic) signs every aws chunk, the final empty one included."""
    assert request_.body is not None
    assert not request_.truncated
    streaming = request_.verify().streaming
    assert streaming is not None
    assert not streaming.trailer
    assert streaming.seed_signature == request_.sig["seed_signature"]
    verifier = streaming.chunk_verifier()
    payload = feed_via_decoder(request_.body, verifier)
    assert len(payload) == request_.meta["analysis"]["decoded_payload_len"]
    assert verifier.complete
    assert check_signed_body(request_.body, streaming.chunk_verifier(), 7) == payload


def test_restic_data_covers_every_streaming_request() -> None:
    assert len(restic_requests()) == 7


def test_recorded_streaming_tampered_payload_fails() -> None:
    request = restic_requests()[0]
    assert request.body is not None
    streaming = request.verify().streaming
    assert streaming is not None
    head, _, rest = request.body.partition(b"\r\n")
    tampered = head + b"\r\n" + bytes([rest[0] ^ 1]) + rest[1:]
    with pytest.raises(SignatureDoesNotMatch) as caught:
        feed_via_decoder(tampered, streaming.chunk_verifier())
    assert caught.value.string_to_sign.startswith("AWS4-HMAC-SHA256-PAYLOAD\n")


# AWS S3 API reference, "Signature Calculations for the Authorization Header: Transferring
# Payload in Multiple Chunks" and "...: Including Trailing Headers": 66560 bytes of "a" in a
# 64 KiB chunk, a 1 KiB chunk and the final one, all dated 20130524T000000Z, us-east-1.
DOCS_AK, DOCS_SECRET = "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
DOCS_STREAMING = {
    "seed": "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9",
    "signed": "content-encoding;content-length;host;x-amz-content-sha256;x-amz-date;"
    "x-amz-decoded-content-length;x-amz-storage-class",
    "chunks": [
        "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648",
        "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497",
        "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9",
    ],
}
DOCS_TRAILER = {
    "seed": "106e2a8a18243abcf37539882f36619c00e2dfc72633413f02d3b74544bfeb8e",
    "signed": "content-encoding;host;x-amz-content-sha256;x-amz-date;"
    "x-amz-decoded-content-length;x-amz-storage-class;x-amz-trailer",
    "chunks": [
        "b474d8862b1487a5145d686f57f013e54db672cee1c953b3010fb58501ef5aa2",
        "1c1344b170168f8e65b41376b44b20fe354e373826ccbbe2c1d40a8cae51e5c7",
        "2ca2aba2005185cf7159c6277faf83795951dd77a3a99e6e65d5c9f85863f992",
    ],
    "trailer": "d81f82fc3505edab99d459891051a732e8730629a2e4a59689829ca17fe2e435",
}


def docs_request(trailer: bool) -> tuple[Headers, bytes]:
    """The documented request's headers and aws-chunked body."""
    vector = DOCS_TRAILER if trailer else DOCS_STREAMING
    authorization = (
        f"AWS4-HMAC-SHA256 Credential={DOCS_AK}/20130524/us-east-1/s3/aws4_request,"
        f"SignedHeaders={vector['signed']},Signature={vector['seed']}"
    )
    mode = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD" + ("-TRAILER" if trailer else "")
    headers: Headers = [
        (b"host", b"s3.amazonaws.com"),
        (b"x-amz-date", b"20130524T000000Z"),
        (b"x-amz-storage-class", b"REDUCED_REDUNDANCY"),
        (b"authorization", authorization.encode()),
        (b"x-amz-content-sha256", mode.encode()),
        (b"content-encoding", b"aws-chunked"),
        (b"x-amz-decoded-content-length", b"66560"),
        (b"content-length", b"66824"),
    ]
    if trailer:
        headers.append((b"x-amz-trailer", b"x-amz-checksum-crc32c"))
    body = bytearray()
    for size, signature in zip((65536, 1024, 0), vector["chunks"], strict=True):
        body += f"{size:x};chunk-signature={signature}\r\n".encode() + b"a" * size
        body += b"\r\n" if size else b""
    if trailer:
        body += b"x-amz-checksum-crc32c:sOO8/Q==\r\n"
        body += f"x-amz-trailer-signature:{DOCS_TRAILER['trailer']}\r\n".encode()
    return headers, bytes(body + b"\r\n")


def docs_lookup(access_key_id: str) -> Credentials | None:
    return Credentials(DOCS_AK, DOCS_SECRET) if access_key_id == DOCS_AK else None


@pytest.mark.parametrize("trailer", [False, True], ids=["payload", "payload-trailer"])
@pytest.mark.parametrize("step", [1, 4096, 1 << 20])
def test_aws_docs_streaming_vectors(trailer: bool, step: int) -> None:
    """Seed, chunk and trailer signatures of AWS's published examples, fed in any pieces."""
    headers, body = docs_request(trailer)
    context = verify_request(
        "PUT",
        b"/examplebucket/chunkObject.txt",
        b"",
        headers,
        lookup=docs_lookup,
        now=datetime(2013, 5, 24, 0, 5, tzinfo=UTC),
    )
    assert context.streaming is not None
    assert context.streaming.trailer is trailer
    verifier = context.streaming.chunk_verifier()
    assert check_signed_body(body, verifier, step) == b"a" * 66560
    expected = DOCS_TRAILER["trailer"] if trailer else DOCS_STREAMING["chunks"][-1]
    assert verifier.previous_signature == expected


def test_aws_docs_trailer_tampered() -> None:
    headers, body = docs_request(trailer=True)
    context = verify_request(
        "PUT",
        b"/examplebucket/chunkObject.txt",
        b"",
        headers,
        lookup=docs_lookup,
        now=datetime(2013, 5, 24, tzinfo=UTC),
    )
    assert context.streaming is not None
    with pytest.raises(SignatureDoesNotMatch) as caught:
        check_signed_body(
            body.replace(b"sOO8/Q==", b"sOO8/R=="), context.streaming.chunk_verifier()
        )
    assert caught.value.string_to_sign.startswith("AWS4-HMAC-SHA256-TRAILER\n")


def docs_signing() -> StreamingSigning:
    return StreamingSigning(
        signing_key=derive_signing_key(DOCS_SECRET, "20130524", "us-east-1"),
        scope="20130524/us-east-1/s3/aws4_request",
        amz_date="20130524T000000Z",
        seed_signature=str(DOCS_TRAILER["seed"]),
        trailer=True,
    )


def test_chunk_verifier_one_shot_api_and_order() -> None:
    verifier = docs_signing().chunk_verifier()
    for size, signature in zip((65536, 1024, 0), DOCS_TRAILER["chunks"], strict=True):
        verifier.verify_chunk(hashlib.sha256(b"a" * size).hexdigest(), signature)
    with pytest.raises(RuntimeError):
        verifier.begin_chunk("00" * 32)
    with pytest.raises(SignatureDoesNotMatch):
        verifier.finish()  # the trailer signature is still missing
    verifier.verify_trailer([("x-amz-checksum-crc32c", "sOO8/Q==")], str(DOCS_TRAILER["trailer"]))
    verifier.finish()
    assert "signing_key" not in repr(docs_signing())


def test_chunk_verifier_missing_signatures() -> None:
    verifier = docs_signing().chunk_verifier()
    verifier.begin_chunk(None)  # a signed stream whose chunk header has no signature
    verifier.update(b"a")
    with pytest.raises(SignatureDoesNotMatch):
        verifier.end_chunk()
    with pytest.raises(RuntimeError):
        verifier.update(b"a")


def sign_chunks(
    signing: StreamingSigning, chunks: list[bytes], trailers: list[tuple[str, str]]
) -> SignedBody:
    """An independent aws-chunked signer (straight from the docs) for round trips."""
    previous, signed = signing.seed_signature, []
    for chunk in [*chunks, b""]:
        string = "\n".join(
            (
                "AWS4-HMAC-SHA256-PAYLOAD",
                signing.amz_date,
                signing.scope,
                previous,
                hashlib.sha256(b"").hexdigest(),
                hashlib.sha256(chunk).hexdigest(),
            )
        )
        previous = hmac.new(signing.signing_key, string.encode(), hashlib.sha256).hexdigest()
        signed.append((previous, chunk))
    canonical = "".join(f"{name}:{value}\n" for name, value in trailers).encode()
    string = "\n".join(
        (
            "AWS4-HMAC-SHA256-TRAILER",
            signing.amz_date,
            signing.scope,
            previous,
            hashlib.sha256(canonical).hexdigest(),
        )
    )
    signature = hmac.new(signing.signing_key, string.encode(), hashlib.sha256).hexdigest()
    return SignedBody(signed, trailers, signature)


TRAILER_NAMES = st.sampled_from(["x-amz-checksum-crc32", "x-amz-checksum-sha256", "x-amz-meta-a"])
TRAILER_VALUES = st.text(alphabet="abcXYZ0189+/=", min_size=1, max_size=12)


@settings(max_examples=60, deadline=None)
@given(
    chunks=st.lists(st.binary(min_size=1, max_size=300), max_size=5),
    trailers=st.dictionaries(TRAILER_NAMES, TRAILER_VALUES, min_size=1, max_size=3),
    step=st.integers(min_value=1, max_value=400),
    where=st.integers(min_value=0),
)
def test_trailer_round_trip(
    chunks: list[bytes], trailers: dict[str, str], step: int, where: int
) -> None:
    """Any chunking and trailer verifies in any update split; any flipped byte fails."""
    signing = docs_signing()
    signed = sign_chunks(signing, chunks, list(trailers.items()))
    assert check_signed_body(signed.frame(), signing.chunk_verifier(), step) == b"".join(chunks)
    assert feed_via_decoder(signed.frame(), signing.chunk_verifier()) == b"".join(chunks)
    if chunks:
        index = where % len(chunks)
        signature, data = signed.chunks[index]
        position = where % len(data)
        flipped = data[:position] + bytes([data[position] ^ 1]) + data[position + 1 :]
        tampered = list(signed.chunks)
        tampered[index] = (signature, flipped)
        with pytest.raises(SignatureDoesNotMatch):
            replace(signed, chunks=tampered).verify(signing.chunk_verifier(), step)
    name, value = signed.trailers[where % len(signed.trailers)]
    other = [(name, value + "x") if item[0] == name else item for item in signed.trailers]
    with pytest.raises(SignatureDoesNotMatch):
        replace(signed, trailers=other).verify(signing.chunk_verifier(), step)


# --------------------------------------------------------------------------- tampering


def put_request() -> WireRequest:
    request = by_case("boto3-put-bytes")
    assert request.sig["kind"] == "header-v4"
    return request


def test_flipped_signature_byte() -> None:
    request = put_request()
    authorization = request.header(b"authorization") or b""
    last = authorization[-1:]
    flipped = authorization[:-1] + (b"0" if last != b"0" else b"1")
    with pytest.raises(SignatureDoesNotMatch) as caught:
        request.verify(headers=with_header(request.headers, b"authorization", flipped))
    error = caught.value
    assert error.status_code == 403
    assert error.string_to_sign.startswith("AWS4-HMAC-SHA256\n")
    assert error.canonical_request.startswith("PUT\n/wire/")
    assert SECRET not in error.string_to_sign + error.canonical_request + error.message


def test_upper_case_hex_signatures_do_not_match() -> None:
    """S3 computes lower-case hex and compares the signature as sent (aws-sdk-js#3322)."""
    request = put_request()
    authorization = request.header(b"authorization") or b""
    head, _, signature = authorization.rpartition(b"Signature=")
    upper = head + b"Signature=" + signature.upper()
    assert upper != authorization
    with pytest.raises(SignatureDoesNotMatch):
        request.verify(headers=with_header(request.headers, b"authorization", upper))
    presigned = by_case("boto3-presigned-v4-put")
    query = re.sub(
        rb"X-Amz-Signature=([0-9a-f]+)",
        lambda match: b"X-Amz-Signature=" + match.group(1).upper(),
        presigned.query_string,
    )
    assert query != presigned.query_string
    with pytest.raises(SignatureDoesNotMatch):
        presigned.verify(query_string=query)


@pytest.mark.parametrize("name", [b"host", b"x-amz-checksum-crc32", b"x-amz-content-sha256"])
def test_changed_signed_header(name: bytes) -> None:
    request = put_request()
    value = request.header(name)
    assert value is not None
    changed = value[:-1] + (b"0" if value[-1:] != b"0" else b"1")
    with pytest.raises(SignatureDoesNotMatch):
        request.verify(headers=with_header(request.headers, name, changed))


def test_changed_path_and_query() -> None:
    request = put_request()
    with pytest.raises(SignatureDoesNotMatch):
        request.verify(raw_path=request.raw_path + b"x")
    with pytest.raises(SignatureDoesNotMatch):
        request.verify(query_string=b"x-id=PutObject")


def test_whitespace_changes_in_signed_values_are_tolerated() -> None:
    """Canonical values are trimmed with inner runs collapsed; the separators vary by client."""
    request = put_request()
    authorization = (request.header(b"authorization") or b"").replace(b", ", b",")
    headers = with_header(request.headers, b"authorization", authorization)
    headers = with_header(headers, b"x-amz-date", b"  " + (request.header(b"x-amz-date") or b""))
    assert request.verify(headers=headers).kind == "header-v4"


def test_wrong_secret_and_unknown_key() -> None:
    request = put_request()
    with pytest.raises(SignatureDoesNotMatch):
        request.verify(lookup=lambda key: Credentials(key, "not-the-secret"))
    with pytest.raises(InvalidAccessKeyId):
        request.verify(lookup=lambda key: None)


@pytest.mark.parametrize("case", ["boto3-put-bytes", "boto3-sigv2-s3-signature", "s3cmd-put-sigv2"])
def test_clock_skew(case: str) -> None:
    request = by_case(case)
    at = request.signing_time()
    for delta in (timedelta(minutes=14), -timedelta(minutes=14)):
        request.verify(now=at + delta)
    for delta in (timedelta(minutes=16), -timedelta(minutes=16)):
        with pytest.raises(RequestTimeTooSkewed):
            request.verify(now=at + delta)
    request.verify(now=at + timedelta(minutes=16), max_skew=timedelta(minutes=20))


@pytest.mark.parametrize("case", ["boto3-presigned-v4-put", "js-presigned-put"])
def test_presigned_v4_window(case: str) -> None:
    request = by_case(case)
    at = request.signing_time()
    request.verify(now=at + timedelta(seconds=600))
    with pytest.raises(AccessDenied, match="Request has expired"):
        request.verify(now=at + timedelta(seconds=601))
    with pytest.raises(AccessDenied, match="not yet valid"):
        request.verify(now=at - timedelta(minutes=16))


def test_presigned_v2_expiry() -> None:
    request = by_case("boto3-presigned-put-default-v2query")
    expires = datetime.fromtimestamp(int(request.params()["Expires"]), UTC)
    request.verify(now=expires)
    with pytest.raises(AccessDenied, match="Request has expired"):
        request.verify(now=expires + timedelta(seconds=1))


def test_presigned_tampering() -> None:
    request = by_case("boto3-presigned-v4-put")
    with pytest.raises(SignatureDoesNotMatch):
        request.verify(headers=with_header(request.headers, b"content-type", b"text/html"))
    with pytest.raises(SignatureDoesNotMatch):
        request.verify(query_string=request.query_string.replace(b"=600", b"=601"))
    with pytest.raises(AuthorizationQueryParametersError):
        request.verify(query_string=request.query_string.replace(b"=600", b"=604801"))
    with pytest.raises(AuthorizationQueryParametersError):
        request.verify(query_string=request.query_string + b"&X-Amz-Signature=00")
    with pytest.raises(AuthorizationQueryParametersError):
        request.verify(query_string=re.sub(rb"&X-Amz-Date=[^&]*", b"", request.query_string))
    v2 = by_case("boto3-presigned-put-default-v2query")
    with pytest.raises(SignatureDoesNotMatch):
        v2.verify(headers=with_header(v2.headers, b"content-type", b"text/html"))


MALFORMED_V4 = [
    b"AWS4-HMAC-SHA256 Credential=AKIDWIRETEST/20261121/us-east-1/s3/aws4_request",
    b"AWS4-HMAC-SHA256 Credential=AKIDWIRETEST/20261121/us-east-1/s3, SignedHeaders=host, "
    b"Signature=" + b"0" * 64,
    b"AWS4-HMAC-SHA256 Credential=AKIDWIRETEST/20261121/us-east-1/ec2/aws4_request, "
    b"SignedHeaders=host, Signature=" + b"0" * 64,
    b"AWS4-HMAC-SHA256 Credential=AKIDWIRETEST/2026-11-21/us-east-1/s3/aws4_request, "
    b"SignedHeaders=host, Signature=" + b"0" * 64,
    b"AWS4-HMAC-SHA256 Credential=AKIDWIRETEST/20261121/us-east-1/s3/aws4_request, "
    b"SignedHeaders=host, Signature=xyz",
    b"AWS4-HMAC-SHA256 Credential=AKIDWIRETEST/20261121/us-east-1/s3/aws4_request, "
    b"SignedHeaders=, Signature=" + b"0" * 64,
    b"AWS4-HMAC-SHA256 garbage",
    b"AWS nocolon",
]


@pytest.mark.parametrize("authorization", MALFORMED_V4)
def test_malformed_authorization(authorization: bytes) -> None:
    request = put_request()
    with pytest.raises(AuthorizationHeaderMalformed) as caught:
        request.verify(headers=with_header(request.headers, b"authorization", authorization))
    assert caught.value.status_code == 400


def test_scope_date_region_and_service_checks() -> None:
    request = put_request()
    authorization = request.header(b"authorization") or b""
    other_day = authorization.replace(b"/20261121/", b"/20261122/")
    with pytest.raises(AuthorizationHeaderMalformed, match="credential date"):
        request.verify(headers=with_header(request.headers, b"authorization", other_day))
    with pytest.raises(AuthorizationHeaderMalformed, match="region"):
        request.verify(region="eu-west-1")
    assert request.verify(region="us-east-1").region == "us-east-1"


def test_other_auth_problems() -> None:
    request = put_request()
    headers = request.headers
    with pytest.raises(InvalidArgument, match="Unsupported"):
        request.verify(headers=with_header(headers, b"authorization", b"Bearer abc"))
    sigv4a = b"AWS4-ECDSA-P256-SHA256 Credential=x"
    with pytest.raises(NotImplementedS3):
        request.verify(headers=with_header(headers, b"authorization", sigv4a))
    with pytest.raises(InvalidArgument, match="Only one auth mechanism"):
        request.verify(query_string=b"X-Amz-Algorithm=AWS4-HMAC-SHA256")
    with pytest.raises(AccessDenied, match="not signed: x-amz-meta-sneaky"):
        request.verify(headers=[*headers, (b"x-amz-meta-sneaky", b"1")])
    no_sha = [(name, value) for name, value in headers if name != b"x-amz-content-sha256"]
    with pytest.raises(InvalidRequest, match="x-amz-content-sha256"):
        request.verify(headers=no_sha)
    with pytest.raises(InvalidArgument, match="x-amz-content-sha256"):
        request.verify(headers=with_header(headers, b"x-amz-content-sha256", b"nothex"))
    no_date = [(name, value) for name, value in headers if name != b"x-amz-date"]
    with pytest.raises(AccessDenied, match="Date"):
        request.verify(headers=no_date)
    with pytest.raises(AuthorizationHeaderMalformed, match="More than one"):
        request.verify(headers=[*headers, (b"authorization", b"AWS a:b")])
    with pytest.raises(ValueError, match="timezone"):
        request.verify(now=datetime(2026, 11, 21))  # naive: refused


def test_anonymous() -> None:
    request = by_case("boto3-unsigned-anonymous")
    assert is_anonymous(request.query_string, request.headers)
    assert not is_anonymous(b"", put_request().headers)
    assert not is_anonymous(b"AWSAccessKeyId=x", [])
    with pytest.raises(AccessDenied):
        request.verify()


# --------------------------------------------------------------------------- botocore round trips


def to_asgi(request: AWSRequest | AWSPreparedRequest) -> tuple[bytes, bytes, Headers]:
    """Path, query and headers as uvicorn hands them over (OWS stripped, host added)."""
    url = urlsplit(_utf8(request.url or "").decode())
    headers = [
        (name.lower().encode(), _utf8(value).strip(b" \t"))
        for name, value in request.headers.items()
    ]
    if not any(name == b"host" for name, _ in headers):
        headers.insert(0, (b"host", url.netloc.encode()))
    return url.path.encode(), url.query.encode(), headers


def _utf8(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8")


def verify_prepared(
    request: AWSRequest | AWSPreparedRequest,
    credentials: Credentials,
    now: datetime | None = None,
) -> AuthContext:
    """Verify what botocore signed, at the date it signed it (or now for SigV2)."""
    path, query, headers = to_asgi(request)
    if now is None:
        stamp = dict(headers).get(b"x-amz-date")
        now = amz_time(stamp.decode()) if stamp else datetime.now(UTC)
    lookup = {credentials.access_key_id: credentials}.get
    return verify_request(request.method or "GET", path, query, headers, lookup=lookup, now=now)


class _EmptyBody:
    def stream(self) -> Iterator[bytes]:
        yield b""


class Capture:
    """A botocore ``before-send`` hook: keeps the request, answers 200 without a network."""

    def __init__(self) -> None:
        self.requests: list[AWSPreparedRequest] = []

    def __call__(self, request: AWSPreparedRequest, **_: Any) -> Any:
        self.requests.append(request)
        headers = HTTPHeaders()
        headers["ETag"] = '"0"'
        return AWSResponse(request.url, 200, headers, _EmptyBody())


@cache
def boto_client(signature_version: str) -> tuple[S3Client, Capture]:
    session = boto3.session.Session(
        aws_access_key_id=AK, aws_secret_access_key=SECRET, region_name="us-east-1"
    )
    client = session.client(
        "s3",
        endpoint_url="http://127.0.0.1:9123",
        config=Config(
            signature_version=signature_version,
            s3={"addressing_style": "path"},
            retries={"max_attempts": 1},
        ),
    )
    capture = Capture()
    client.meta.events.register("before-send.s3", capture)
    return client, capture


S3_KEYS = st.text(
    alphabet=st.one_of(
        st.sampled_from(list(" +%~=/!*'()&$@;:,?#[]\\\"<>^`{|}é中ü🙂")),
        st.characters(min_codepoint=0x20, max_codepoint=0x2FFF, codec="utf-8"),
    ),
    min_size=1,
    max_size=40,
)
META_NAMES = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)
META_VALUES = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30)
WIRE = Credentials(AK, SECRET)


@settings(max_examples=100, deadline=None)
@given(
    key=S3_KEYS,
    metadata=st.dictionaries(META_NAMES, META_VALUES, max_size=4),
    content_type=st.sampled_from([None, "text/plain", "application/x-www-form-urlencoded; a=b"]),
    body=st.binary(max_size=64),
)
def test_boto3_put_object_round_trip(
    key: str, metadata: dict[str, str], content_type: str | None, body: bytes
) -> None:
    """boto3 put_object (SigV4 and SigV2 header auth) for awkward keys and metadata."""
    extra: dict[str, Any] = {"ContentType": content_type} if content_type else {}
    for version, kind in (("s3v4", "header-v4"), ("s3", "header-v2")):
        client, capture = boto_client(version)
        client.put_object(Bucket="wire", Key=key, Body=body, Metadata=metadata, **extra)
        assert verify_prepared(capture.requests.pop(), WIRE).kind == kind


@settings(max_examples=60, deadline=None)
@given(key=S3_KEYS, content_type=st.sampled_from([None, "text/plain"]))
def test_boto3_presigned_round_trip(key: str, content_type: str | None) -> None:
    """generate_presigned_url, SigV4 (s3v4) and the SigV2 default; expiry enforced."""
    params: dict[str, Any] = {"Bucket": "wire", "Key": key}
    if content_type:
        params["ContentType"] = content_type
    for version, kind in (("s3v4", "presigned-v4"), ("s3", "presigned-v2")):
        client, _ = boto_client(version)
        url = client.generate_presigned_url("put_object", Params=params, ExpiresIn=300)
        parts = urlsplit(url)
        headers: Headers = [(b"host", parts.netloc.encode())]
        if content_type:
            headers.append((b"content-type", content_type.encode()))
        args = (parts.path.encode(), parts.query.encode(), headers)
        now = datetime.now(UTC)
        context = verify_request("PUT", *args, lookup=wire_lookup, now=now)
        assert context.kind == kind
        with pytest.raises(AccessDenied, match="expired"):
            verify_request("PUT", *args, lookup=wire_lookup, now=now + timedelta(seconds=400))


SECRETS = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1)
ACCESS_KEYS = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", min_size=4, max_size=20)
PARAM_CHARS = st.characters(min_codepoint=0x20, max_codepoint=0x2FF, codec="utf-8")
QUERY_KEYS = st.text(alphabet=PARAM_CHARS, min_size=1)
HEADER_VALUES = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20)


@settings(max_examples=150, deadline=None)
@given(
    access_key=ACCESS_KEYS,
    secret=SECRETS,
    region=st.sampled_from(["us-east-1", "eu-central-1", "garage"]),
    key=S3_KEYS,
    params=st.dictionaries(QUERY_KEYS, st.text(alphabet=PARAM_CHARS, max_size=10), max_size=3),
    repeated=st.lists(HEADER_VALUES, min_size=1, max_size=3),
    method=st.sampled_from(["PUT", "GET", "POST", "HEAD", "DELETE"]),
)
def test_botocore_signers_round_trip(
    access_key: str,
    secret: str,
    region: str,
    key: str,
    params: dict[str, str],
    repeated: list[str],
    method: str,
) -> None:
    """S3SigV4Auth and HmacV1Auth with random credentials, query parameters, repeated headers."""
    credentials = Credentials(access_key, secret)
    boto_credentials = BotoCredentials(access_key, secret)
    query = "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in params.items())
    url = f"http://127.0.0.1:9123/wire/{quote(key, safe='/~')}" + (f"?{query}" if query else "")
    for signer in (S3SigV4Auth(boto_credentials, "s3", region), HmacV1Auth(boto_credentials)):
        request = AWSRequest(method=method, url=url, data=b"payload")
        for value in repeated:
            request.headers["X-Amz-Meta-Repeated"] = value  # HTTPHeaders appends
        signer.add_auth(request)
        # The AWSRequest, not request.prepare(): preparing keeps one of the repeated headers.
        context = verify_prepared(request, credentials)
        assert context.access_key_id == access_key
        with pytest.raises(SignatureDoesNotMatch):
            verify_prepared(request, replace(credentials, secret_access_key=secret + "x"))


def test_valueless_query_and_subresources_round_trip() -> None:
    """``?uploads`` (SigV4 ``uploads=``, SigV2 sub-resource) and ``partNumber``/``uploadId``."""
    boto_credentials = BotoCredentials(AK, SECRET)
    for query in ("uploads", "uploads=", "partNumber=2&uploadId=a%2Bb", "x-id=PutObject&acl"):
        url = f"http://127.0.0.1:9123/wire/k?{query}"
        for signer in (
            S3SigV4Auth(boto_credentials, "s3", "us-east-1"),
            HmacV1Auth(boto_credentials),
        ):
            request = AWSRequest(method="POST", url=url, data=b"")
            signer.add_auth(request)
            assert verify_prepared(request.prepare(), WIRE).access_key_id == AK


def test_sigv2_virtual_host_bucket() -> None:
    """SigV2 signs ``/bucket/key`` even when the bucket is in the Host name."""
    request = AWSRequest(method="PUT", url="http://wire.localhost:9123/k.txt", data=b"x")
    request.auth_path = "/wire/k.txt"
    HmacV1Auth(BotoCredentials(AK, SECRET)).add_auth(request)
    path, query, headers = to_asgi(request.prepare())
    now = datetime.now(UTC)
    context = verify_request(
        "PUT", path, query, headers, lookup=wire_lookup, now=now, vhost_bucket="wire"
    )
    assert context.kind == "header-v2"
    with pytest.raises(SignatureDoesNotMatch):
        verify_request("PUT", path, query, headers, lookup=wire_lookup, now=now)


def test_sigv2_signature_is_base64_hmac_sha1() -> None:
    """Spot-check the recorded s3cmd StringToSign against an independent HMAC."""
    request = by_case("s3cmd-put-sigv2")
    expected = request.sig["string_to_sign"]
    mac = hmac.new(SECRET.encode(), expected.encode(), hashlib.sha1).digest()
    assert (request.header(b"authorization") or b"").endswith(base64.b64encode(mac))
    flipped = with_header(request.headers, b"x-amz-storage-class", b"GLACIER")
    with pytest.raises(SignatureDoesNotMatch) as caught:
        request.verify(headers=flipped)
    assert caught.value.string_to_sign == expected.replace("STANDARD", "GLACIER")
