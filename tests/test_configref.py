"""docs/configuration.md is generated from the settings model and kept up to date."""

from __future__ import annotations

import difflib
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

from s3batchd.cli.configref import (
    COMMAND,
    describe_default,
    describe_type,
    env_var,
    render,
    section_models,
)
from s3batchd.config import LimitsConfig, ServerConfig, SpoolConfig, UpstreamConfig

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "docs" / "configuration.md"


def test_committed_reference_is_generated_from_the_model() -> None:
    expected = render()
    committed = REFERENCE.read_text(encoding="utf-8")
    diff = "".join(
        list(
            difflib.unified_diff(
                committed.splitlines(keepends=True),
                expected.splitlines(keepends=True),
                "docs/configuration.md (committed)",
                "render()",
            )
        )[:40]
    )
    assert committed == expected, (
        f"docs/configuration.md is out of date; regenerate it with `{COMMAND}`\n{diff}"
    )


def test_every_field_has_a_description() -> None:
    missing = [
        f"{section}.{key}"
        for section, model in section_models().items()
        for key, info in model.model_fields.items()
        if not (info.description or "").strip()
    ]
    assert not missing, f"settings without a docstring: {missing}"


def test_every_section_has_a_description() -> None:
    assert all((model.__doc__ or "").strip() for model in section_models().values())


def test_generated_note_comes_first() -> None:
    text = render()
    assert text.startswith("<!--")
    assert COMMAND in text.split("-->", 1)[0]
    assert "make" not in text.split("-->", 1)[0].split()


@pytest.mark.parametrize(
    ("model", "key", "expected"),
    [
        (ServerConfig, "port", "integer, 0 to 65535"),
        (ServerConfig, "keep_alive_s", "integer, > 0"),
        (LimitsConfig, "memory_buffer_bytes", "integer, >= 0"),
        (LimitsConfig, "max_object_bytes", "integer, > 0, <= 5 GiB"),
        (SpoolConfig, "max_bytes", "integer, >= 1 MiB"),
        (UpstreamConfig, "connect_timeout_s", "float, > 0"),
        (SpoolConfig, "durability", '`"none"`, `"fsync"` or `"upload"`'),
        (SpoolConfig, "dir", "path"),
        (UpstreamConfig, "probe_buckets", "list of strings"),
    ],
)
def test_types_are_readable(model: type[BaseModel], key: str, expected: str) -> None:
    assert describe_type(key, model.model_fields[key]) == expected


@pytest.mark.parametrize(
    ("model", "key", "expected"),
    [
        (ServerConfig, "host", '`"127.0.0.1"`'),
        (SpoolConfig, "max_bytes", "`4294967296` (4 GiB)"),
        (UpstreamConfig, "connect_timeout_s", "`5.0`"),
        (ServerConfig, "virtual_host_domains", '`["localhost"]`'),
        (UpstreamConfig, "probe_buckets", "`[]`"),
    ],
)
def test_defaults_are_written_as_in_toml(model: type[BaseModel], key: str, expected: str) -> None:
    assert describe_default(key, model.model_fields[key]) == expected


def test_environment_variable_names() -> None:
    assert env_var("batch", "linger_ms") == "S3BATCHD_BATCH__LINGER_MS"


def test_module_prints_the_reference() -> None:
    answer = subprocess.run(
        [sys.executable, "-m", "s3batchd.cli.configref"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    assert answer.stdout == render()
