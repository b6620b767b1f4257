"""A real PostgreSQL server for the tests of the shared catalog (``catalog.backend = "postgres"``).

Debian's ``postgresql`` package (``make test`` installs it when missing) puts ``initdb`` and
``postgres`` in ``/usr/lib/postgresql/<version>/bin``, not on PATH: they are looked up on PATH
first, then there (newest version first). The server is created by ``initdb`` in a temporary
folder and run by this process, so it is stopped by PID, never through a service manager.
PostgreSQL refuses to run as root: under root (CI runs as root) both run as an unprivileged
user (``postgres`` when the package made one, else ``nobody``) that owns the folder, which is
then made with ``tempfile.mkdtemp`` (pytest's own temporary root is private to root). It
listens on 127.0.0.1 on a free port and on no unix socket (nothing in /var/run), with password
authentication, so a DSN in a test is the same shape as an operator's.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from s3batchd.cli.seaweed import free_ports

#: Where Debian's packages put the server programs (one folder per major version).
DEBIAN_BIN = Path("/usr/lib/postgresql")
#: The superuser initdb creates, and its password.
SUPERUSER = "s3batchd"
READY_LINE = "database system is ready to accept connections"
#: Users the server runs as under root, in order of preference.
UNPRIVILEGED = ("postgres", "nobody")


def server_binary(name: str) -> Path:
    """Path of a PostgreSQL program (``initdb``, ``postgres``): on PATH, else the newest
    version in Debian's ``/usr/lib/postgresql/<version>/bin``."""
    found = shutil.which(name)
    if found is not None:
        return Path(found)
    versions = sorted(
        (path for path in DEBIAN_BIN.glob(f"*/bin/{name}") if path.parent.parent.name.isdigit()),
        key=lambda path: int(path.parent.parent.name),
    )
    if not versions:
        raise FileNotFoundError(f"{name} not found on PATH nor in {DEBIAN_BIN}/*/bin")
    return versions[-1]


@dataclass
class LocalPostgres:
    """A PostgreSQL server started from a fresh ``initdb`` in ``data_dir``."""

    root: Path
    """The temporary folder: the cluster in ``data``, the server log in ``postgres.log``."""
    port: int
    password: str
    user: pwd.struct_passwd | None
    """The unprivileged user it runs as (None: as the current user)."""
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def data_dir(self) -> Path:
        """The cluster's folder."""
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        """The server's log (stdout and stderr)."""
        return self.root / "postgres.log"

    @property
    def pid(self) -> int:
        """Process id of the running server (the postmaster)."""
        assert self.process is not None, "not started"
        return self.process.pid

    def dsn(self, database: str = "postgres", *, password: bool = True) -> str:
        """A libpq URI for ``database`` (without the password: it comes from PGPASSWORD)."""
        secret = f":{self.password}" if password else ""
        return f"postgresql://{SUPERUSER}{secret}@127.0.0.1:{self.port}/{database}"

    def init(self) -> None:
        """``initdb`` the cluster: UTF-8, C collation, password authentication on TCP."""
        password_file = self.root / "password"
        password_file.write_text(self.password + "\n")
        self._chown(password_file)
        self._run(
            [
                str(server_binary("initdb")),
                f"--pgdata={self.data_dir}",
                f"--username={SUPERUSER}",
                f"--pwfile={password_file}",
                "--auth=scram-sha-256",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",  # a throwaway cluster: no fsync of every file it creates
            ]
        )
        password_file.unlink()

    def start(self, timeout: float = 60) -> None:
        """Start the server (again, on the same data and port) and wait until it takes
        connections."""
        if self.process is not None and self.process.poll() is None:
            return
        seen = len(self.log())
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    str(server_binary("postgres")),
                    "-D",
                    str(self.data_dir),
                    "-p",
                    str(self.port),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "unix_socket_directories=",  # TCP only: nothing in /var/run
                    "-c",
                    "fsync=off",  # a throwaway cluster
                    "-c",
                    "max_connections=200",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                user=self._uid,
                group=self._gid,
            )
        deadline = time.monotonic() + timeout
        while READY_LINE not in self.log()[seen:] or not self._listening():
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited {self.process.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"postgres did not start in {timeout} s:\n{self.log()}")
            time.sleep(0.05)

    def stop(self, timeout: float = 30) -> None:
        """Stop the server by PID: SIGINT (fast shutdown: connections are cut), then SIGKILL."""
        if self.process is None or self.process.poll() is not None:
            return
        os.kill(self.process.pid, signal.SIGINT)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout)

    def remove(self) -> None:
        """Stop the server and delete its folder."""
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def log(self) -> str:
        """What the server logged so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _listening(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            return False
        return True

    @property
    def _uid(self) -> int | None:
        return None if self.user is None else self.user.pw_uid

    @property
    def _gid(self) -> int | None:
        return None if self.user is None else self.user.pw_gid

    def _chown(self, path: Path) -> None:
        if self.user is not None:
            os.chown(path, self.user.pw_uid, self.user.pw_gid)

    def _run(self, command: list[str]) -> None:
        result = subprocess.run(
            command,
            capture_output=True,
            check=False,
            cwd=self.root,  # the user may not be allowed into the caller's folder
            user=self._uid,
            group=self._gid,
        )
        if result.returncode != 0:
            output = (result.stdout + result.stderr).decode(errors="replace")
            raise RuntimeError(f"{command[0]} failed ({result.returncode}):\n{output}")


def unprivileged_user() -> pwd.struct_passwd | None:
    """The user the server runs as: None (this one) unless this is root."""
    if os.geteuid() != 0:
        return None
    for name in UNPRIVILEGED:
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise RuntimeError(f"running as root and none of the users {UNPRIVILEGED} exists")


def start_local_postgres() -> LocalPostgres:
    """``initdb`` a new cluster in a temporary folder and start it on a free port."""
    user = unprivileged_user()
    root = Path(tempfile.mkdtemp(prefix="s3batchd-postgres-"))
    server = LocalPostgres(root, free_ports(1)[0], secrets.token_hex(12), user)
    try:
        server._chown(root)
        server.init()
        server.start()
    except BaseException:
        server.remove()
        raise
    return server
