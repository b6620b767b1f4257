"""Checks of the spool and the catalog before the daemon binds its ports and starts serving.

Inside uvicorn's lifespan a failure would be a traceback and uvicorn's own exit status 3, which
s3batchd uses for "stopped, batches kept on disk". Checked here, a spool directory that cannot
be created or written, a spool another process holds, or a catalog directory that cannot be
created is one ``StartupError`` naming the setting and the path. The pipeline checks the same
again when it starts (the checks are cheap and the disk may change in between).
"""

from __future__ import annotations

from pathlib import Path

from s3batchd.catalog.store import catalog_path
from s3batchd.config import Settings
from s3batchd.errors import SpoolError, StartupError
from s3batchd.spool.files import check_writable, lock_spool


def check_storage(settings: Settings) -> None:
    """Prove the spool directory and the catalog's directory usable.

    Raises:
        StartupError: naming ``spool.dir`` or ``catalog.path`` and what is wrong.
    """
    spool = settings.spool.dir
    try:
        check_writable(spool)
        lock_spool(spool).close()  # released again: the pipeline takes it for good
    except (SpoolError, OSError) as exc:
        raise StartupError(f"spool.dir: {exc}") from exc
    catalog = catalog_path(spool, settings.catalog.path)
    setting = "catalog.path" if settings.catalog.path else "spool.dir"
    try:
        _check_directory(catalog.parent)
    except OSError as exc:
        raise StartupError(f"{setting}: cannot create the catalog {catalog}: {exc}") from exc


def _check_directory(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    probe = directory / ".probe"
    probe.write_bytes(b"ok")
    probe.unlink()
