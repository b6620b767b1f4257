"""``s3batchd ls`` and ``s3batchd extract``: list and unpack a batch straight from the bucket.

Both read the real bucket (not the daemon) with the upstream settings: ``upstream.endpoint_url``
(or ``--endpoint-url``; without either they stop rather than go to AWS) and the AWS default
credential chain.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from datetime import datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

import click

from s3batchd.cli.options import CONFIG_OPTION, ENDPOINT_OPTION, cli_client, settings_or_exit
from s3batchd.reader import (
    IntegrityError,
    Location,
    NotABatchError,
    NotFoundError,
    ReaderError,
    Verifier,
    download,
    index_key_for,
    load_index,
    parse_s3_url,
    tar_key_for,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

T = TypeVar("T")

#: Batches with more objects than this get progress bars (on standard error).
PROGRESS_MIN_OBJECTS = 10
_CHUNK = 1 << 20


def _client(config_path: Path | None, endpoint_url: str | None) -> S3Client:
    return cli_client(settings_or_exit(config_path), endpoint_url)


def _target(url: str) -> tuple[str, str]:
    try:
        bucket, key = parse_s3_url(url)
        index_key_for(key)
    except ReaderError as exc:
        raise click.ClickException(
            f"{exc} (expected s3://BUCKET/<batch>.tar or s3://BUCKET/<batch>.index.json)"
        ) from exc
    return bucket, key


@contextmanager
def _clear_errors() -> Iterator[None]:
    """Reader failures as one-line click errors."""
    try:
        yield
    except NotFoundError as exc:
        raise click.ClickException(
            f"no such key: {exc} (a batch's index is uploaded last: is the batch complete?)"
        ) from exc
    except NotABatchError as exc:
        raise click.ClickException(f"not a batch: {exc}") from exc
    except ReaderError as exc:
        raise click.ClickException(str(exc)) from exc


def _index(client: S3Client, bucket: str, key: str) -> tuple[dict[str, Any], list[Location]]:
    """The index and the location of every object (in the tar the URL names)."""
    with _clear_errors():
        index = load_index(client, bucket, key)
        tar_key = tar_key_for(key)
        entries = index["objects"]
        tar = index.get("tar")
        if not isinstance(tar, dict) or not isinstance(tar.get("size"), int):
            raise NotABatchError(f"s3://{bucket}/{key}: the index has no tar size")
        for entry in entries:
            if not isinstance(entry.get("key"), str) or not entry["key"]:
                raise NotABatchError(f"s3://{bucket}/{key}: an index entry has no key")
        locations = [Location.from_index_entry(bucket, tar_key, entry) for entry in entries]
    return index, locations


def shown(key: str) -> str:
    """A key as one printable line: as is, or JSON-quoted when it has control characters,
    surrounding spaces or a leading quote, or cannot be encoded (one line is one object)."""
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(key)
    control = any(ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0 for ch in key)
    if control or key != key.strip() or key.startswith('"'):
        return json.dumps(key)
    return key


@click.command("ls")
@click.argument("url")
@click.option("--json", "as_json", is_flag=True, help="Print each index entry as a JSON line.")
@CONFIG_OPTION
@ENDPOINT_OPTION
def ls(url: str, as_json: bool, config_path: Path | None, endpoint_url: str | None) -> None:
    """List the objects of a batch: offset, length, ETag and key, one line each.

    URL is s3://BUCKET/<batch>.tar or s3://BUCKET/<batch>.index.json. Keys with control
    characters, surrounding spaces or a leading quote are printed JSON-quoted.
    """
    bucket, key = _target(url)
    index, _ = _index(_client(config_path, endpoint_url), bucket, key)
    for entry in index["objects"]:
        if as_json:
            click.echo(json.dumps(entry, separators=(",", ":")))
        else:
            click.echo(
                f"{entry['offset']:>12} {entry['length']:>12} {entry['etag']} {shown(entry['key'])}"
            )


@click.command("extract")
@click.argument("url")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False))
@CONFIG_OPTION
@ENDPOINT_OPTION
def extract(url: str, directory: Path, config_path: Path | None, endpoint_url: str | None) -> None:
    """Write every object of a batch to DIRECTORY/<key>, MD5 and checksums verified.

    URL is s3://BUCKET/<batch>.tar or s3://BUCKET/<batch>.index.json. The tar is downloaded
    with one GET into a temporary file in DIRECTORY. Keys that are absolute, contain NUL or
    empty, '.' or '..' components (including a trailing '/') are not written: they are reported
    on standard error and the exit status is 1. Symbolic links in DIRECTORY are never followed
    and only regular files are written (an existing file is replaced). A key stored twice ends
    with its last version, as in S3.
    """
    bucket, key = _target(url)
    client = _client(config_path, endpoint_url)
    index, locations = _index(client, bucket, key)
    tar_key = tar_key_for(key)
    entries: list[dict[str, Any]] = index["objects"]
    problems: list[str] = []
    try:
        written = _extract_all(client, bucket, tar_key, index, locations, directory, problems)
    except OSError as exc:
        raise click.ClickException(f"cannot write into {directory}: {exc}") from exc
    for problem in problems:
        click.echo(problem, err=True)
    click.echo(f"extracted {written} of {len(entries)} objects into {directory}")
    if problems:
        sys.exit(1)


def _extract_all(
    client: S3Client,
    bucket: str,
    tar_key: str,
    index: dict[str, Any],
    locations: list[Location],
    directory: Path,
    problems: list[str],
) -> int:
    """Download the tar and write its objects; the number written (problems appended)."""
    entries: list[dict[str, Any]] = index["objects"]
    verbose = len(entries) > PROGRESS_MIN_OBJECTS
    written = 0
    directory.mkdir(parents=True, exist_ok=True)
    root = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        with tempfile.TemporaryFile(dir=directory) as tar:
            _download(client, bucket, tar_key, tar, index, verbose=verbose)
            pairs = list(zip(entries, locations, strict=True))
            with _progress(pairs, "extracting", verbose=verbose) as progress:
                for entry, location in progress:
                    problem = _extract_one(tar, root, entry, location)
                    if problem is None:
                        written += 1
                    else:
                        problems.append(f"skipped {shown(entry['key'])}: {problem}")
    finally:
        os.close(root)
    return written


@contextmanager
def _progress(items: list[T], label: str, *, verbose: bool) -> Iterator[Iterable[T]]:
    """A progress bar on standard error over ``items`` when ``verbose``, else just them."""
    if not verbose:
        yield items
        return
    with click.progressbar(items, label=label, file=sys.stderr) as bar:
        yield bar


def _download(
    client: S3Client,
    bucket: str,
    tar_key: str,
    tar: IO[bytes],
    index: dict[str, Any],
    *,
    verbose: bool,
) -> None:
    expected: int = index["tar"]["size"]
    with _clear_errors():
        if verbose:
            with click.progressbar(length=expected, label="downloading", file=sys.stderr) as bar:
                size = download(client, bucket, tar_key, tar, progress=bar.update)
        else:
            size = download(client, bucket, tar_key, tar)
    if size != expected:
        raise click.ClickException(
            f"s3://{bucket}/{tar_key} has {size} bytes, its index says {expected}"
        )


def unsafe_reason(key: str) -> str | None:
    """Why ``key`` cannot be written as a path under the target directory, or None."""
    if "\0" in key:
        return "contains NUL"
    if key.startswith("/"):
        return "absolute path"
    parts = key.split("/")
    if ".." in parts:
        return "'..' component"
    if "" in parts or "." in parts:
        return "empty or '.' component (not a plain relative file path)"
    return None


def _extract_one(
    tar: IO[bytes], root: int, entry: dict[str, Any], location: Location
) -> str | None:
    """Write one object under ``root``; what went wrong, or None."""
    key: str = entry["key"]
    reason = unsafe_reason(key)
    if reason is not None:
        return reason
    *parents, name = key.split("/")
    try:
        parent = _open_dirs(root, parents)
    except OSError as exc:
        return f"cannot create its directory ({exc.strerror}; a symlink or file in the way?)"
    try:
        return _write_file(tar, parent, name, location, entry.get("last_modified"))
    except OSError as exc:
        return f"cannot write it ({exc.strerror})"
    finally:
        os.close(parent)


def _open_dirs(root: int, parts: list[str]) -> int:
    """A descriptor of root/<parts...>, creating directories and never following a link."""
    fd = os.dup(root)
    try:
        for part in parts:
            with suppress(FileExistsError):
                os.mkdir(part, 0o755, dir_fd=fd)
            child = os.open(
                part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd
            )
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _write_file(
    tar: IO[bytes], parent: int, name: str, location: Location, last_modified: object
) -> str | None:
    """Copy the object's bytes to a new temporary file beside ``name``, verify them, and
    rename it over ``name`` (which replaces a file or link there, never writes through it)."""
    temporary = f".s3batchd-extract-{secrets.token_hex(8)}"
    fd = os.open(
        temporary,
        os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
        0o644,
        dir_fd=parent,
    )
    keep = False
    try:
        checker = Verifier(location)
        tar.seek(location.offset)
        remaining = location.length
        while remaining:
            chunk = tar.read(min(remaining, _CHUNK))
            if not chunk:
                break
            checker.update(chunk)
            _write_all(fd, chunk)
            remaining -= len(chunk)
        try:
            checker.check()
        except IntegrityError as exc:
            return f"corrupt: {exc}"
        mtime = _timestamp(last_modified)
        if mtime is not None:
            os.utime(fd, (mtime, mtime))
        os.rename(temporary, name, src_dir_fd=parent, dst_dir_fd=parent)
        keep = True
    finally:
        os.close(fd)
        if not keep:
            os.unlink(temporary, dir_fd=parent)
    return None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _timestamp(value: object) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None
