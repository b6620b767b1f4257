"""``s3batchd get`` and ``s3batchd reindex``: the catalog from the command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click
from botocore.exceptions import BotoCoreError, ClientError

from s3batchd.catalog import Catalog, CatalogEntry, default_path, entries_from_index
from s3batchd.config import Settings, load_settings
from s3batchd.errors import ConfigError
from s3batchd.objects import read_local
from s3batchd.reader import Location, ReaderError, get
from s3batchd.upstream import make_client

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

_CONFIG = click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="S3BATCHD_CONFIG",
    help="The daemon's TOML settings (for the catalog path and the upstream).",
)
_ENDPOINT = click.option("--endpoint-url", help="S3 endpoint (default: upstream.endpoint_url).")


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/key`` -> (bucket, key)."""
    if not url.startswith("s3://"):
        raise click.BadParameter(f"not an s3:// URL: {url}")
    bucket, _, key = url[5:].partition("/")
    if not bucket:
        raise click.BadParameter(f"no bucket in {url}")
    return bucket, key


def _settings(config_path: Path | None) -> Settings:
    try:
        return load_settings(config_path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc


def _client(settings: Settings, endpoint_url: str | None) -> S3Client:
    upstream = settings.upstream
    if endpoint_url:
        upstream = upstream.model_copy(update={"endpoint_url": endpoint_url})
    return make_client(upstream, settings.upload)


def _catalog(settings: Settings) -> Catalog:
    path = Path(settings.catalog.path) if settings.catalog.path else None
    return Catalog(path or default_path(settings.spool.dir))


@click.command("get")
@click.argument("url")
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write the object here (default: standard output).",
)
@_CONFIG
@_ENDPOINT
def get_command(
    url: str, output: Path | None, config_path: Path | None, endpoint_url: str | None
) -> None:
    """Fetch one object by key through the local catalog (one ranged GET of its tar)."""
    bucket, key = parse_s3_url(url)
    settings = _settings(config_path)
    catalog = _catalog(settings)
    try:
        entry = catalog.get(bucket, key)
    finally:
        catalog.close()
    if entry is None:
        raise click.ClickException(
            f"{url} is not in the catalog (written by another host, or older than "
            "catalog.retention_s): run `s3batchd reindex s3://BUCKET/PREFIX` first"
        )
    data = _local(settings.spool.dir, entry)
    if data is None:
        try:
            data = get(_client(settings, endpoint_url), _location(entry))
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
    return read_local(spool_dir, entry, 0, entry.record.size - 1)


@click.command("reindex")
@click.argument("url")
@_CONFIG
@_ENDPOINT
def reindex_command(url: str, config_path: Path | None, endpoint_url: str | None) -> None:
    """Rebuild the catalog from the index objects under s3://BUCKET/PREFIX."""
    bucket, prefix = parse_s3_url(url)
    settings = _settings(config_path)
    client = _client(settings, endpoint_url)
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
    catalog = _catalog(settings)
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
                objects += len(entries)
    except (ClientError, BotoCoreError, ValueError, KeyError) as exc:
        raise click.ClickException(f"cannot reindex {url}: {exc}") from exc
    finally:
        catalog.close()
    click.echo(f"{len(keys)} indexes, {objects} objects in the catalog {catalog.path}")
