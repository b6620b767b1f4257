"""The documentation agrees with the code: config.example.toml, docs/configuration.md, README."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pytest
from pydantic import BaseModel

from s3batchd.config import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config.example.toml"
REFERENCE = ROOT / "docs" / "configuration.md"
README = ROOT / "README.md"


@pytest.fixture(autouse=True)
def no_settings_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the file and the defaults count, not the developer's S3BATCHD_* variables."""
    for name in list(os.environ):
        if name.startswith("S3BATCHD_"):
            monkeypatch.delenv(name)


def settings_keys() -> list[tuple[str, str]]:
    """Every (section, key) pair of Settings."""
    pairs: list[tuple[str, str]] = []
    for section, field in Settings.model_fields.items():
        model = field.annotation
        assert isinstance(model, type), section
        assert issubclass(model, BaseModel), section
        pairs.extend((section, key) for key in model.model_fields)
    return pairs


def test_settings_have_keys() -> None:
    keys = settings_keys()
    assert len(keys) > 10
    assert ("batch", "linger_ms") in keys


def test_example_config_equals_defaults() -> None:
    assert load_settings(EXAMPLE).model_dump() == Settings().model_dump()


def test_example_config_lists_every_key() -> None:
    document = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    listed = [(section, key) for section, values in document.items() for key in values]
    assert sorted(listed) == sorted(settings_keys())


def test_reference_lists_every_key() -> None:
    text = REFERENCE.read_text(encoding="utf-8")
    missing = [
        f"{section}.{key}"
        for section, key in settings_keys()
        if f"`{key}`" not in text or f"S3BATCHD_{section.upper()}__{key.upper()}" not in text
    ]
    assert not missing, f"not in {REFERENCE.name}: {missing}"
    for section in Settings.model_fields:
        assert f"## `[{section}]`" in text


def test_readme_starts_with_make_run_and_make_test() -> None:
    head = "\n".join(README.read_text(encoding="utf-8").splitlines()[:15])
    assert "make run" in head
    assert "make test" in head
