"""What the client-side commands (get, ls, extract, reindex) share: options, settings, client."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from s3batchd.config import Settings, load_settings
from s3batchd.errors import ConfigError
from s3batchd.upload.upstream import make_client

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

CONFIG_OPTION = click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="S3BATCHD_CONFIG",
    help="The daemon's TOML settings (env: S3BATCHD_CONFIG): catalog path and upstream.",
)
ENDPOINT_OPTION = click.option(
    "--endpoint-url",
    help="S3 endpoint of the bucket (default: upstream.endpoint_url; one of them is required).",
)


def settings_or_exit(config_path: Path | None) -> Settings:
    """The settings, or a clear command-line error naming what is wrong."""
    try:
        return load_settings(config_path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc


def endpoint(settings: Settings, endpoint_url: str | None) -> str:
    """``--endpoint-url``, else ``upstream.endpoint_url``, else "" (none configured)."""
    return endpoint_url or settings.upstream.endpoint_url


def cli_client(settings: Settings, endpoint_url: str | None) -> S3Client:
    """A boto3 client for the upstream, optionally at another endpoint. Without one the
    command stops: a missing S3BATCHD_CONFIG must not quietly send it to AWS instead."""
    chosen = endpoint(settings, endpoint_url)
    if not chosen:
        raise click.ClickException(
            "no S3 endpoint: set upstream.endpoint_url in the daemon's settings (S3BATCHD_CONFIG "
            "or --config) or pass --endpoint-url (for AWS itself: https://s3.REGION.amazonaws.com)"
        )
    upstream = settings.upstream.model_copy(update={"endpoint_url": chosen})
    return make_client(upstream, settings.upload)
