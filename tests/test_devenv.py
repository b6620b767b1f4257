"""What ``make run`` leaves for a second shell (s3batchd/cli/devenv.py), and the client-side
commands with and without it: the daemon's catalog and endpoint, never AWS by default, never
a ``./spool`` of their own."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from botocore.credentials import Credentials
from click.testing import CliRunner

from s3batchd.catalog.store import Catalog, catalog_path
from s3batchd.cli.devenv import DevEnvironment, env_script, write_config, write_env
from s3batchd.cli.main import main
from s3batchd.config import Settings, load_settings
from s3batchd.upload.upstream import make_client

#: No credentials anywhere and no instance metadata: nothing can leave 127.0.0.1.
OFFLINE = {
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": "/nonexistent/aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
}


def run(args: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(main, args, env={**OFFLINE, **(env or {})})
    return result.exit_code, result.output


def test_dev_files_give_a_second_shell_everything(tmp_path: Path) -> None:
    data_dir = tmp_path / "data dir"  # a space: the file quotes what it exports
    config = write_config(data_dir, port=9123, upstream_url="http://127.0.0.1:4567")
    settings = load_settings(config)
    assert settings.server.port == 9123
    assert settings.spool.dir == (data_dir / "spool").absolute()
    assert settings.upstream.endpoint_url == "http://127.0.0.1:4567"
    env = DevEnvironment(
        daemon_url="http://127.0.0.1:9123",
        upstream_url="http://127.0.0.1:4567",
        access_key="key",
        secret_key="secret with 'quotes'",
        config=config,
        bin_dir=tmp_path / "bin dir",
    )
    script = write_env(data_dir, env)
    assert script.read_text() == env_script(env)
    shown = subprocess.run(
        [
            "bash",
            "-c",
            'source "$1" && printf "%s\\n" "$AWS_ENDPOINT_URL" "$UPSTREAM_URL" '
            '"$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY" "$S3BATCHD_CONFIG" "${PATH%%:*}"',
            "-",
            str(script),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert shown == [
        "http://127.0.0.1:9123",
        "http://127.0.0.1:4567",
        "key",
        "secret with 'quotes'",
        str(config.absolute()),
        str(tmp_path / "bin dir"),
    ]


@pytest.mark.parametrize("command", ["ls", "extract"])
def test_read_commands_without_an_endpoint_refuse_to_go_to_aws(
    command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    target = ["out"] if command == "extract" else []
    status, output = run([command, "s3://demo/s3batchd/2026/01/01/b-000001.tar", *target])
    assert status == 1
    assert "no S3 endpoint: set upstream.endpoint_url" in output
    assert "Traceback" not in output
    assert list(tmp_path.iterdir()) == []


def test_reindex_without_settings_creates_no_spool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    status, output = run(["reindex", "s3://demo/s3batchd/"])
    assert status == 1
    assert "no catalog at spool/_catalog/catalog.sqlite3" in output
    assert "S3BATCHD_CONFIG" in output
    assert list(tmp_path.iterdir()) == []
    status, output = run(["reindex", "s3://demo/s3batchd/"], {"S3BATCHD_SPOOL__DIR": "elsewhere"})
    assert status == 1  # a configured catalog, but still no endpoint
    assert "no S3 endpoint" in output
    assert list(tmp_path.iterdir()) == []


def test_get_without_settings_creates_no_spool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    status, output = run(["get", "s3://demo/key"])
    assert status == 1
    assert "s3://demo/key is not in the catalog" in output
    assert "spool/_catalog/catalog.sqlite3" in output
    assert "S3BATCHD_CONFIG" in output
    assert list(tmp_path.iterdir()) == []


def test_get_names_the_catalog_and_endpoint_it_looked_in(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    Catalog(catalog_path(spool)).close()
    config = tmp_path / "config.toml"
    config.write_text(
        f'[spool]\ndir = "{spool}"\n[upstream]\nendpoint_url = "http://127.0.0.1:4567"\n'
    )
    status, output = run(["get", "s3://demo/missing"], {"S3BATCHD_CONFIG": str(config)})
    assert status == 1
    assert "s3://demo/missing is not in the catalog" in output
    assert str(catalog_path(spool)) in output
    assert "http://127.0.0.1:4567" in output


def test_the_daemon_ignores_the_endpoint_env_sh_exports(monkeypatch: pytest.MonkeyPatch) -> None:
    """A daemon started where env.sh was sourced: AWS_ENDPOINT_URL is the daemon itself, so
    an empty upstream.endpoint_url must still mean AWS, not a loop back to the daemon."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9000")
    settings = Settings()
    keys = Credentials("key", "secret")
    client = make_client(settings.upstream, settings.upload, keys)
    assert client.meta.endpoint_url == "https://s3.us-east-1.amazonaws.com"
    upstream = settings.upstream.model_copy(update={"endpoint_url": "http://127.0.0.1:4567"})
    assert make_client(upstream, settings.upload, keys).meta.endpoint_url == upstream.endpoint_url
