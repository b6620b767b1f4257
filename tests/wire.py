"""The recorded real-client requests in ``shared/wire`` (see its README), and a raw sender."""

from __future__ import annotations

import base64
import http.client
import json
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

WIRE_DIR = Path(__file__).resolve().parents[2] / "shared" / "wire"
_MARK = re.compile(
    rb"\n##### (\S+) -- bytes below exactly as received \(body cut at 2048 B\) #####\n"
)
_TRUNCATED = re.compile(rb"\n<<< capture truncated: \d+ more raw body bytes >>>\n$")


@dataclass(frozen=True)
class Recorded:
    """One recorded request: its analysis and its exact bytes."""

    case: str
    meta: dict[str, Any]
    raw: bytes

    @property
    def md5_hex(self) -> str:
        """Hex MD5 of the decoded payload (the ETag S3 would answer)."""
        return base64.b64decode(self.meta["analysis"]["payload_checksums"]["md5"]).hex()

    def header(self, name: str) -> str | None:
        """A request header by case-insensitive name."""
        lines: list[str] = self.meta["headers"]
        for line in lines:
            key, _, value = line.partition(":")
            if key.strip().lower() == name:
                return value.strip()
        return None


def recorded_requests(case_dir: Path) -> list[Recorded]:
    """The complete (untruncated) recorded requests of one case, in order."""
    meta = {r["raw_capture"]: r for r in json.loads((case_dir / "requests.json").read_text())}
    parts = _MARK.split((case_dir / "raw_requests.http").read_bytes())[1:]
    return [
        Recorded(case_dir.name, meta[name.decode()], raw)
        for name, raw in zip(parts[::2], parts[1::2], strict=True)
        if not _TRUNCATED.search(raw)
    ]


def put_object_requests() -> list[Recorded]:
    """Every complete PutObject a well-behaved client sent (no injected-error cases)."""
    found: list[Recorded] = []
    for case_dir in sorted(WIRE_DIR.iterdir()):
        if not (case_dir / "raw_requests.http").exists() or "-err-" in case_dir.name:
            continue
        for record in recorded_requests(case_dir):
            analysis = record.meta["analysis"]
            if record.meta["op"] == "PutObject" and not analysis.get("rejected_before_body"):
                found.append(record)
    return found


def retarget(raw: bytes, bucket: str, port: int) -> bytes:
    """Point a recorded request at ``bucket`` on ``127.0.0.1:port`` (signatures then differ)."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    method, target, version = lines[0].split(b" ")
    virtual = any(line.lower().startswith(b"host:") and b".localhost" in line for line in lines[1:])
    if not virtual:  # path-style: the first path segment is the bucket
        target = b"/" + bucket.encode() + b"/" + target.lstrip(b"/").partition(b"/")[2]
    out = [b" ".join((method, target, version))]
    for line in lines[1:]:
        name, _, _ = line.partition(b":")
        if name.strip().lower() == b"host":
            host = f"{bucket}.localhost:{port}" if virtual else f"127.0.0.1:{port}"
            line = name + b": " + host.encode()
        out.append(line)
    return b"\r\n".join(out) + sep + body


@dataclass(frozen=True)
class RawResponse:
    """Status, lower-cased headers and body of a response."""

    status: int
    headers: dict[str, str]
    body: bytes


def send_raw(port: int, raw: bytes, *, timeout: float = 10) -> RawResponse:
    """Send bytes on a fresh connection and read the final response (100 Continue skipped)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(raw)
        response = http.client.HTTPResponse(sock, method=raw.split(b" ", 1)[0].decode())
        try:
            response.begin()
            body = response.read()
        finally:
            response.close()
    headers = {name.lower(): value for name, value in response.getheaders()}
    return RawResponse(response.status, headers, body)
