"""``s3batchd compact --bucket NAME [--dry-run]``: one compaction pass over a bucket, from
its indexes alone (the daemon need not run), printing what it would do or did."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click
from botocore.exceptions import BotoCoreError, ClientError

from s3batchd.cli.catalog import postgres_catalog
from s3batchd.cli.options import CONFIG_OPTION, ENDPOINT_OPTION, cli_client, settings_or_exit
from s3batchd.compaction.compactor import Compactor, PassReport
from s3batchd.compaction.rewrite import Written
from s3batchd.errors import CatalogUnavailable, CompactionError
from s3batchd.reader import ReaderError, load_index

if TYPE_CHECKING:
    from collections.abc import Callable

    from mypy_boto3_s3 import S3Client

    from s3batchd.config import Settings


@click.command("compact")
@click.option("--bucket", required=True, help="The bucket whose batches are compacted.")
@click.option(
    "--dry-run", is_flag=True, help="Survey and print what a pass would do; write nothing."
)
@CONFIG_OPTION
@ENDPOINT_OPTION
def compact_command(
    bucket: str, dry_run: bool, config_path: Path | None, endpoint_url: str | None
) -> None:
    """Rewrite the batches of BUCKET whose objects are mostly dead (compaction.* settings),
    and delete replaced batches past compaction.grace_s (docs/compaction.md)."""
    settings = settings_or_exit(config_path)
    client = cli_client(settings, endpoint_url)
    compactor = Compactor(client, bucket, settings)
    try:
        with click.progressbar(length=0, label="compacting", file=sys.stderr, show_pos=True) as bar:

            def advance(objects: int) -> None:
                bar.length = (bar.length or 0) + objects
                bar.update(objects)

            if settings.catalog.backend == "postgres" and not dry_run:
                report = asyncio.run(_with_fleet_catalog(settings, compactor, client, advance))
            else:
                report = compactor.run(dry_run=dry_run, progress=advance)
    except (CompactionError, ReaderError, ClientError, BotoCoreError, CatalogUnavailable) as exc:
        raise click.ClickException(f"compact s3://{bucket}: {exc}") from exc
    except OSError as exc:  # the new tar is built on disk (spool/scratch.py)
        raise click.ClickException(
            f"compact s3://{bucket}: building the new tar in spool.dir's _tmp/: {exc}"
        ) from exc
    for line in summary(report):
        click.echo(line)


async def _with_fleet_catalog(
    settings: Settings, compactor: Compactor, client: S3Client, progress: Callable[[int], None]
) -> PassReport:
    """A pass with ``catalog.backend = "postgres"``: every batch it writes goes into the
    fleet's catalog before any batch it replaces is deleted, as the daemon's own pass does
    (no daemon follows the bucket in that mode: without this, reads of the moved keys would
    fail once the old batches are gone)."""
    catalog = postgres_catalog(settings)
    loop = asyncio.get_running_loop()
    bucket = compactor.bucket

    def learn(written: Written) -> None:  # on the pass's thread
        document = load_index(client, bucket, written.tar_key)
        asyncio.run_coroutine_threadsafe(catalog.put_index(bucket, document), loop).result()

    try:
        await catalog.migrate()
        return await asyncio.to_thread(compactor.run, progress=progress, on_written=learn)
    finally:
        await catalog.close()


def summary(report: PassReport) -> list[str]:
    """The lines ``s3batchd compact`` prints."""
    verb = "would" if report.dry_run else "did"
    found = report.survey
    lines = []
    if found is not None:
        lines.append(
            f"batches: {len(found.batches)} current, {len(found.replaced)} replaced; "
            f"live {found.live_bytes} bytes, dead {found.dead_bytes} bytes "
            f"in {found.dead_objects} objects ({report.dead_per_month_usd:.6f} USD per month)"
        )
        if report.oldest_death_age_s is not None:
            lines.append(
                f"oldest unerased delete or overwrite: {report.oldest_death_age_s:.0f} s ago"
            )
    reasons = [c.reason for c in report.chosen]
    lines.append(
        f"rewrite ({verb}): {len(report.chosen)} batches (erase {reasons.count('erase')}, "
        f"dead {reasons.count('dead')}) into {len(report.written)} new; "
        f"live {report.live_bytes} bytes rewritten, dead {report.dead_bytes} bytes dropped"
    )
    lines.append(f"deleted ({verb}): {len(report.deleted)} replaced batches")
    if report.tombstones_dropped or report.updates_dropped or report.emptied:
        lines.append(
            f"dropped ({verb}): {report.tombstones_dropped} tombstones and "
            f"{report.updates_dropped} attribute updates hiding or naming nothing; "
            f"{len(report.emptied)} batches of nothing else deleted"
        )
    if report.orphans:
        lines.append(f"unfinished batches deleted: {', '.join(report.orphans)}")
    spent = ", ".join(f"{n} {name}" for name, n in report.requests.items())
    lines.append(f"requests spent: {spent}")
    lines.append(f"storage saved per month: {report.saved_per_month_usd:.6f} USD")
    return lines
