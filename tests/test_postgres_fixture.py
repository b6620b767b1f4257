"""The PostgreSQL fixture (tests/postgres.py): a private server as the shared catalog's tests
need it, reachable on 127.0.0.1 only, run unprivileged, restartable on its data, stopped by PID."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import psycopg
import pytest

from tests.daemon_process import alive
from tests.postgres import SUPERUSER, LocalPostgres, server_binary, start_local_postgres


def test_server_programs_are_found() -> None:
    for name in ("initdb", "postgres"):
        assert server_binary(name).is_file()


def test_a_fresh_database_per_test(postgres_dsn: str) -> None:
    with psycopg.connect(postgres_dsn) as connection:
        row = connection.execute(
            "SELECT current_user, count(*) FROM pg_tables WHERE schemaname = 'public'"
        ).fetchone()
        version = connection.info.server_version
    assert row == (SUPERUSER, 0)
    assert version >= 140000  # the oldest PostgreSQL the shared catalog supports


def test_password_from_the_environment(
    postgres_server: LocalPostgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    dsn = postgres_server.dsn(password=False)
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(dsn, connect_timeout=10).close()
    monkeypatch.setenv("PGPASSWORD", postgres_server.password)
    with psycopg.connect(dsn, connect_timeout=10) as connection:
        assert connection.execute("SELECT 1").fetchone() == (1,)


def test_runs_unprivileged_on_loopback_only(postgres_server: LocalPostgres) -> None:
    status = Path(f"/proc/{postgres_server.pid}/status").read_text()
    uid = int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])
    assert uid != 0
    assert uid == os.geteuid() or os.geteuid() == 0
    assert postgres_server.data_dir.stat().st_uid == uid
    with psycopg.connect(postgres_server.dsn()) as connection:
        settings: dict[str, str] = dict(
            connection.execute(
                "SELECT name, setting FROM pg_settings "
                "WHERE name IN ('listen_addresses', 'unix_socket_directories')"
            ).fetchall()
        )
    assert settings == {"listen_addresses": "127.0.0.1", "unix_socket_directories": ""}


def test_stop_by_pid_and_restart_on_the_same_data() -> None:
    server = start_local_postgres()
    try:
        with psycopg.connect(server.dsn(), autocommit=True) as connection:
            connection.execute("CREATE TABLE kept (n integer)")
            connection.execute("INSERT INTO kept VALUES (7)")
        pid = server.pid
        server.stop()
        assert not alive(pid)
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
        server.start()
        with psycopg.connect(server.dsn()) as connection:
            assert connection.execute("SELECT n FROM kept").fetchall() == [(7,)]
    finally:
        root = server.root
        server.remove()
    assert not root.exists()
