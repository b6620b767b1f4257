"""HEAD-by-key latency through the daemon with a small and a large catalog, per backend (#24).

For each backend (``sqlite``: the daemon's own file; ``postgres``: the fleet's catalog on a
private PostgreSQL from tests/postgres.py) the catalog is filled with ``--small`` rows, a daemon
(a real process in front of SeaweedFS) answers ``--requests`` HEADs of random keys, then the
catalog is filled up to ``--rows`` and the same is measured again. HEAD, not GET: the lookup is
what grows with the catalog, not the ranged read of a tar. The rows are written by SQL on the
database side (``generate_series``, a recursive CTE for SQLite), as a week of batches would
leave them. Prints the latencies and their ratio (large / small) measured in one run; takes
about 5 minutes for 10 million rows on 2 cores.

    .venv/bin/python -m bench.catalog_lookup --rows 10000000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import secrets
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

import psycopg

from s3batchd.catalog.postgres import PostgresCatalog
from s3batchd.catalog.store import Catalog, catalog_path
from s3batchd.cli.seaweed import LocalS3, start_local_s3
from tests.daemon_process import DaemonProcess
from tests.postgres import LocalPostgres, start_local_postgres

BUCKET = "bench-catalog"
EMPTY_MD5 = "d41d8cd98f00b204e9800998ecf8427e"
#: Rows written per statement while filling.
CHUNK = 1_000_000


def key(n: int) -> str:
    return f"k/{n:09d}"


def fill_postgres(dsn: str, start: int, end: int) -> None:
    """Rows ``start`` to ``end - 1`` into the PostgreSQL catalog."""
    with psycopg.connect(dsn, autocommit=True) as connection:
        for low in range(start, end, CHUNK):
            high = min(end, low + CHUNK)
            connection.execute(
                "INSERT INTO s3batchd_objects (bucket, key, batch_id, tar_key, member, "
                '"offset", length, md5, content_type, metadata, headers, checksums, mtime, etag) '
                "SELECT %s, convert_to('k/' || lpad(i::text, 9, '0'), 'UTF8'), "
                "'20261207T000000Z-bench-0', 'bench.tar', 'm', 512, 0, %s, "
                "'application/octet-stream', '{}', '{}', '{}', extract(epoch from now()), '' "
                "FROM generate_series(%s::bigint, %s::bigint) AS i",
                (BUCKET, EMPTY_MD5, low, high - 1),
            )
        connection.execute("ANALYZE s3batchd_objects")


def fill_sqlite(path: Path, start: int, end: int) -> None:
    """Rows ``start`` to ``end - 1`` into the daemon's SQLite catalog (daemon stopped)."""
    Catalog(path).close()  # the schema
    db = sqlite3.connect(path, isolation_level=None)
    try:
        for low in range(start, end, CHUNK):
            high = min(end, low + CHUNK)
            db.execute("BEGIN")
            db.execute(
                "WITH RECURSIVE c(i) AS (SELECT ? UNION ALL SELECT i + 1 FROM c WHERE i < ?) "
                "INSERT INTO objects SELECT ?, printf('k/%09d', i), '20261207T000000Z-bench-0', "
                "'bench.tar', 'm', 512, 0, ?, 'application/octet-stream', '{}', '{}', '{}', "
                "CAST(strftime('%s', 'now') AS REAL), 1, '' FROM c",
                (low, high - 1, BUCKET, EMPTY_MD5),
            )
            db.execute("COMMIT")
    finally:
        db.close()


def heads(daemon: DaemonProcess, rows: int, requests: int) -> list[float]:
    """Seconds per HEAD of ``requests`` random existing keys (after 50 unmeasured ones)."""
    client = daemon.client()
    rng = random.Random(7)
    timings = []
    for n in range(requests + 50):
        started = time.perf_counter()
        client.head_object(Bucket=BUCKET, Key=key(rng.randrange(rows)))
        if n >= 50:
            timings.append(time.perf_counter() - started)
    return timings


def summary(timings: list[float]) -> dict[str, float]:
    ordered = sorted(timings)
    return {
        "p50_ms": statistics.median(ordered) * 1000,
        "p99_ms": ordered[int(len(ordered) * 0.99) - 1] * 1000,
    }


def measure(
    backend: str, work: Path, s3: LocalS3, pg: LocalPostgres | None, args: argparse.Namespace
) -> dict[str, dict[str, float]]:
    directory = work / backend
    directory.mkdir()
    sections: dict[str, dict[str, object]] = {}
    dsn = ""
    if pg is not None:
        database = f"bench_{secrets.token_hex(4)}"
        with psycopg.connect(pg.dsn(), autocommit=True) as connection:
            connection.execute(f"CREATE DATABASE {database}")
        dsn = pg.dsn(database)
        asyncio.run(_migrate(dsn))
        sections["catalog"] = {"backend": "postgres", "dsn": dsn}
    results = {}
    filled = 0
    for rows in (args.small, args.rows):
        started = time.monotonic()
        if pg is not None:
            fill_postgres(dsn, filled, rows)
        else:
            fill_sqlite(catalog_path(directory / "spool"), filled, rows)
        filled = rows
        print(f"{backend}: {rows} rows ({time.monotonic() - started:.0f} s to fill)", flush=True)
        with DaemonProcess(directory, s3, **sections) as daemon:  # type: ignore[arg-type]
            results[str(rows)] = summary(heads(daemon, rows, args.requests))
        print(f"{backend}: {rows} rows: {results[str(rows)]}", flush=True)
    small, large = results[str(args.small)], results[str(args.rows)]
    results["ratio"] = {name: large[name] / small[name] for name in small}
    return results


async def _migrate(dsn: str) -> None:
    catalog = PostgresCatalog(dsn)
    try:
        await catalog.migrate()
    finally:
        await catalog.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="rows of the large catalog")
    parser.add_argument("--small", type=int, default=1000, help="rows of the small catalog")
    parser.add_argument("--requests", type=int, default=2000, help="HEADs measured per size")
    parser.add_argument("--backends", default="sqlite,postgres", help="comma-separated")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="s3batchd-bench-catalog-") as scratch:
        work = Path(scratch)
        s3 = start_local_s3(work / "seaweedfs")
        pg = start_local_postgres()
        try:
            s3.client().create_bucket(Bucket=BUCKET)
            report = {
                backend: measure(backend, work, s3, pg if backend == "postgres" else None, args)
                for backend in args.backends.split(",")
            }
        finally:
            pg.remove()
            s3.stop()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
