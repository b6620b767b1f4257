"""Settings: defaults, a TOML file, environment overrides and errors that name the field."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from s3batchd.config import (
    ServerConfig,
    Settings,
    UpstreamConfig,
    is_loopback,
    load_settings,
    unknown_variables,
)
from s3batchd.constants import MB
from s3batchd.errors import ConfigError

CONFIG = """
[server]
host = "127.0.0.2"
port = 9002

[batch]
linger_ms = 250
max_records = 500

[spool]
dir = "/var/spool/s3batchd"
durability = "none"

[upstream]
prefix = "batches"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults() -> None:
    settings = load_settings()
    assert settings == Settings()
    assert settings.server.host == "127.0.0.1"
    assert settings.server.port == 9000
    assert settings.server.virtual_host_domains == ("localhost",)
    assert settings.spool.dir == Path("./spool")
    assert settings.spool.durability == "fsync"
    assert settings.batch.linger_ms == 2_000
    assert settings.batch.max_records == 10_000
    assert settings.batch.max_bytes == 64 * MB
    assert settings.upstream.prefix == "s3batchd/"
    assert settings.upstream.endpoint_url == ""
    assert settings.upload.multipart_threshold_bytes == 16 * MB
    assert settings.upload.part_size_bytes == 8 * MB
    assert settings.limits.max_object_bytes == 16 * MB
    assert settings.log.level == "INFO"


def test_file_values(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, CONFIG))
    assert settings.server.host == "127.0.0.2"
    assert settings.server.port == 9002
    assert settings.batch.linger_ms == 250
    assert settings.batch.max_records == 500
    assert settings.batch.max_bytes == 64 * MB  # not in the file: default
    assert settings.spool.dir == Path("/var/spool/s3batchd")
    assert settings.spool.durability == "none"
    assert settings.upstream.prefix == "batches/"
    assert settings.upload == Settings().upload


def test_env_overrides_one_nested_key_and_file_siblings_survive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("S3BATCHD_SERVER__PORT", "9001")
    settings = load_settings(write(tmp_path, CONFIG))
    assert settings.server.port == 9001
    assert settings.server.host == "127.0.0.2"  # same table as the override
    assert settings.batch.linger_ms == 250
    assert settings.batch.max_records == 500
    assert settings.spool.durability == "none"


def test_env_alone_overrides_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("S3BATCHD_BATCH__LINGER_MS", "75")
    monkeypatch.setenv("s3batchd_spool__durability", "none")  # the prefix is case-insensitive
    settings = load_settings()
    assert settings.batch.linger_ms == 75
    assert settings.batch.max_records == 10_000
    assert settings.spool.durability == "none"


def test_unknown_top_level_env_variables_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("S3BATCHD_NOT_A_SETTING", "1")
    assert load_settings() == Settings()


def test_unknown_key_in_a_section_env_variable_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("S3BATCHD_BATCH__LINGER", "1")  # a typo of LINGER_MS
    with pytest.raises(ConfigError, match=r"\bbatch\.linger\b"):
        load_settings()


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("[batch]\nlinger = 3\n", "batch.linger"),
        ("[server]\nprot = 9000\n", "server.prot"),
        ("bogus = 1\n", "bogus"),
        ("[nosuchsection]\nx = 1\n", "nosuchsection"),
    ],
)
def test_unknown_key_in_file_is_an_error_naming_it(tmp_path: Path, text: str, field: str) -> None:
    with pytest.raises(ConfigError, match=rf"\b{field}\b"):
        load_settings(write(tmp_path, text))


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("[batch]\nlinger_ms = -1\n", "batch.linger_ms"),
        ("[batch]\nlinger_ms = 0\n", "batch.linger_ms"),
        ("[batch]\nmax_bytes = 100\n", "batch.max_bytes"),
        ('[spool]\ndurability = "maybe"\n', "spool.durability"),
        ("[server]\nport = 70000\n", "server.port"),
        ('[server]\nport = "nine"\n', "server.port"),
        ("[upload]\npart_size_bytes = 1024\n", "upload.part_size_bytes"),
        ('[log]\nlevel = "LOUD"\n', "log.level"),
        ('[upstream]\nprefix = "/rooted"\n', "upstream.prefix"),
    ],
)
def test_invalid_value_in_file_is_an_error_naming_it(tmp_path: Path, text: str, field: str) -> None:
    with pytest.raises(ConfigError, match=rf"\b{field}\b") as caught:
        load_settings(write(tmp_path, text))
    assert "invalid settings" in str(caught.value)


@pytest.mark.parametrize(
    ("name", "value", "field"),
    [
        ("S3BATCHD_BATCH__LINGER_MS", "-5", "batch.linger_ms"),
        ("S3BATCHD_SPOOL__DURABILITY", "maybe", "spool.durability"),
        ("S3BATCHD_SERVER__PORT", "port", "server.port"),
    ],
)
def test_invalid_env_value_is_an_error_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, value: str, field: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=rf"\b{field}\b"):
        load_settings()
    with pytest.raises(ConfigError, match=rf"\b{field}\b"):
        load_settings(write(tmp_path, CONFIG))


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="not found") as caught:
        load_settings(missing)
    assert str(missing) in str(caught.value)
    with pytest.raises(ConfigError):
        load_settings(tmp_path)  # a directory is not a config file


def test_unreadable_file_is_an_error() -> None:
    # A regular file whose read fails (EIO) stands in for a permission problem, which root
    # (running these tests in a container) would not see.
    with pytest.raises(ConfigError, match="cannot read config file /proc/self/mem"):
        load_settings(Path("/proc/self/mem"))


def test_malformed_toml_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "[batch\nlinger_ms = 1\n")
    with pytest.raises(ConfigError, match=str(path)):
        load_settings(path)


@pytest.mark.parametrize(
    ("given", "normalised"),
    [
        ("batches", "batches/"),
        ("batches/", "batches/"),
        ("a/b/c", "a/b/c/"),
        ("a/b/c/", "a/b/c/"),
        ("", ""),
    ],
)
def test_upstream_prefix_normalisation(tmp_path: Path, given: str, normalised: str) -> None:
    assert UpstreamConfig(prefix=given).prefix == normalised
    settings = load_settings(write(tmp_path, f'[upstream]\nprefix = "{given}"\n'))
    assert settings.upstream.prefix == normalised


def test_virtual_host_domains_are_normalised(tmp_path: Path) -> None:
    server = ServerConfig(virtual_host_domains=("S3.Example.COM.", "localhost"))
    assert server.virtual_host_domains == ("s3.example.com", "localhost")
    path = write(tmp_path, '[server]\nvirtual_host_domains = [".Sidecar.LOCAL"]\n')
    assert load_settings(path).server.virtual_host_domains == ("sidecar.local",)


def test_settings_are_immutable() -> None:
    settings = Settings()
    with pytest.raises(ValueError, match="frozen"):
        settings.batch.linger_ms = 5


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.10", False),
        ("example.com", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


#: Ports of the Prometheus wiki's "Default port allocations": Prometheus's own components
#: (9090-9094) and the exporters from 9100 on, a range that was fully allocated by 2023.
PROMETHEUS_PORTS = range(9090, 10000)


def test_admin_port_default_is_no_exporter_port() -> None:
    # 9100 is node_exporter's: on a host or host-network pod running it the daemon could not
    # start with its defaults.
    admin_port = Settings().server.admin_port
    assert admin_port not in PROMETHEUS_PORTS
    assert admin_port != Settings().server.port


@pytest.mark.parametrize(
    ("text", "suggestion"),
    [
        ("[server]\nprot = 9000\n", "server.port"),
        ("[batch]\nlinger = 3\n", "batch.linger_ms"),
        ("[sever]\nport = 9000\n", "server"),
        ("[upload]\nchild_process = true\n", "upload.child_processes"),
    ],
)
def test_unknown_key_in_file_suggests_the_closest_name(
    tmp_path: Path, text: str, suggestion: str
) -> None:
    with pytest.raises(ConfigError, match=rf"\(did you mean {re.escape(suggestion)}\?\)"):
        load_settings(write(tmp_path, text))


def test_unknown_key_in_a_section_env_variable_suggests_the_closest_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("S3BATCHD_BATCH__LINGERMS", "1")
    with pytest.raises(
        ConfigError, match=r"batch\.lingerms: .*\(did you mean batch\.linger_ms\?\)"
    ):
        load_settings()


def test_unknown_key_without_a_close_name_suggests_nothing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, "[server]\nzzzzzz = 1\n"))
    assert "did you mean" not in str(caught.value)


def test_environment_variables_that_name_no_setting() -> None:
    environ = {
        "S3BATCHD_SERVER_PORT": "9001",  # one underscore: no setting
        "S3BATCHD_BATCH": '{"linger_ms": 5}',  # a whole section as JSON: a setting
        "S3BATCHD_BATCH__LINGER_MS": "5",
        "s3batchd_spool__dir": "spool",  # case-insensitive
        "S3BATCHD_CONFIG": "/etc/s3batchd.toml",  # the --config option
        "S3BATCHD_LINGER_MS": "5",
        "S3BATCHD_XYZZY": "1",
        "OTHER_VARIABLE": "1",
    }
    assert unknown_variables(environ) == [
        "S3BATCHD_LINGER_MS matches no setting (did you mean S3BATCHD_BATCH__LINGER_MS?)",
        "S3BATCHD_SERVER_PORT matches no setting (did you mean S3BATCHD_SERVER__PORT?)",
        "S3BATCHD_XYZZY matches no setting",
    ]


def test_compaction_settings_have_the_issue_defaults() -> None:
    from s3batchd.config import CompactionConfig

    config = CompactionConfig()
    assert (config.enabled, config.min_dead_ratio, config.erase_within_s, config.grace_s) == (
        False,
        0.3,
        86400.0,
        3600.0,
    )
    assert CompactionConfig(enabled=True).enabled
    with pytest.raises(ValueError, match="min_dead_ratio"):
        CompactionConfig(min_dead_ratio=0)
