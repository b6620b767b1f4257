"""``s3batchd parked``: see and act on parked batches (``parking``).

``list`` and ``export`` read the spool folder and work whether the daemon runs or not;
``retry`` asks the running daemon (its admin listener); ``discard`` asks the running daemon,
or, when none answers, deletes from the spool itself while holding the spool's lock.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import click

from s3batchd.catalog.store import Catalog, catalog_path
from s3batchd.cli.options import CONFIG_OPTION, settings_or_exit
from s3batchd.config import Settings
from s3batchd.errors import SpoolError
from s3batchd.server.workers import WORKERS_DIR
from s3batchd.spool.files import lock_spool
from s3batchd.spool.parking import ParkedOnDisk, discard, export, find, parked_on_disk

URL_OPTION = click.option(
    "--url", help="Admin URL of the daemon (default: from server.admin_host/port)."
)


def spools(settings: Settings) -> list[Path]:
    """Every spool folder of the daemon: ``spool.dir`` and its workers' (``_workers/<i>``)."""
    base = settings.spool.dir
    workers = base / WORKERS_DIR
    others = sorted(p for p in workers.iterdir() if p.is_dir()) if workers.is_dir() else []
    return [base, *others]


def admin_url(settings: Settings, url: str | None) -> str:
    """The daemon's admin listener, as a local client reaches it."""
    host = settings.server.admin_host
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    return url or f"http://{host}:{settings.server.admin_port}"


def _post(base: str, path: str, body: dict[str, object]) -> dict[str, object]:
    """POST JSON to the admin listener; its JSON answer (an error status too)."""
    request = urllib.request.Request(  # noqa: S310  the configured admin URL
        base + path,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310
            found = json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        found = json.loads(exc.read() or b"{}")
        found.setdefault("error", f"HTTP {exc.code}")
    return found if isinstance(found, dict) else {}


def _when(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _line(parked: ParkedOnDisk) -> str:
    state = parked.state
    due = max(0.0, state.next_retry_at - time.time())
    return (
        f"{parked.batch_id}  {parked.bucket}  {parked.size} bytes  {state.reason}  "
        f"parked since {_when(state.parked_at)}, {state.attempts} failed attempts, "
        f"next in {due:.0f} s\n    {state.error}"
    )


@click.group()
def parked() -> None:
    """Batches whose upload failed non-retriably, kept in the spool (docs/operations.md)."""


@parked.command("list")
@CONFIG_OPTION
def list_command(config_path: Path | None) -> None:
    """List the parked batches in the spool (the daemon may be running or stopped)."""
    found = parked_on_disk(spools(settings_or_exit(config_path)))
    for batch in found:
        click.echo(_line(batch))
    click.echo(f"{len(found)} parked batches", err=True)


@parked.command("retry")
@click.argument("batch_ids", nargs=-1)
@click.option("--all", "every", is_flag=True, help="Retry every parked batch.")
@CONFIG_OPTION
@URL_OPTION
def retry_command(
    batch_ids: tuple[str, ...], every: bool, config_path: Path | None, url: str | None
) -> None:
    """Ask the running daemon to try parked batches again now."""
    if bool(batch_ids) == every:
        raise click.UsageError("give BATCH_ID... or --all")
    base = admin_url(settings_or_exit(config_path), url)
    body: dict[str, object] = {"all": True} if every else {"batch_ids": list(batch_ids)}
    try:
        answer = _post(base, "/parked/retry", body)
    except OSError as exc:
        raise click.ClickException(f"no daemon answering at {base}: {exc}") from exc
    if "error" in answer:
        raise click.ClickException(str(answer["error"]))
    listed = answer.get("retried")
    retried = [str(i) for i in listed] if isinstance(listed, list) else []
    for batch_id in retried:
        click.echo(f"retrying {batch_id}")
    missing = sorted(set(batch_ids) - set(retried))
    if missing:
        raise click.ClickException(f"not parked (or being tried now): {', '.join(missing)}")


@parked.command("export")
@click.argument("batch_id")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False))
@CONFIG_OPTION
def export_command(batch_id: str, directory: Path, config_path: Path | None) -> None:
    """Copy a parked batch (tar, index JSON, state) to DIRECTORY."""
    settings = settings_or_exit(config_path)
    _export(settings, batch_id, directory)


def _export(settings: Settings, batch_id: str, directory: Path) -> None:
    try:
        written = export(find(spools(settings), batch_id), directory, settings.upstream.prefix)
    except (LookupError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    for path in written:
        click.echo(f"wrote {path}")


@parked.command("discard")
@click.argument("batch_id")
@click.option("--yes", is_flag=True, help="Confirm: the batch's objects are deleted for good.")
@click.option(
    "--export-to",
    type=click.Path(path_type=Path, file_okay=False),
    help="Export the batch to this folder first (as `parked export`).",
)
@CONFIG_OPTION
@URL_OPTION
def discard_command(
    batch_id: str,
    yes: bool,
    export_to: Path | None,
    config_path: Path | None,
    url: str | None,
) -> None:
    """Delete a parked batch from the spool for good (after exporting it)."""
    settings = settings_or_exit(config_path)
    try:
        parked_batch = find(spools(settings), batch_id)
    except LookupError as exc:
        raise click.ClickException(str(exc)) from exc
    if not yes:
        raise click.ClickException(
            f"refusing to discard {batch_id}: its objects were acknowledged to clients and are "
            f"not in s3://{parked_batch.bucket}. Export it first "
            f"(s3batchd parked export {batch_id} DIR, or --export-to DIR), then discard with --yes"
        )
    if export_to is not None:
        _export(settings, batch_id, export_to)
    base = admin_url(settings, url)
    try:
        answer = _post(base, "/parked/discard", {"batch_id": batch_id})
    except urllib.error.URLError as exc:
        if not isinstance(exc.reason, ConnectionRefusedError):
            raise click.ClickException(f"daemon at {base}: {exc}") from exc
        _discard_offline(settings, parked_batch)
    except OSError as exc:
        raise click.ClickException(f"daemon at {base}: {exc}") from exc
    else:
        if "error" in answer:
            raise click.ClickException(str(answer["error"]))
    click.echo(f"discarded {batch_id} (s3://{parked_batch.bucket})")


def _discard_offline(settings: Settings, parked_batch: ParkedOnDisk) -> None:
    """No daemon answers: delete from the spool, holding its lock (a daemon using the spool
    without an admin listener we could reach keeps the batch), and forget its objects in the
    catalog."""
    spool = parked_batch.tar_path.parent.parent
    try:
        lock = lock_spool(spool)
    except SpoolError as exc:
        raise click.ClickException(
            f"{exc}, but its admin listener did not answer; pass --url"
        ) from exc
    try:
        discard(parked_batch.tar_path)
        catalog = Catalog(catalog_path(settings.spool.dir, settings.catalog.path))
        try:
            catalog.forget_batch(parked_batch.batch_id)
        finally:
            catalog.close()
    finally:
        lock.close()
