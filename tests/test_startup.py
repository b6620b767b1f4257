"""Start-up failures of ``s3batchd serve`` as a real process: one line on stderr naming the path
or setting, no traceback, exit status 2 (configuration) or 1 (start-up), never 3 (which means
"stopped, batches kept on disk" and which the systemd unit counts as success)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from s3batchd.cli.main import EXIT_BATCHES_KEPT, EXIT_CONFIG, EXIT_START_FAILED
from s3batchd.cli.seaweed import free_ports
from tests.conftest import DaemonFactory

S3BATCHD = str(Path(sys.executable).parent / "s3batchd")


def serve(
    config: Path, env: dict[str, str] | None = None, *, lines: int = 1
) -> tuple[int, list[str]]:
    """Exit status and stderr lines (``lines`` of them) of ``s3batchd serve --config``
    (expected to fail)."""
    environ = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("S3BATCHD_", "AWS_"))
    }
    result = subprocess.run(
        [S3BATCHD, "serve", "--config", str(config)],
        env={**environ, "AWS_EC2_METADATA_DISABLED": "true", **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,  # a daemon that did start would run until then: the test fails
        check=False,
    )
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode != EXIT_BATCHES_KEPT, result.stderr
    assert len(result.stderr.splitlines()) == lines, result.stderr
    return result.returncode, result.stderr.splitlines()


def config_file(
    directory: Path, text: str, *, spool: Path | None = None
) -> tuple[Path, dict[str, str]]:
    """A config of ``text`` with a spool (in ``directory`` unless given), and an environment
    that puts both listeners on free ports."""
    port, admin_port = free_ports(2)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "config.toml"
    path.write_text(f'{text}\n[spool]\ndir = "{spool or directory / "spool"}"\n')
    return path, {
        "S3BATCHD_SERVER__PORT": str(port),
        "S3BATCHD_SERVER__ADMIN_PORT": str(admin_port),
    }


@pytest.fixture
def regular_file(tmp_path: Path) -> Path:
    path = tmp_path / "a-file"
    path.write_text("not a directory", encoding="utf-8")
    return path


@pytest.mark.parametrize("workers", [1, 2])
def test_spool_dir_under_a_regular_file(tmp_path: Path, regular_file: Path, workers: int) -> None:
    spool = regular_file / "spool"  # cannot be created, even by root
    config, env = config_file(tmp_path, f"[server]\nworkers = {workers}", spool=spool)
    status, [line] = serve(config, env)
    assert status == EXIT_START_FAILED
    assert "spool.dir" in line
    assert str(spool) in line


def test_spool_dir_is_a_regular_file(tmp_path: Path, regular_file: Path) -> None:
    config, env = config_file(tmp_path, "", spool=regular_file)
    status, [line] = serve(config, env)
    assert status == EXIT_START_FAILED
    assert "spool.dir" in line
    assert str(regular_file) in line


def test_catalog_path_under_a_regular_file(tmp_path: Path, regular_file: Path) -> None:
    catalog = regular_file / "catalog.sqlite3"
    config, env = config_file(tmp_path, f'[catalog]\npath = "{catalog}"')
    status, [line] = serve(config, env)
    assert status == EXIT_START_FAILED
    assert "catalog.path" in line
    assert str(catalog) in line


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        yield busy.getsockname()[1]


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("setting", ["server.port", "server.admin_port"])
def test_port_taken_names_the_setting(
    tmp_path: Path, taken_port: int, setting: str, workers: int
) -> None:
    config, env = config_file(tmp_path, f"[server]\nworkers = {workers}")
    env["S3BATCHD_" + setting.upper().replace(".", "__")] = str(taken_port)
    status, [line] = serve(config, env)
    assert status == EXIT_START_FAILED
    assert setting in line
    assert f"127.0.0.1:{taken_port}" in line


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[server\nport = 1\n", "config.toml"),  # TOML syntax: the file (and line)
        ('[server]\nport = "nine"\n', "server.port"),  # wrong type
        ("[server]\nprot = 9000\n", "server.prot"),  # unknown key
        ("[nosuch]\nx = 1\n", "nosuch"),  # unknown section
    ],
)
def test_bad_config_is_one_line_and_exit_2(tmp_path: Path, text: str, named: str) -> None:
    config = tmp_path / "config.toml"
    config.write_text(text, encoding="utf-8")
    status, [line] = serve(config)
    assert status == EXIT_CONFIG
    assert named in line


def test_missing_config_file_is_exit_2(tmp_path: Path) -> None:
    status, [line] = serve(tmp_path / "absent.toml")
    assert status == EXIT_CONFIG
    assert str(tmp_path / "absent.toml") in line


def test_serve_warns_of_a_variable_that_names_no_setting(
    tmp_path: Path, regular_file: Path
) -> None:
    config, env = config_file(tmp_path, "", spool=regular_file)  # then fails: spool.dir
    env["S3BATCHD_BATCH_LINGER_MS"] = "5"
    status, [warning, line] = serve(config, env, lines=2)
    assert "S3BATCHD_BATCH_LINGER_MS matches no setting" in warning
    assert "did you mean S3BATCHD_BATCH__LINGER_MS?" in warning
    assert "WARNING" in warning
    assert status == EXIT_START_FAILED
    assert "spool.dir" in line


def test_spool_used_by_another_daemon(start_daemon: DaemonFactory, tmp_path: Path) -> None:
    running = start_daemon()  # holds the spool's lock
    spool = running.settings.spool.dir
    config, env = config_file(tmp_path / "second", "", spool=spool)
    status, [line] = serve(config, env)
    assert status == EXIT_START_FAILED
    assert "spool.dir" in line
    assert f"{spool} is used by another s3batchd process" in line


#: A batch id as the spool names its files.
BATCH_ID = "20261121T143000123Z-test-0001-000001"
QUIET = '[log]\nlevel = "ERROR"'


def test_catalog_path_that_is_a_directory(tmp_path: Path) -> None:
    """Reaches the pipeline's start (the directory exists, so the pre-flight check passes)."""
    catalog = tmp_path / "catalog-dir"
    catalog.mkdir()
    config, env = config_file(tmp_path, f'{QUIET}\n[catalog]\npath = "{catalog}"')
    status, [line] = serve(config, env)
    assert status == EXIT_START_FAILED
    assert "catalog.path" in line
    assert str(catalog) in line


@pytest.mark.parametrize("suffix", [".open", ".tar"])
def test_a_batch_file_recovery_cannot_read(tmp_path: Path, suffix: str) -> None:
    """A spool file that recovery cannot open, even as root (a directory where a batch file
    is expected): one line naming spool.dir and the file, from inside the lifespan."""
    spool = tmp_path / "spool"
    unreadable = spool / "bucket" / (BATCH_ID + suffix)
    unreadable.mkdir(parents=True)
    config, env = config_file(tmp_path, QUIET, spool=spool)
    status, [line] = serve(config, env)
    assert status == EXIT_START_FAILED
    assert "spool.dir" in line
    assert str(unreadable) in line
