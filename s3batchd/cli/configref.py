"""The configuration reference, ``docs/configuration.md``, generated from the settings model.

Sections, keys, types, constraints, defaults and descriptions all come from
``s3batchd/config.py`` (the field docstrings are the descriptions), so the reference cannot drift
from the code: ``tests/test_configref.py`` fails when the committed file differs from
:func:`render`. Regenerate it with::

    .venv/bin/python -m s3batchd.cli.configref > docs/configuration.md
"""

from __future__ import annotations

import inspect
import json
import re
import sys
import types
from pathlib import Path
from typing import Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from s3batchd.config import Settings
from s3batchd.constants import GB, KB, MB

COMMAND = ".venv/bin/python -m s3batchd.cli.configref > docs/configuration.md"

_HEADER = f"""\
<!-- Generated from s3batchd/config.py by s3batchd/cli/configref.py; do not edit by hand.
     Regenerate: {COMMAND} -->

# Configuration reference

Every setting of s3batchd, generated from the settings model in `s3batchd/config.py` (its
types, constraints, defaults and field docstrings), so this page cannot drift from the code.
[config.example.toml](../config.example.toml) holds the same keys set to their defaults, with the
S3 cost model behind the `[batch]` defaults; [operations.md](operations.md) shows how to size
the spool and choose the batch triggers.

## Where settings come from

| source | form | precedence |
|---|---|---|
| environment | `S3BATCHD_<SECTION>__<KEY>=value`, e.g. `S3BATCHD_SERVER__PORT=9001` | highest |
| TOML file | `s3batchd serve --config FILE`, or `S3BATCHD_CONFIG=FILE` | below the environment |
| defaults | the values below | lowest |

- Without `--config` / `S3BATCHD_CONFIG` only the environment and the defaults are used. A
  config path that does not exist is an error.
- Section and key are separated by two underscores; the names are case-insensitive. List
  values in the environment are JSON: `S3BATCHD_SERVER__VIRTUAL_HOST_DOMAINS='["localhost"]'`.
- Unknown keys are refused: an unknown section or key in the file, or
  `S3BATCHD_<SECTION>__<UNKNOWN>` for a known section in the environment, stops the daemon;
  the error suggests the closest valid name (`server.prot: Extra inputs are not permitted (did
  you mean server.port?)`).
- Any other `S3BATCHD_*` variable that names no setting (one underscore instead of two, as in
  `S3BATCHD_SERVER_PORT`, or no section, as in `S3BATCHD_LINGER_MS`) would be ignored by the
  settings: `serve` and `dev` log a warning naming it and the closest valid name
  (`S3BATCHD_SERVER_PORT matches no setting (did you mean S3BATCHD_SERVER__PORT?); ignored`),
  and `check-config` refuses it (exit status 2). `S3BATCHD_CONFIG` (the config file) is not a
  setting and not reported. Kubernetes sets `S3BATCHD_SERVICE_HOST`, `S3BATCHD_PORT`, ... in
  pods of a namespace with a Service named `s3batchd`; `enableServiceLinks: false` turns
  that off.
- Invalid values stop the daemon at start with `invalid settings: <section>.<key>: <reason>`
  (one line on stderr, exit status 2).
- `s3batchd check-config` validates the settings and prints them as the daemon would use them.
- `s3batchd dev` (what `make run` runs) ignores `--config` / `S3BATCHD_CONFIG`: it writes
  `server.port`, `spool.dir` and `upstream.endpoint_url` to `<data dir>/config.toml`, runs with
  that file plus the environment, and writes `<data dir>/env.sh`, which exports
  `S3BATCHD_CONFIG` (that file), the endpoints and credentials for a second shell.

Sizes are in bytes (1 KiB = 1,024 bytes, 1 MiB = 1,048,576 bytes, 1 GiB = 1,073,741,824
bytes); durations carry their unit in the key name (`_ms`, `_s`).
"""

_TABLE_HEAD = """\
| key | type | default | environment variable | meaning |
|---|---|---|---|---|"""

_DOC_LINK = re.compile(r"docs/([\w-]+\.md)(#[\w-]+)?")


def render() -> str:
    """The whole Markdown text of ``docs/configuration.md``."""
    parts = [_HEADER]
    for section, model in section_models().items():
        parts.append(_section(section, model, Settings.model_fields[section]))
    return "\n".join(parts)


def section_models() -> dict[str, type[BaseModel]]:
    """Every settings section's model, by section name, in declaration order."""
    models: dict[str, type[BaseModel]] = {}
    for section, field in Settings.model_fields.items():
        model = field.annotation
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise TypeError(f"settings section {section} is not a model: {model!r}")
        models[section] = model
    return models


def env_var(section: str, key: str) -> str:
    """The environment variable that overrides ``section.key``."""
    prefix = Settings.model_config.get("env_prefix", "")
    delimiter = Settings.model_config.get("env_nested_delimiter") or "__"
    return f"{prefix}{section}{delimiter}{key}".upper()


def describe_type(key: str, info: FieldInfo) -> str:
    """A reader's type of a field: ``integer, >= 0``, ``float, > 0``, the literal choices,
    ``path``, ``list of strings``..."""
    annotation = info.annotation
    optional = False
    if get_origin(annotation) in (Union, types.UnionType):
        members = [arg for arg in get_args(annotation) if arg is not type(None)]
        if len(members) != 1:
            raise TypeError(f"{key}: cannot describe {annotation!r}")
        annotation, optional = members[0], True
    words = [_base_type(key, annotation), *_constraints(key, info)]
    if optional:
        words.append("optional")
    return ", ".join(words)


def describe_default(key: str, info: FieldInfo) -> str:
    """The default as it would be written in the TOML file."""
    value = info.get_default(call_default_factory=True)
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if info.annotation is float and isinstance(value, int | float):
        return f"`{float(value)!r}`"
    if isinstance(value, int):
        size = _size(value) if _is_size(key) and value >= KB else None
        return f"`{value}`" + (f" ({size})" if size and size != str(value) else "")
    if isinstance(value, float):
        return f"`{value!r}`"
    if isinstance(value, str | Path):
        return f"`{json.dumps(str(value))}`"
    if isinstance(value, tuple | list):
        return f"`{json.dumps([str(item) for item in value])}`"
    raise TypeError(f"{key}: cannot describe the default {value!r}")


def describe(text: str | None) -> str:
    """A docstring as one Markdown table cell."""
    if not text:
        return ""
    cell = " ".join(inspect.cleandoc(text).split())
    cell = re.sub(r"``(.+?)``", r"`\1`", cell)
    cell = _DOC_LINK.sub(lambda m: f"[{m[1]}]({m[1]}{m[2] or ''})", cell)
    return cell.replace("|", "\\|")


def _section(section: str, model: type[BaseModel], field: FieldInfo) -> str:
    lines = [f"## `[{section}]`", ""]
    intro = field.description or model.__doc__
    if intro:
        lines += [describe(intro), ""]
    lines.append(_TABLE_HEAD)
    for key, info in model.model_fields.items():
        cells = [
            f"`{key}`",
            describe_type(key, info),
            describe_default(key, info),
            f"`{env_var(section, key)}`",
            describe(info.description),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _base_type(key: str, annotation: object) -> str:
    if get_origin(annotation) is Literal:
        choices = [f"`{json.dumps(choice)}`" for choice in get_args(annotation)]
        return choices[0] if len(choices) == 1 else ", ".join(choices[:-1]) + " or " + choices[-1]
    if get_origin(annotation) in (tuple, list):
        args = [arg for arg in get_args(annotation) if arg is not Ellipsis]
        if args == [str]:
            return "list of strings"
        if len(args) == 1 and isinstance(args[0], type) and issubclass(args[0], BaseModel):
            fields = ", ".join(f"`{name}`" for name in args[0].model_fields)
            return f"list of tables ({fields})"
    simple = {str: "string", int: "integer", float: "float", bool: "boolean", Path: "path"}
    if isinstance(annotation, type) and annotation in simple:
        return simple[annotation]
    raise TypeError(f"{key}: cannot describe the type {annotation!r}")


def _constraints(key: str, info: FieldInfo) -> list[str]:
    bounds: dict[str, object] = {}
    for item in info.metadata:
        if isinstance(item, annotated_types.Gt):
            bounds[">"] = item.gt
        elif isinstance(item, annotated_types.Ge):
            bounds[">="] = item.ge
        elif isinstance(item, annotated_types.Lt):
            bounds["<"] = item.lt
        elif isinstance(item, annotated_types.Le):
            bounds["<="] = item.le
        else:
            raise TypeError(f"{key}: cannot describe the constraint {item!r}")

    def show(value: object) -> str:
        return _size(value) if _is_size(key) and isinstance(value, int) else str(value)

    if ">=" in bounds and "<=" in bounds and len(bounds) == 2:
        return [f"{show(bounds['>='])} to {show(bounds['<='])}"]
    return [f"{symbol} {show(value)}" for symbol, value in bounds.items()]


def _is_size(key: str) -> bool:
    return key.endswith("bytes")


def _size(value: int) -> str:
    """``5 MiB`` for whole MiB or GiB, else the plain number."""
    for unit, name in ((GB, "GiB"), (MB, "MiB")):
        if value >= unit and value % unit == 0:
            return f"{value // unit} {name}"
    return str(value)


if __name__ == "__main__":
    sys.stdout.write(render())
