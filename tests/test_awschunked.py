"""The aws-chunked decoder: framing, trailers, any split of the input, and real client bodies."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s3batchd.errors import IncompleteBody, InvalidRequest
from s3batchd.s3.awschunked import AwsChunkedDecoder
from s3batchd.s3.checksums import b64, new_hasher

WIRE = Path("/work/shared/wire")
SIG_A = "d0c6490fefc058560addd7e722c31a5162f43eb44b747277753928f21fbb5265"
SIG_B = "bda36024686d3420f539dbe39434d40f8145011c0aa49a7a5973e1e3fcccf479"
#: boto3 1.44 over https: one chunk, a CRC32 trailer (U+m5Tw== is crc32 of "hello wire\n").
UNSIGNED = b"b\r\nhello wire\n\r\n0\r\nx-amz-checksum-crc32:U+m5Tw==\r\n\r\n"


def decode(pieces: list[bytes]) -> tuple[bytes, AwsChunkedDecoder]:
    decoder = AwsChunkedDecoder()
    out = bytearray()
    for piece in pieces:
        for view in decoder.feed(piece):
            out += view
    decoder.finish()
    return bytes(out), decoder


def encode(
    payload: bytes,
    sizes: list[int],
    *,
    signed: bool = False,
    upper: bool = False,
    trailers: dict[str, str] | None = None,
    trailer_signature: str | None = None,
) -> bytes:
    """An aws-chunked body carrying ``payload`` in chunks of the given sizes (then the rest)."""
    chunks = []
    pos = 0
    for size in [*sizes, len(payload)]:
        piece = payload[pos : pos + size]
        pos += len(piece)
        if piece:
            chunks.append(piece)
    out = bytearray()
    for i, chunk in enumerate([*chunks, b""]):
        size_hex = f"{len(chunk):X}" if upper else f"{len(chunk):x}"
        extension = f";chunk-signature={i:064x}" if signed else ""
        out += f"{size_hex}{extension}\r\n".encode()
        if chunk:
            out += chunk + b"\r\n"
    for name, value in (trailers or {}).items():
        out += f"{name}:{value}\r\n".encode()
    if trailer_signature is not None:
        out += f"x-amz-trailer-signature:{trailer_signature}\r\n".encode()
    out += b"\r\n"
    return bytes(out)


def test_unsigned_with_trailer() -> None:
    payload, decoder = decode([UNSIGNED])
    assert payload == b"hello wire\n"
    assert decoder.done
    assert decoder.trailers == {"x-amz-checksum-crc32": "U+m5Tw=="}
    assert decoder.chunk_signatures == []
    assert decoder.trailer_signature is None
    crc = new_hasher("crc32")
    crc.update(payload)
    assert b64(crc.digest()) == decoder.trailers["x-amz-checksum-crc32"]


def test_signed_chunks() -> None:
    body = (
        f"5;chunk-signature={SIG_A}\r\nhello\r\n6;chunk-signature={SIG_B}\r\n world\r\n"
        f"0;chunk-signature={SIG_A}\r\n\r\n"
    ).encode()
    payload, decoder = decode([body])
    assert payload == b"hello world"
    assert decoder.chunk_signatures == [SIG_A, SIG_B, SIG_A]
    assert decoder.trailers == {}


def test_signed_with_trailer_and_trailer_signature() -> None:
    body = encode(
        b"abc",
        [],
        signed=True,
        trailers={"X-Amz-Checksum-CRC32C": "QkJCQg=="},
        trailer_signature=SIG_B,
    )
    payload, decoder = decode([body])
    assert payload == b"abc"
    assert decoder.trailers == {"x-amz-checksum-crc32c": "QkJCQg=="}  # names lower-cased
    assert decoder.trailer_signature == SIG_B
    assert len(decoder.chunk_signatures) == 2


def test_upper_and_mixed_case_hex_sizes() -> None:
    data = bytes(range(256)) * 2
    body = b"1A\r\n" + data[:26] + b"\r\n1e6\r\n" + data[26:] + b"\r\n0\r\n\r\n"
    payload, _ = decode([body])
    assert payload == data
    payload, _ = decode([encode(data, [0xAB, 0xCD], upper=True)])
    assert payload == data


def test_empty_payload() -> None:
    payload, decoder = decode([b"0\r\n\r\n"])
    assert payload == b""
    assert decoder.done


def test_one_byte_at_a_time() -> None:
    data = bytes(range(256)) * 5
    body = encode(data, [1, 2, 600, 3], signed=True, trailers={"x-amz-checksum-crc32": "AAAAAA=="})
    pieces = [body[i : i + 1] for i in range(len(body))]
    payload, decoder = decode(pieces)
    assert payload == data
    assert decoder.trailers == {"x-amz-checksum-crc32": "AAAAAA=="}
    assert len(decoder.chunk_signatures) == 6  # five data chunks and the final one


def test_every_single_split_point() -> None:
    for cut in range(len(UNSIGNED) + 1):
        payload, decoder = decode([UNSIGNED[:cut], UNSIGNED[cut:]])
        assert payload == b"hello wire\n", cut
        assert decoder.trailers == {"x-amz-checksum-crc32": "U+m5Tw=="}, cut


def test_payload_is_returned_without_copies_of_the_framing() -> None:
    decoder = AwsChunkedDecoder()
    views = decoder.feed(b"3\r\nabc\r\n")
    assert [bytes(v) for v in views] == [b"abc"]
    assert decoder.feed(b"4\r\nde") == [memoryview(b"de")]
    assert [bytes(v) for v in decoder.feed(b"fg\r\n0\r\n\r\n")] == [b"fg"]
    assert decoder.done


@st.composite
def bodies(draw: st.DrawFn) -> tuple[bytes, bytes, dict[str, str]]:
    payload = draw(st.binary(max_size=2000))
    sizes = draw(st.lists(st.integers(min_value=1, max_value=700), max_size=8))
    trailers = draw(
        st.dictionaries(
            st.sampled_from(["x-amz-checksum-crc32", "x-amz-checksum-sha256", "x-amz-meta-x"]),
            st.text(alphabet="ABCDEFabcdef0123456789+/=", max_size=44),
            max_size=2,
        )
    )
    body = encode(
        payload,
        sizes,
        signed=draw(st.booleans()),
        upper=draw(st.booleans()),
        trailers=trailers,
        trailer_signature=draw(st.none() | st.just(SIG_A)),
    )
    return payload, body, trailers


@settings(deadline=None, max_examples=300)
@given(case=bodies(), cuts=st.lists(st.integers(min_value=0, max_value=5000), max_size=12))
def test_random_splits(case: tuple[bytes, bytes, dict[str, str]], cuts: list[int]) -> None:
    payload, body, trailers = case
    points = sorted({min(c, len(body)) for c in cuts})
    pieces = [body[a:b] for a, b in zip([0, *points], [*points, len(body)], strict=True)]
    decoded, decoder = decode(pieces)
    assert decoded == payload
    assert decoder.trailers == trailers


@pytest.mark.parametrize(
    "body",
    [
        b"zz\r\nabc\r\n0\r\n\r\n",  # not hex
        b"-3\r\nabc\r\n0\r\n\r\n",  # negative
        b"0x3\r\nabc\r\n0\r\n\r\n",  # C-style prefix
        b"\r\nabc\r\n0\r\n\r\n",  # empty size
        b";chunk-signature=abc\r\n\r\n",  # signature without size
        b"1" * 17 + b"\r\n",  # more than 16 hex digits
        b"3\nabc\n0\n\n",  # LF-only line endings
        b"3\r\nabcd\r\n0\r\n\r\n",  # chunk longer than its size
        b"3\r\nabc0\r\n\r\n",  # data not followed by CRLF
        b"3\r\nabc\r\n0\r\nx-amz-checksum-crc32 U+m5Tw==\r\n\r\n",  # trailer without a colon
        b"3;" + b"a" * 5000 + b"\r\n",  # endless chunk header
        b"3\r\nabc\r\n0\r\n" + b"x" * 5000,  # endless trailer line
    ],
)
def test_malformed_framing_is_an_incomplete_body(body: bytes) -> None:
    with pytest.raises(IncompleteBody):
        AwsChunkedDecoder().feed(body)
    # The same error whatever the split, and as soon as the bad byte arrives.
    decoder = AwsChunkedDecoder()
    with pytest.raises(IncompleteBody):
        for i in range(len(body)):
            decoder.feed(body[i : i + 1])


def test_data_after_the_final_chunk_is_rejected() -> None:
    decoder = AwsChunkedDecoder()
    decoder.feed(b"0\r\n\r\n")
    assert decoder.feed(b"\r\n") == []  # a stray CRLF is tolerated
    with pytest.raises(InvalidRequest):
        decoder.feed(b"3\r\nabc\r\n")


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"b\r\n",
        b"b\r\nhello",
        b"b\r\nhello wire\n",
        b"b\r\nhello wire\n\r\n",  # no final chunk
        b"b\r\nhello wire\n\r\n0",
        b"b\r\nhello wire\n\r\n0\r\n",  # final chunk without the closing empty line
        b"b\r\nhello wire\n\r\n0\r\nx-amz-checksum-crc32:U+m5Tw==\r\n",
        b"b\r\nhello wire\n\r\n0\r\nx-amz-checksum-crc32:U+m5Tw==\r\n\r",
    ],
)
def test_missing_final_chunk_fails_at_finish(body: bytes) -> None:
    decoder = AwsChunkedDecoder()
    decoder.feed(body)  # nothing wrong yet: more may come
    assert not decoder.done
    with pytest.raises(IncompleteBody):
        decoder.finish()


# --- recorded requests of real clients (/work/shared/wire, see its README.md) ----------------

MARK = re.compile(
    rb"\n##### (\S+) -- bytes below exactly as received \(body cut at 2048 B\) #####\n"
)
TRUNCATED = re.compile(rb"\n<<< capture truncated: \d+ more raw body bytes >>>\n$")


@dataclass(frozen=True)
class WireRequest:
    case: str
    seq: int
    headers: dict[str, str]
    body: bytes
    """The request body as on the wire (HTTP chunked framing removed)."""
    truncated: bool
    analysis: dict[str, object]

    @property
    def name(self) -> str:
        return f"{self.case}-{self.seq}"


def http_dechunk(raw: bytes) -> bytes:
    """Remove Transfer-Encoding: chunked framing (stops quietly where a capture was cut)."""
    out = bytearray()
    pos = 0
    while True:
        eol = raw.find(b"\r\n", pos)
        if eol < 0:
            return bytes(out)
        size = int(raw[pos:eol].split(b";")[0], 16)
        if size == 0:
            return bytes(out)
        out += raw[eol + 2 : eol + 2 + size]
        pos = eol + 2 + size + 2


def parse_request(raw: bytes) -> tuple[dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    headers = {}
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", ""):
        body = http_dechunk(body)
    return headers, body


def aws_chunked_requests() -> list[WireRequest]:
    found = []
    for case_dir in sorted(WIRE.iterdir()) if WIRE.is_dir() else []:
        raw_file = case_dir / "raw_requests.http"
        if not raw_file.is_file():
            continue
        records = {
            r["raw_capture"]: r for r in json.loads((case_dir / "requests.json").read_text())
        }
        parts = MARK.split(raw_file.read_bytes())[1:]
        for name, raw in zip(parts[::2], parts[1::2], strict=True):
            record = records[name.decode()]
            truncated = TRUNCATED.search(raw) is not None
            if truncated:
                raw = TRUNCATED.sub(b"", raw)
            headers, body = parse_request(raw)
            streaming = headers.get("x-amz-content-sha256", "").startswith("STREAMING-")
            if "aws-chunked" not in headers.get("content-encoding", "") and not streaming:
                continue
            if record["analysis"].get("rejected_before_body"):
                continue
            found.append(
                WireRequest(
                    case_dir.name, record["seq"], headers, body, truncated, record["analysis"]
                )
            )
    return found


WIRE_REQUESTS = aws_chunked_requests()
COMPLETE = [r for r in WIRE_REQUESTS if not r.truncated]


def test_wire_captures_are_found() -> None:
    assert len(COMPLETE) >= 17
    assert any(r.headers.get("x-amz-trailer") for r in COMPLETE)
    assert any("chunk-signature" in r.body.decode("latin-1") for r in COMPLETE)
    assert any(r.truncated for r in WIRE_REQUESTS)


def check_wire_payload(request: WireRequest, payload: bytes, decoder: AwsChunkedDecoder) -> None:
    expected_length = int(request.headers.get("x-amz-decoded-content-length", -1))
    if expected_length < 0:  # boto3 without a seekable body sends no length header
        expected_length = int(str(request.analysis["decoded_payload_len"]))
    assert len(payload) == expected_length
    sums = request.analysis["payload_checksums"]
    assert isinstance(sums, dict)
    assert base64.b64encode(hashlib.md5(payload).digest()).decode() == sums["md5"]
    for algorithm in ("crc32", "crc32c", "crc64nvme", "sha1", "sha256"):
        hasher = new_hasher(algorithm)
        hasher.update(payload)
        assert b64(hasher.digest()) == sums[algorithm], algorithm
    if "content-md5" in request.headers:
        assert (
            base64.b64encode(hashlib.md5(payload).digest()).decode()
            == request.headers["content-md5"]
        )
    announced = request.headers.get("x-amz-trailer", "")
    if announced:
        assert set(decoder.trailers) == {announced.lower()}
    for name, value in decoder.trailers.items():
        algorithm = name.removeprefix("x-amz-checksum-")
        hasher = new_hasher(algorithm)
        hasher.update(payload)
        assert b64(hasher.digest()) == value, name


@pytest.mark.parametrize("request_", COMPLETE, ids=[r.name for r in COMPLETE])
def test_decodes_real_client_bodies(request_: WireRequest) -> None:
    payload, decoder = decode([request_.body])
    check_wire_payload(request_, payload, decoder)
    aws = request_.analysis["aws_chunked"]
    assert isinstance(aws, dict)
    assert decoder.trailers == {name.lower(): value for name, value in aws["trailers"]}
    if decoder.chunk_signatures:
        assert decoder.chunk_signatures[0] == aws["first_chunk_header"].split("=", 1)[1]
        assert decoder.chunk_signatures[-1] == aws["last_chunk_header"].split("=", 1)[1]
        assert len(decoder.chunk_signatures) == aws["n_chunks"]
    # Byte by byte gives the same result.
    again, decoder = decode([request_.body[i : i + 1] for i in range(len(request_.body))])
    assert again == payload
    check_wire_payload(request_, again, decoder)


@pytest.mark.parametrize(
    "request_",
    [r for r in WIRE_REQUESTS if r.truncated],
    ids=[r.name for r in WIRE_REQUESTS if r.truncated],
)
def test_truncated_real_client_bodies_are_incomplete(request_: WireRequest) -> None:
    decoder = AwsChunkedDecoder()
    payload = b"".join(bytes(v) for v in decoder.feed(request_.body))
    assert 0 < len(payload) < int(request_.headers["x-amz-decoded-content-length"])
    with pytest.raises(IncompleteBody):
        decoder.finish()
