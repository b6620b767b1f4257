"""Following the bucket (``catalog.follow``): backfill time, follow lag and lookups in a big
catalog.

Index objects are written straight to SeaweedFS (``--keys`` objects in indexes of
``--per-index``, their batches spread over the last hours; no tars: neither the backfill nor a
HEAD reads them). Then one ``s3batchd serve`` with an empty spool follows the bucket:

- backfill: from the process start until ``s3batchd_catalog_backfill_done`` is 1;
- lookups: ``--heads`` HeadObject of random keys through the daemon (the catalog answers,
  one boto3 client, one at a time): p50 / p99;
- follow lag: ``--lag-samples`` new indexes written one by one at random moments; for each,
  the time until ``s3batchd_catalog_follow_indexes_total`` counts it, with
  ``catalog.follow_interval_s = --interval``.

    .venv/bin/python -m bench.follow --keys 1000000 --per-index 1000
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from bench.servers import BUCKET, DaemonSettings, Seaweed, Server, _spawn, clean_env, config_text
from s3batchd.catalog.store import Catalog, catalog_path
from s3batchd.cli.seaweed import free_ports
from s3batchd.cli.status import fetch
from s3batchd.index import IndexEntry, WriterId, index_key, new_batch_id, render_index, tar_key
from s3batchd.records import ObjectRecord

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

PREFIX = "s3batchd/"
MD5 = "0" * 32


def client(endpoint: str) -> S3Client:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="bench",
        aws_secret_access_key="bench-secret",
        config=Config(max_pool_connections=32, retries={"mode": "standard"}),
    )


def index_body(batch_id: str, first: int, count: int, stamp: float) -> tuple[str, bytes]:
    """One index of ``count`` objects ``key/<n>``; its key and bytes."""
    entries = []
    offset = 0
    for n in range(first, first + count):
        record = ObjectRecord(key=f"key/{n:09d}", size=100, md5_hex=MD5, mtime=stamp)
        entries.append(IndexEntry(record=record, member=f"m{n}", offset=offset))
        offset += 1636
    body = render_index(
        bucket=BUCKET,
        batch_id=batch_id,
        tar_key=tar_key(PREFIX, batch_id),
        tar_size=offset + 1024,
        entries=entries,
    )
    return index_key(PREFIX, batch_id), body


def write_indexes(s3: S3Client, keys: int, per_index: int, span_s: float) -> float:
    """Write the indexes (batches spread over the last ``span_s``); seconds taken."""
    writer = WriterId(host="bench-writer", instance="0000abcd")
    count = -(-keys // per_index)
    now = time.time()
    started = time.monotonic()

    def one(i: int) -> None:
        stamp = now - span_s + span_s * i / count
        batch_id = new_batch_id(writer, i, stamp)
        key, body = index_body(batch_id, i * per_index, min(per_index, keys - i * per_index), stamp)
        s3.put_object(Bucket=BUCKET, Key=key, Body=body)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(one, range(count)))
    return time.monotonic() - started


def start_daemon(
    work: Path, endpoint: str, interval: float, *, follow: bool = True
) -> tuple[Server, str, str]:
    work.mkdir(parents=True, exist_ok=True)
    port, admin_port = free_ports(2)
    settings = DaemonSettings(upstream_url=endpoint, prefix=PREFIX)
    text = config_text(settings, port=port, admin_port=admin_port, spool=work / "spool")
    text += (
        f'\n[catalog]\nfollow_buckets = ["{BUCKET}"]\nfollow_interval_s = {interval}\n'
        f"follow_idle_max_s = {interval}\nfollow = {str(follow).lower()}\n"
    )
    config = work / "s3batchd.toml"
    config.write_text(text)
    args = [str(Path(sys.executable).parent / "s3batchd"), "serve", "--config", str(config)]
    env = clean_env(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench-secret")
    server = Server("s3batchd", _spawn(args, work / "daemon.log", env), work / "daemon.log")
    return server, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin_port}"


def metric(admin_url: str, name: str) -> float:
    try:
        samples = fetch(admin_url)[1]
    except OSError:
        return -1.0
    return sum(samples.get(name, {}).values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--per-index", type=int, default=1000)
    parser.add_argument("--span-hours", type=float, default=24.0)
    parser.add_argument("--heads", type=int, default=2000)
    parser.add_argument("--lag-samples", type=int, default=5)
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument(
        "--lookup-rows",
        type=int,
        default=0,
        help="instead: HEAD latency with a catalog of this many rows filled directly "
        "(and with 1,000 rows, for comparison)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="s3batchd-follow-") as tmp:
        work = Path(tmp)
        weed = Seaweed.start(work / "weed")
        try:
            if args.lookup_rows:
                results = lookups(work, weed.endpoint_url, args)
            else:
                results = run(work, weed.endpoint_url, args)
        finally:
            weed.kill()
    print(json.dumps(results, indent=2))


def lookups(work: Path, endpoint: str, args: argparse.Namespace) -> dict[str, object]:
    """HEAD latency through a daemon whose catalog holds 1,000 rows, then ``--lookup-rows``."""
    results: dict[str, object] = {}
    for rows in (1000, args.lookup_rows):
        directory = work / f"lookup-{rows}"
        began = time.monotonic()
        fill_catalog(catalog_path(directory / "spool"), rows)
        filled_s = time.monotonic() - began
        server, url, _ = start_daemon(directory, endpoint, args.interval, follow=False)
        try:
            wait_answering(url)
            results[str(rows)] = {
                "fill_s": round(filled_s, 1),
                **heads(client(url), rows, args.heads),
            }
        finally:
            server.stop()
    return results


def fill_catalog(path: Path, rows: int) -> None:
    """A catalog of ``rows`` uploaded objects ``key/<n>`` (1,000 per batch)."""
    catalog = Catalog(path)
    writer = WriterId(host="bench-writer", instance="0000abcd")
    now = time.time()
    try:
        for first in range(0, rows, 1000):
            batch_id = new_batch_id(writer, first // 1000, now)
            entries = [
                IndexEntry(
                    record=ObjectRecord(key=f"key/{n:09d}", size=100, md5_hex=MD5, mtime=now),
                    member=f"m{n}",
                    offset=1636 * (n - first),
                )
                for n in range(first, min(rows, first + 1000))
            ]
            catalog.put_many(BUCKET, batch_id, tar_key(PREFIX, batch_id), entries, uploaded=True)
    finally:
        catalog.close()


def wait_answering(url: str) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            client(url).list_buckets()
        except (BotoCoreError, ClientError):
            time.sleep(0.2)
        else:
            return
    raise TimeoutError(f"{url} did not answer")


def run(work: Path, endpoint: str, args: argparse.Namespace) -> dict[str, object]:
    s3 = client(endpoint)
    written_s = write_indexes(s3, args.keys, args.per_index, args.span_hours * 3600)
    results: dict[str, object] = {
        "keys": args.keys,
        "indexes": -(-args.keys // args.per_index),
        "write_indexes_s": round(written_s, 1),
    }
    started = time.monotonic()
    server, url, admin = start_daemon(work / "daemon", endpoint, args.interval)
    try:
        while metric(admin, "s3batchd_catalog_backfill_done") < 1:
            if time.monotonic() - started > 3600:
                raise TimeoutError("backfill took more than an hour")
            time.sleep(0.2)
        backfill_s = time.monotonic() - started
        results["backfill_s"] = round(backfill_s, 1)
        results["backfill_keys_per_s"] = round(args.keys / backfill_s)
        results["catalog_rows"] = metric(admin, "s3batchd_catalog_rows")
        results["head"] = heads(client(url), args.keys, args.heads)
        results["follow_lag_s"] = lags(s3, admin, args)
    finally:
        server.stop()
    return results


def heads(daemon: S3Client, keys: int, count: int) -> dict[str, float]:
    times = []
    for _ in range(count):
        key = f"key/{random.randrange(keys):09d}"
        begun = time.perf_counter()
        daemon.head_object(Bucket=BUCKET, Key=key)
        times.append(time.perf_counter() - begun)
    times.sort()
    return {
        "p50_ms": round(1000 * times[len(times) // 2], 2),
        "p99_ms": round(1000 * times[int(len(times) * 0.99)], 2),
    }


def lags(s3: S3Client, admin: str, args: argparse.Namespace) -> dict[str, float]:
    writer = WriterId(host="bench-late", instance="0000beef")
    delays = []
    for n in range(args.lag_samples):
        time.sleep(random.uniform(0, args.interval))
        before = metric(admin, "s3batchd_catalog_follow_indexes_total")
        stamp = time.time()
        batch_id = new_batch_id(writer, n, stamp)
        key, body = index_body(batch_id, args.keys + n * 10, 10, stamp)
        s3.put_object(Bucket=BUCKET, Key=key, Body=body)
        uploaded = time.monotonic()
        while metric(admin, "s3batchd_catalog_follow_indexes_total") <= before:
            time.sleep(0.05)
        delays.append(time.monotonic() - uploaded)
    return {
        "interval_s": args.interval,
        "mean": round(statistics.mean(delays), 2),
        "max": round(max(delays), 2),
    }


if __name__ == "__main__":
    main()
