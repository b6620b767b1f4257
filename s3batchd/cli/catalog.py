"""``s3batchd get``, ``s3batchd reindex`` and ``s3batchd catalog migrate``: the catalog from the
command line."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click
from botocore.exceptions import BotoCoreError, ClientError

from s3batchd.catalog.postgres import SCHEMA_VERSION, PostgresCatalog, SharedAnswer
from s3batchd.catalog.shared import newest
from s3batchd.catalog.store import Catalog, CatalogEntry, catalog_path
from s3batchd.cli.options import (
    CONFIG_OPTION,
    ENDPOINT_OPTION,
    cli_client,
    endpoint,
    settings_or_exit,
    spools,
)
from s3batchd.config import Settings
from s3batchd.errors import CatalogUnavailable, CorruptObject
from s3batchd.handlers.get import read_local
from s3batchd.index import INDEX_SUFFIX, IndexEntry
from s3batchd.reader import Location, ReaderError, get, load_index, parse_s3_url

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


def _bucket_and_key(url: str) -> tuple[str, str]:
    """``s3://bucket[/key or prefix]`` -> (bucket, key), as the reader parses it; a usage error
    otherwise."""
    try:
        return parse_s3_url(url, prefix=True)
    except ReaderError as exc:
        raise click.BadParameter(str(exc)) from exc


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
    """Fetch one object by key through the local catalog, and the PostgreSQL one with
    ``catalog.backend = "postgres"`` (one ranged GET of its tar)."""
    bucket, key = _bucket_and_key(url)
    settings = settings_or_exit(config_path)
    path = _catalog_path(settings)
    shared = settings.catalog.backend == "postgres"
    looked = f"looked in the catalog {path}, endpoint {endpoint(settings, endpoint_url) or 'none'}"
    if not path.is_file() and not shared:
        raise click.ClickException(
            f"{url} is not in the catalog: there is none at {path} ({_POINT_AT_DAEMON}, "
            "or run `s3batchd reindex s3://BUCKET/PREFIX` with catalog.path set)"
        )
    entry, deleted = None, None
    if path.is_file():
        catalog = Catalog(path)
        try:
            entry, deleted = catalog.get(bucket, key), catalog.tombstone(bucket, key)
        finally:
            catalog.close()
    if shared:
        looked += " and the PostgreSQL catalog"
        try:
            answer = asyncio.run(_shared_get(settings, bucket, key))
        except CatalogUnavailable as exc:
            raise click.ClickException(f"cannot look {url} up: {exc}") from exc
        entry = newest(entry, deleted, answer)
    if entry is None:
        raise click.ClickException(
            f"{url} is not in the catalog ({looked}): written by another host, or older than "
            "catalog.retention_s: run `s3batchd reindex s3://BUCKET/PREFIX` first"
        )
    try:
        data = _local(settings, entry)
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


def _local(settings: Settings, entry: CatalogEntry) -> bytes | None:
    """The object from a batch still in the spool (not uploaded yet), if there."""
    if entry.uploaded:
        return None
    return read_local(tuple(spools(settings)), entry, 0, entry.record.size - 1)


@click.command("reindex")
@click.argument("url")
@CONFIG_OPTION
@ENDPOINT_OPTION
def reindex_command(url: str, config_path: Path | None, endpoint_url: str | None) -> None:
    """Rebuild the catalog from the index objects under s3://BUCKET/PREFIX (the SQLite
    catalog of the daemon's settings, or the PostgreSQL one with catalog.backend = "postgres")."""
    bucket, prefix = _bucket_and_key(url)
    settings = settings_or_exit(config_path)
    path = _catalog_path(settings)
    shared = settings.catalog.backend == "postgres"
    if not shared and not path.is_file() and not _configured(settings):
        raise click.ClickException(f"no catalog at {path}: {_POINT_AT_DAEMON}, or set catalog.path")
    client = cli_client(settings, endpoint_url)
    try:
        keys = [
            item["Key"]
            for page in client.get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=prefix
            )
            for item in page.get("Contents", [])
            if item["Key"].endswith(INDEX_SUFFIX)
        ]
    except (ClientError, BotoCoreError) as exc:
        raise click.ClickException(f"cannot list {url}: {exc}") from exc
    if shared:
        objects = asyncio.run(_reindex_shared(settings, client, bucket, keys))
        click.echo(f"{len(keys)} indexes, {objects} objects in the PostgreSQL catalog")
        return
    catalog = Catalog(path)
    objects = 0
    try:
        with click.progressbar(keys, label="reading indexes", file=sys.stderr) as progress:
            for key in progress:
                entries = catalog.put_index(bucket, load_index(client, bucket, key))
                objects += _objects(entries)
    except ReaderError as exc:
        raise click.ClickException(f"cannot reindex {url}: {exc}") from exc
    finally:
        catalog.close()
    click.echo(f"{len(keys)} indexes, {objects} objects in the catalog {catalog.path}")


def _objects(entries: list[IndexEntry]) -> int:
    return sum(1 for e in entries if not e.record.deleted and e.record.update_of is None)


async def _reindex_shared(
    settings: Settings, client: S3Client, bucket: str, keys: list[str]
) -> int:
    """Write every index of ``keys`` into the PostgreSQL catalog (one statement each);
    the objects written."""
    catalog = postgres_catalog(settings)
    objects = 0
    try:
        await catalog.migrate()
        with click.progressbar(keys, label="reading indexes", file=sys.stderr) as progress:
            for key in progress:
                entries = await catalog.put_index(bucket, load_index(client, bucket, key))
                objects += _objects(entries)
    except (ReaderError, CatalogUnavailable) as exc:
        raise click.ClickException(f"cannot reindex s3://{bucket}: {exc}") from exc
    finally:
        await catalog.close()
    return objects


async def _shared_get(settings: Settings, bucket: str, key: str) -> SharedAnswer:
    catalog = postgres_catalog(settings)
    try:
        return await catalog.get(bucket, key)
    finally:
        await catalog.close()


def postgres_catalog(settings: Settings) -> PostgresCatalog:
    """The fleet's catalog of ``settings`` (``catalog.backend = "postgres"``)."""
    return PostgresCatalog(
        settings.catalog.dsn.get_secret_value(), timeout_s=settings.catalog.postgres_timeout_s
    )


@click.group("catalog")
def catalog_group() -> None:
    """The catalog's schema (catalog.backend = "postgres")."""


@catalog_group.command("migrate")
@CONFIG_OPTION
def migrate_command(config_path: Path | None) -> None:
    """Create or migrate the PostgreSQL catalog's schema (daemons also do it at start)."""
    settings = settings_or_exit(config_path)
    if settings.catalog.backend != "postgres":
        click.echo("catalog.backend is sqlite: each daemon creates its catalog at start")
        return

    async def migrate() -> int:
        catalog = postgres_catalog(settings)
        try:
            return await catalog.migrate()
        finally:
            await catalog.close()

    try:
        found = asyncio.run(migrate())
    except CatalogUnavailable as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"PostgreSQL catalog schema: version {found} -> {SCHEMA_VERSION}")
