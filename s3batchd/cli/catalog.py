"""``s3batchd get`` and ``s3batchd reindex``: the catalog from the command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click
from botocore.exceptions import BotoCoreError, ClientError

from s3batchd.catalog.store import Catalog, CatalogEntry, catalog_path, entries_from_index
from s3batchd.cli.options import (
    CONFIG_OPTION,
    ENDPOINT_OPTION,
    cli_client,
    endpoint,
    settings_or_exit,
)
from s3batchd.config import Settings
from s3batchd.errors import CorruptObject
from s3batchd.handlers.get import read_local
from s3batchd.reader import Location, ReaderError, get
from s3batchd.server.workers import WORKERS_DIR

if TYPE_CHECKING:
    pass


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/key`` -> (bucket, key)."""
    if not url.startswith("s3://"):
        raise click.BadParameter(f"not an s3:// URL: {url}")
    bucket, _, key = url[5:].partition("/")
    if not bucket:
        raise click.BadParameter(f"no bucket in {url}")
    return bucket, key


def _catalog_path(settings: Settings) -> Path:
    return catalog_path(settings.spool.dir, settings.catalog.path)


def _configured(settings: Settings) -> bool:
    """Whether the settings name the catalog's place (else it is ./spool, a default that a
    command run without S3BATCHD_CONFIG must not create in the working directory)."""
    return bool(settings.catalog.path) or "dir" in settings.spool.model_fields_set


_POINT_AT_DAEMON = "point S3BATCHD_CONFIG (or --config) at the daemon's settings"


@click.command("get")
@click.argument("url")
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write the object here (default: standard output).",
)
@CONFIG_OPTION
@ENDPOINT_OPTION
def get_command(
    url: str, output: Path | None, config_path: Path | None, endpoint_url: str | None
) -> None:
    """Fetch one object by key through the local catalog (one ranged GET of its tar)."""
    bucket, key = parse_s3_url(url)
    settings = settings_or_exit(config_path)
    path = _catalog_path(settings)
    looked = f"looked in the catalog {path}, endpoint {endpoint(settings, endpoint_url) or 'none'}"
    if not path.is_file():
        raise click.ClickException(
            f"{url} is not in the catalog: there is none at {path} ({_POINT_AT_DAEMON}, "
            "or run `s3batchd reindex s3://BUCKET/PREFIX` with catalog.path set)"
        )
    catalog = Catalog(path)
    try:
        entry = catalog.get(bucket, key)
    finally:
        catalog.close()
    if entry is None:
        raise click.ClickException(
            f"{url} is not in the catalog ({looked}): written by another host, or older than "
            "catalog.retention_s: run `s3batchd reindex s3://BUCKET/PREFIX` first"
        )
    try:
        data = _local(settings.spool.dir, entry)
    except CorruptObject as exc:
        raise click.ClickException(f"cannot read {url}: {exc}") from exc
    if data is None:
        try:
            data = get(cli_client(settings, endpoint_url), _location(entry))
        except ReaderError as exc:
            raise click.ClickException(f"cannot read {url}: {exc}") from exc
    if output is None:
        sys.stdout.buffer.write(data)
    else:
        output.write_bytes(data)


def _location(entry: CatalogEntry) -> Location:
    record = entry.record
    return Location(
        bucket=entry.bucket,
        tar_key=entry.tar_key,
        offset=entry.offset,
        length=record.size,
        etag=record.etag,
        checksums=dict(record.checksums),
    )


def _local(spool_dir: Path, entry: CatalogEntry) -> bytes | None:
    """The object from a batch still in the spool (not uploaded yet), if there."""
    if entry.uploaded:
        return None
    workers = spool_dir / WORKERS_DIR
    others = tuple(sorted(workers.iterdir())) if workers.is_dir() else ()
    return read_local((spool_dir, *others), entry, 0, entry.record.size - 1)


@click.command("reindex")
@click.argument("url")
@CONFIG_OPTION
@ENDPOINT_OPTION
def reindex_command(url: str, config_path: Path | None, endpoint_url: str | None) -> None:
    """Rebuild the catalog from the index objects under s3://BUCKET/PREFIX."""
    bucket, prefix = parse_s3_url(url)
    settings = settings_or_exit(config_path)
    path = _catalog_path(settings)
    if not path.is_file() and not _configured(settings):
        raise click.ClickException(f"no catalog at {path}: {_POINT_AT_DAEMON}, or set catalog.path")
    client = cli_client(settings, endpoint_url)
    try:
        keys = [
            item["Key"]
            for page in client.get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=prefix
            )
            for item in page.get("Contents", [])
            if item["Key"].endswith(".index.json")
        ]
    except (ClientError, BotoCoreError) as exc:
        raise click.ClickException(f"cannot list {url}: {exc}") from exc
    catalog = Catalog(path)
    objects = 0
    try:
        with click.progressbar(keys, label="reading indexes", file=sys.stderr) as progress:
            for key in progress:
                body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
                document = json.loads(body)
                entries = entries_from_index(document)
                catalog.put_many(
                    bucket, document["batch_id"], document["tar"]["key"], entries, uploaded=True
                )
                objects += sum(
                    1 for e in entries if not e.record.deleted and e.record.update_of is None
                )
    except (ClientError, BotoCoreError, ValueError, KeyError) as exc:
        raise click.ClickException(f"cannot reindex {url}: {exc}") from exc
    finally:
        catalog.close()
    click.echo(f"{len(keys)} indexes, {objects} objects in the catalog {catalog.path}")
