"""The command line: config loading, refusal messages, exit statuses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from s3batchd.cli import main


def run(args: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(main, args, env=env)
    return result.exit_code, result.output


def test_check_config_reads_file_and_env(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[server]\nport = 9100\n[batch]\nlinger_ms = 50\n[upstream]\nprefix = "p"\n')
    status, output = run(
        ["check-config"], env={"S3BATCHD_CONFIG": str(config), "S3BATCHD_SERVER__PORT": "9001"}
    )
    assert status == 0, output
    settings = json.loads(output)
    assert settings["server"]["port"] == 9001  # the environment wins for its one key
    assert settings["batch"]["linger_ms"] == 50  # the file keeps the others
    assert settings["upstream"]["prefix"] == "p/"


@pytest.mark.parametrize(
    ("toml", "field"),
    [
        ("[batch]\nlinger = 3\n", "batch.linger"),
        ("[batch]\nlinger_ms = -1\n", "batch.linger_ms"),
        ('[spool]\ndurability = "maybe"\n', "spool.durability"),
        ("[nosuch]\nx = 1\n", "nosuch"),
    ],
)
def test_bad_settings_are_refused_naming_the_field(tmp_path: Path, toml: str, field: str) -> None:
    config = tmp_path / "c.toml"
    config.write_text(toml)
    status, output = run(["serve", "--config", str(config)])
    assert status != 0
    assert field in output


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    status, output = run(["serve", "--config", str(tmp_path / "absent.toml")])
    assert status != 0
    assert "config file not found" in output


def test_non_loopback_without_auth_is_refused() -> None:
    status, output = run(["check-config"], env={"S3BATCHD_SERVER__HOST": "0.0.0.0"})
    assert status != 0
    assert "refusing to listen on 0.0.0.0" in output
