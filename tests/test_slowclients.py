"""Slow and idle clients do not deny service to the rest: idle keep-alive connections make room
for new ones, a body must keep a minimum average rate, and slow bodies hold only a share of
the request slots (server.max_connections, server.body_min_rate_bytes_s,
server.body_deadline_grace_s, server.progressing_reserve)."""

from __future__ import annotations

import select
import socket
import threading
from dataclasses import dataclass, field

import pytest
from botocore.exceptions import ClientError

from tests.conftest import Daemon, DaemonFactory, wait_for

TRICKLE_INTERVAL_S = 0.25
"""Time between two body bytes of a trickler: far below every stall timeout used here."""


def _head(bucket: str, key: str, length: int | None) -> bytes:
    """A PUT's head; ``length`` None: a body of unknown length (``Transfer-Encoding:
    chunked``)."""
    framing = "Transfer-Encoding: chunked" if length is None else f"Content-Length: {length}"
    return f"PUT /{bucket}/{key} HTTP/1.1\r\nHost: 127.0.0.1\r\n{framing}\r\n\r\n".encode()


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


def _sample(daemon: Daemon, name: str, **labels: str) -> float | None:
    """One sample of the daemon's /metrics."""
    registry = daemon.state.metrics.registry
    value: float | None = registry.get_sample_value(name, labels)
    return value


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
    # Neither keep-alive nor the header timeout closes an idle connection during the test.
    daemon = start_daemon(
        server={"max_connections": limit, "keep_alive_s": 60, "header_timeout_s": 60.0}
    )
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
        # One closed per connection from the limit on: 2 * limit - (limit - 1), and boto3's.
        assert _sample(daemon, "s3batchd_idle_connections_closed_total") == limit + 2
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
        wait_for(lambda: daemon.state.active_requests == limit - 1, timeout=10)
        client = daemon.client(retries={"total_max_attempts": 1})
        with pytest.raises(ClientError) as caught:
            client.put_object(Bucket=bucket, Key="refused", Body=b"x")
        assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    finally:
        for sock in busy:
            sock.close()


@dataclass
class Trickler:
    """A raw client sending a body one byte per interval (until answered, or ``limit``
    bytes)."""

    sock: socket.socket
    limit: int
    sent: int = 0
    answer: bytes | None = None
    answered_after: int = 0
    """Body bytes sent when the answer came."""


@dataclass
class Tricklers:
    """Many slow clients, driven by one thread."""

    port: int
    bucket: str
    length: int | None
    """Declared body length (None: chunked, one byte per chunk)."""
    limit: int
    clients: list[Trickler] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def open(self, count: int) -> None:
        """Connect ``count`` clients and send their headers and first byte."""
        for number in range(count):
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
            client = Trickler(sock, self.limit)
            self.clients.append(client)
            sock.sendall(_head(self.bucket, f"slow/{number}", self.length) + self._piece())
            client.sent = 1
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(TRICKLE_INTERVAL_S):
            for client in self.clients:
                self._step(client)

    def _step(self, client: Trickler) -> None:
        if client.answer is not None:
            return
        if select.select([client.sock], [], [], 0)[0]:
            client.answer = _whole_answer(client.sock)
            client.answered_after = client.sent
            return
        if client.sent < client.limit:
            try:
                client.sock.sendall(self._piece())
            except OSError:
                return  # closed by the daemon: its answer is read on the next step
            client.sent += 1

    def _piece(self) -> bytes:
        return b"x" if self.length is not None else b"1\r\nx\r\n"

    def trickling(self) -> list[Trickler]:
        """The clients not answered yet."""
        return [client for client in self.clients if client.answer is None]

    def close(self) -> None:
        """Stop the thread and close every socket."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        for client in self.clients:
            client.sock.close()


@pytest.mark.parametrize("length", [40, None], ids=["content-length", "chunked"])
def test_a_trickled_body_gets_request_timeout_at_its_deadline(
    start_daemon: DaemonFactory, bucket: str, length: int | None
) -> None:
    """Bodies trickling one byte per interval, each piece well within server.body_timeout_s,
    are answered 400 RequestTimeout once their deadline (grace + length / minimum rate; for
    an unknown length: once behind the rate) passed, while they are still trickling; the old
    code waited for the whole body."""
    daemon = start_daemon(
        server={
            "body_timeout_s": 5.0,
            "body_min_rate_bytes_s": 100,
            "body_deadline_grace_s": 1.0,
            "progressing_reserve": 0.0,  # no slow share: only the deadline ends them
        }
    )
    # Deadline: 1 s + 40 / 100 s of waiting (chunked: 1 s, then behind at once); the 39
    # pieces the clients send take 10 s.
    slow = Tricklers(daemon.settings.server.port, bucket, length, limit=39)
    try:
        slow.open(10)
        wait_for(lambda: not slow.trickling(), timeout=30)
    finally:
        slow.close()
    for client in slow.clients:
        assert client.answer is not None
        assert client.answer.startswith(b"HTTP/1.1 400 ")
        assert b"<Code>RequestTimeout</Code>" in client.answer
        assert b"connection: close" in client.answer.lower()
        assert client.answered_after < client.limit  # cut off while still trickling
    assert daemon.pipeline.catalog.count() == 0
    assert _sample(daemon, "s3batchd_body_timeouts_total", reason="deadline") == len(slow.clients)
    assert _sample(daemon, "s3batchd_body_timeouts_total", reason="stalled") == 0
    daemon.client().put_object(Bucket=bucket, Key="after", Body=b"served")


def test_slow_bodies_leave_a_share_of_the_slots_to_progressing_requests(
    start_daemon: DaemonFactory, bucket: str
) -> None:
    """More trickling bodies than server.max_concurrent_requests, declaring lengths whose
    deadline is far away: once they fall behind the minimum rate, at most (1 -
    progressing_reserve) of the slots stay theirs, and a legitimate boto3 client is served
    again and again while they trickle (the old code answered it SlowDown throughout)."""
    slots = 8
    daemon = start_daemon(
        server={
            "max_concurrent_requests": slots,
            "body_timeout_s": 5.0,
            "body_min_rate_bytes_s": 1000,
            "body_deadline_grace_s": 1.0,
            "progressing_reserve": 0.5,
        }
    )
    slow = Tricklers(daemon.settings.server.port, bucket, length=10**6, limit=400)
    client = daemon.client(retries={"total_max_attempts": 1})

    def served(key: str) -> bool:
        try:
            client.put_object(Bucket=bucket, Key=key, Body=b"legit")
        except ClientError as exc:
            assert exc.response["Error"]["Code"] == "SlowDown"
            return False
        return True

    try:
        slow.open(3 * slots)
        wait_for(lambda: served("first"), timeout=30, interval=0.2)
        for number in range(10):
            assert served(f"legit/{number}")
        # The slow share is held until its bodies' own deadlines; the others were answered.
        wait_for(lambda: len(slow.trickling()) == slots // 2, timeout=10)
        assert all(t.sent < t.limit for t in slow.trickling())
        assert _sample(daemon, "s3batchd_slow_bodies") == slots // 2
        assert _sample(daemon, "s3batchd_body_timeouts_total", reason="slow_share") == slots // 2
    finally:
        slow.close()
    answers = [t.answer for t in slow.clients if t.answer is not None]
    refused = [a for a in answers if a.startswith(b"HTTP/1.1 503 ")]
    cut = [a for a in answers if b"<Code>RequestTimeout</Code>" in a]
    assert (len(refused), len(cut)) == (2 * slots, slots // 2)
