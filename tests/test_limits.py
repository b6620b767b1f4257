"""The front door under abuse: foreign Host headers, stalled bodies, too many requests."""

from __future__ import annotations

import socket
import time

import pytest
from botocore.exceptions import ClientError

from tests.conftest import DaemonFactory, wait_for
from tests.wire import send_raw


def test_foreign_host_is_refused(start_daemon: DaemonFactory, bucket: str) -> None:
    daemon = start_daemon()
    port = daemon.settings.server.port
    answer = send_raw(
        port,
        f"PUT /{bucket}/k HTTP/1.1\r\nHost: evil.example:{port}\r\n"
        "Content-Length: 1\r\n\r\nx".encode(),
    )
    assert answer.status == 400
    assert b"<Code>InvalidRequest</Code>" in answer.body
    assert daemon.pipeline.catalog.count() == 0
    head = f"PUT /{bucket}/k HTTP/1.1\r\nHost: localhost:{port}\r\nContent-Length: 1\r\n\r\n"
    ok = send_raw(port, head.encode() + b"x")
    assert ok.status == 200


def _stall(port: int, bucket: str, key: str) -> socket.socket:
    """A client that sends headers and a tenth of its body, then goes quiet."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(
        f"PUT /{bucket}/{key} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n".encode()
        + b"x" * 10
    )
    return sock


def _reply(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_stalled_body_times_out_without_stalling_others(
    start_daemon: DaemonFactory, bucket: str
) -> None:
    daemon = start_daemon(server={"body_timeout_s": 1.0})
    port = daemon.settings.server.port
    with _stall(port, bucket, "slow") as slow:
        started = time.monotonic()
        daemon.client().put_object(Bucket=bucket, Key="fast", Body=b"not held up")
        assert time.monotonic() - started < 0.9
        reply = _reply(slow)  # the server closes the connection after answering
    assert reply.startswith(b"HTTP/1.1 400")
    assert b"<Code>RequestTimeout</Code>" in reply
    assert daemon.pipeline.catalog.get(bucket, "slow") is None


def test_too_many_requests_get_slowdown(start_daemon: DaemonFactory, bucket: str) -> None:
    daemon = start_daemon(server={"max_concurrent_requests": 2, "body_timeout_s": 3.0})
    port = daemon.settings.server.port
    client = daemon.client(retries={"total_max_attempts": 1})
    with _stall(port, bucket, "a") as first, _stall(port, bucket, "b") as second:
        wait_for(lambda: daemon.app.state.active_requests == 2, timeout=5)
        with pytest.raises(ClientError) as caught:
            client.put_object(Bucket=bucket, Key="c", Body=b"refused")
        meta = caught.value.response["ResponseMetadata"]
        assert (meta["HTTPStatusCode"], caught.value.response["Error"]["Code"]) == (503, "SlowDown")
        assert meta["HTTPHeaders"]["retry-after"] == "1"
        _reply(first)
        _reply(second)
    client.put_object(Bucket=bucket, Key="c", Body=b"accepted once the slots are free")


def test_trickled_headers_are_cut_off(start_daemon: DaemonFactory, bucket: str) -> None:
    daemon = start_daemon(server={"header_timeout_s": 1.0})
    port = daemon.settings.server.port
    with socket.create_connection(("127.0.0.1", port), timeout=10) as slow:
        slow.sendall(f"PUT /{bucket}/slowloris HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode())
        started = time.monotonic()
        assert _reply(slow) == b""  # closed without an answer: no request ever started
        assert 0.9 < time.monotonic() - started < 5
    # A normal client on a kept-alive connection is unaffected by the timer.
    client = daemon.client()
    for number in range(3):
        client.put_object(Bucket=bucket, Key=f"ok/{number}", Body=b"x")
        time.sleep(0.6)
