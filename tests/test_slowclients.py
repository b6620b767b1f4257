"""Slow and idle clients do not deny service to the rest: idle keep-alive connections make room
for new ones (server.max_connections)."""

from __future__ import annotations

import socket

import pytest
from botocore.exceptions import ClientError

from tests.conftest import DaemonFactory, wait_for

TRICKLE_INTERVAL_S = 0.25
"""Time between two body bytes of a trickler: far below every stall timeout used here."""


def _head(bucket: str, key: str, length: int) -> bytes:
    return (
        f"PUT /{bucket}/{key} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


def _answer_head(sock: socket.socket) -> bytes:
    """An answer's status line and headers (the PUT answers here have empty bodies), or what
    came before the daemon closed."""
    data = b""
    while b"\r\n\r\n" not in data and (chunk := sock.recv(65536)):
        data += chunk
    return data


def _whole_answer(sock: socket.socket) -> bytes:
    """Everything the daemon sends until it closes the connection."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass  # closed with body bytes of ours unread: the answer came before
    return data


def _closed_by_daemon(sock: socket.socket) -> bool:
    """Whether the daemon closed this idle connection (it sends nothing else on it)."""
    sock.settimeout(0)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False  # still open, nothing to read
    except ConnectionResetError:
        return True
    finally:
        sock.settimeout(10)


def test_idle_keep_alive_connections_make_room_for_new_ones(
    start_daemon: DaemonFactory, bucket: str
) -> None:
    """Twice server.max_connections clients, each with one answered PUT on a connection it
    keeps open: every one is served (the longest-idle connections are closed to make room),
    and so is a boto3 client after them."""
    limit = 20
    daemon = start_daemon(server={"max_connections": limit, "keep_alive_s": 60})
    port = daemon.settings.server.port
    idle: list[socket.socket] = []
    try:
        for number in range(2 * limit):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            idle.append(sock)
            sock.sendall(_head(bucket, f"idle/{number}", 1) + b"x")
            assert _answer_head(sock).startswith(b"HTTP/1.1 200 "), number
        client = daemon.client(retries={"total_max_attempts": 1})
        client.put_object(Bucket=bucket, Key="legit", Body=b"served")
        # The longest idle were closed, the most recent are still open.
        wait_for(lambda: _closed_by_daemon(idle[0]), timeout=10)
        assert not _closed_by_daemon(idle[-1])
    finally:
        for sock in idle:
            sock.close()
    assert daemon.client().get_object(Bucket=bucket, Key="legit")["Body"].read() == b"served"


def test_connections_all_busy_are_still_refused(start_daemon: DaemonFactory, bucket: str) -> None:
    """Only idle connections make room: with every connection in a request, a new request is
    refused as before (503)."""
    limit = 5
    daemon = start_daemon(server={"max_connections": limit, "body_timeout_s": 10.0})
    port = daemon.settings.server.port
    busy: list[socket.socket] = []
    try:
        for number in range(limit - 1):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            busy.append(sock)
            sock.sendall(_head(bucket, f"busy/{number}", 100) + b"x")
        wait_for(lambda: daemon.app.state.active_requests == limit - 1, timeout=10)
        client = daemon.client(retries={"total_max_attempts": 1})
        with pytest.raises(ClientError) as caught:
            client.put_object(Bucket=bucket, Key="refused", Body=b"x")
        assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    finally:
        for sock in busy:
            sock.close()
