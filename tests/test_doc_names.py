"""The documents name only what the code has: settings, commands, metrics and error codes.

Every ``section.key`` of a known settings section, every ``s3batchd <command>`` in code (inline
or fenced), every ``s3batchd_*`` metric name and every S3 error code written as
``NNN Code`` or named as an error in backticks, in README.md, docs/*.md, deploy/README.md and
config.example.toml, is checked against the live code: the settings model, the click commands,
the metrics a running daemon exposes, and the S3Error classes. So a renamed or removed name
fails here until the documents follow, and names other parts add are known without a list.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel

from s3batchd import errors
from s3batchd.cli.main import main
from s3batchd.config import Settings
from tests.conftest import Daemon, DaemonFactory, wait_for

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = sorted(
    [
        ROOT / "README.md",
        ROOT / "deploy" / "README.md",
        ROOT / "config.example.toml",
        *(ROOT / "docs").glob("*.md"),
    ]
)
#: Codes the bucket (S3 or SeaweedFS) answers, which the documents quote as its answers
#: (forwarded to the client, or met by the uploader and the probe), not the daemon's own.
UPSTREAM_CODES = frozenset(
    {
        "NoSuchBucket",
        "NoSuchUpload",
        "InvalidBucketName",
        "ExpiredToken",
        "InvalidToken",
        "BucketAlreadyOwnedByYou",
    }
)
INLINE_CODE = re.compile(r"`([^`\n]+)`")
FENCE = re.compile(r"^ *```[^\n]*\n(.*?)^ *```", re.MULTILINE | re.DOTALL)
#: ``s3batchd <command> [<subcommand>]`` where a command line has it: at the start of a line
#: or code span, after variable assignments, ``$``, ``--``, ``exec``, ``sudo``, a pipe or
#: ``;``/``&&``, not in words quoted inside code (``used by another s3batchd process``).
COMMAND = re.compile(
    r"(?:^\s*|[;|&]\s*|\$\s+|--\s+|\bexec\s+|\bsudo\s+)(?:[A-Z_][A-Z0-9_]*=\S*\s+)*"
    r"s3batchd ([a-z][a-z-]*)(?: ([a-z][a-z-]*))?",
    re.MULTILINE,
)
#: How the settings quote a key they refuse: documents show it misspelled on purpose.
REFUSED_KEY = ": Extra inputs are not permitted"
METRIC = re.compile(r"\bs3batchd_[a-z0-9_]*[a-z0-9]")
STATUS_CODE = re.compile(r"^[45]\d\d ([A-Z][A-Za-z0-9]+)$")
ERROR_LIKE = re.compile(
    r"^(NoSuch\w+|Invalid[A-Z]\w*|Bad[A-Z]\w*|Missing[A-Z]\w*|\w+TooLarge|\w+TooSmall|"
    r"\w+Mismatch|\w+DoesNotMatch|SlowDown|AccessDenied|NotImplemented|RequestTimeout|"
    r"InternalError|ServiceUnavailable|PreconditionFailed|MalformedXML)$"
)
METRIC_SUFFIXES = ("", "_total", "_created", "_bucket", "_sum", "_count", "_info")


def code_spans(text: str) -> Iterator[str]:
    """Inline code and the contents of fenced blocks (a TOML file: its comments and keys)."""
    yield from (match.group(1) for match in FENCE.finditer(text))
    yield from (match.group(1) for match in INLINE_CODE.finditer(FENCE.sub("", text)))


def settings_names() -> dict[str, set[str]]:
    """Every settings section with its keys."""
    names: dict[str, set[str]] = {}
    for section, field in Settings.model_fields.items():
        model = field.annotation
        assert isinstance(model, type)
        assert issubclass(model, BaseModel)
        names[section] = set(model.model_fields)
    return names


def s3_error_codes() -> set[str]:
    """The ``code`` of every S3Error class."""
    found: set[str] = set()
    pending: list[type[errors.S3Error]] = [errors.S3Error]
    while pending:
        kind = pending.pop()
        pending.extend(kind.__subclasses__())
        code = getattr(kind, "code", None)
        if isinstance(code, str) and code:
            found.add(code)
    return found


def command_known(name: str, sub: str | None) -> bool:
    command = main.commands.get(name)
    if command is None:
        return False
    if isinstance(command, click.Group) and sub is not None:
        return sub in command.commands
    return True


def unknown_settings(text: str, sections: dict[str, set[str]]) -> set[str]:
    pattern = re.compile(rf"(?<![\w./-])({'|'.join(sections)})\.([a-z_][a-z0-9_]*)(?![\w(-])")
    return {
        f"{section}.{key}"
        for match in pattern.finditer(text)
        for section, key in [match.groups()]
        if key not in sections[section]
        and not text.startswith(REFUSED_KEY, match.end())
        and not text_is_file_name(f"{section}.{key}")
        and not module_attribute(section, key)
    }


def module_attribute(module: str, name: str) -> bool:
    """``spool.recover``-like words: a function of the module s3batchd/<section>.py, or of a
    module of the package s3batchd/<section>/ (or that module itself: ``upload.upstream``)."""
    try:
        found = importlib.import_module(f"s3batchd.{module}")
    except ImportError:
        return False
    if hasattr(found, name):
        return True
    modules = [info.name for info in pkgutil.iter_modules(getattr(found, "__path__", []))]
    return name in modules or any(
        hasattr(importlib.import_module(f"s3batchd.{module}.{sub}"), name) for sub in modules
    )


def text_is_file_name(name: str) -> bool:
    """``batch.tar``-like words: a section name followed by a file extension, not a key."""
    extensions = {"tar", "json", "toml", "py", "md", "yaml", "service", "sqlite3"}
    return name.rsplit(".", 1)[1] in extensions


def without_comments(code: str) -> str:
    """Code without shell comments and Python imports of the package (``from s3batchd
    import reader`` is not a command)."""
    lines = (re.sub(r"(^|\s)#.*", "", line) for line in code.splitlines())
    return "\n".join(line.replace("from s3batchd import", "") for line in lines)


def unknown_commands(text: str) -> set[str]:
    wrong: set[str] = set()
    for span in code_spans(text):
        for name, sub in COMMAND.findall(without_comments(span)):
            if not command_known(name, sub or None):
                wrong.add(f"s3batchd {name} {sub}".strip())
    return wrong


def unknown_error_codes(text: str, codes: set[str]) -> set[str]:
    wrong: set[str] = set()
    for span in INLINE_CODE.findall(text):
        status = STATUS_CODE.match(span)
        named = status.group(1) if status else span if ERROR_LIKE.match(span) else None
        if named is not None and named not in codes and named not in UPSTREAM_CODES:
            wrong.add(named)
    return wrong


@pytest.fixture(scope="module")
def documents() -> dict[str, str]:
    return {str(path.relative_to(ROOT)): path.read_text(encoding="utf-8") for path in DOCUMENTS}


def test_the_patterns_find_what_they_should() -> None:
    sections = {"batch": {"linger_ms"}, "spool": {"dir"}}
    text = (
        "`batch.linger_ms`, batch.lingr, <batch>.tar, spool.dir; `spool.dri`, spool.open(), "
        "`invalid settings: batch.linger: Extra inputs are not permitted`"
    )
    assert unknown_settings(text, sections) == {"batch.lingr", "spool.dri"}
    text = "run `s3batchd get s3://b/k` or\n```sh\ns3batchd nosuch --x\ns3batchd ls x\n```\n"
    assert unknown_commands(text) == {"s3batchd nosuch"}
    assert unknown_commands("s3batchd does not check it (prose)") == set()
    assert unknown_commands("```sh\nmake run  # s3batchd on port 9000\n```\n") == set()
    assert unknown_commands("`from s3batchd import reader`") == set()
    assert unknown_commands("`spool.dir: /x is used by another s3batchd process`") == set()
    text = "```sh\nS3BATCHD_X=1 s3batchd nosuch\nkubectl exec p -- \\\n    s3batchd nope\n```\n"
    assert unknown_commands(text) == {"s3batchd nosuch", "s3batchd nope"}
    assert unknown_commands("`sudo -u x s3batchd get s3://b/k | s3batchd typo`") == {
        "s3batchd typo"
    }
    text = "`503 SlowDown`, `404 NoSuchThing`, `BadDigestt`, `412 Precondition Failed`, `200 OK`"
    assert unknown_error_codes(text, {"SlowDown", "BadDigest"}) == {"NoSuchThing", "BadDigestt"}


def test_documents_name_only_existing_settings(documents: dict[str, str]) -> None:
    sections = settings_names()
    wrong = {name: unknown_settings(text, sections) for name, text in documents.items()}
    assert {name: found for name, found in wrong.items() if found} == {}


def test_documents_name_only_existing_commands(documents: dict[str, str]) -> None:
    wrong = {name: unknown_commands(text) for name, text in documents.items()}
    assert {name: found for name, found in wrong.items() if found} == {}


def test_documents_name_only_existing_error_codes(documents: dict[str, str]) -> None:
    codes = s3_error_codes()
    assert {"SlowDown", "EntityTooLarge", "NoSuchKey"} <= codes
    wrong = {name: unknown_error_codes(text, codes) for name, text in documents.items()}
    assert {name: found for name, found in wrong.items() if found} == {}


def exposed_metrics(daemon: Daemon) -> set[str]:
    with urllib.request.urlopen(daemon.admin_url + "/metrics", timeout=30) as answer:  # noqa: S310
        return {
            family.name + suffix
            for family in text_string_to_metric_families(answer.read().decode())
            for suffix in METRIC_SUFFIXES
        }


@pytest.fixture
def daemon(start_daemon: DaemonFactory) -> Daemon:
    """A daemon exposing every family: compaction's too (compaction.enabled; no pass runs)."""
    return start_daemon(compaction={"enabled": True})


def test_documents_name_only_exposed_metrics(
    documents: dict[str, str], daemon: Daemon, bucket: str
) -> None:
    # A daemon that has uploaded a batch: some gauges (s3batchd_upstream_up) are absent until
    # an upload or a probe has said something.
    daemon.client().put_object(Bucket=bucket, Key="k", Body=b"v")
    wait_for(lambda: "s3batchd_upstream_up" in exposed_metrics(daemon))
    exposed = exposed_metrics(daemon)
    assert "s3batchd_requests_total" in exposed
    wrong = {
        name: set(METRIC.findall(text)) - exposed
        for name, text in [*documents.items(), dashboard()]
    }
    assert {name: found for name, found in wrong.items() if found} == {}


def dashboard() -> tuple[str, str]:
    path = ROOT / "deploy" / "grafana" / "s3batchd-dashboard.json"
    return str(path.relative_to(ROOT)), path.read_text(encoding="utf-8")
