"""One compaction pass over 10,000 objects of which half were deleted (issue 25's closing
figures): ``python -m bench.compaction``. SeaweedFS and a daemon as processes; 1 KiB objects
PUT through the daemon, every other key deleted through it (DeleteObjects), then
``Compactor.run`` with ``grace_s = 0`` (the same pass deletes the replaced batches) against the
bucket directly. Prints one JSON object: requests spent, bytes rewritten, seconds."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
from botocore.config import Config

from bench.servers import BUCKET, Daemon, DaemonSettings, Seaweed
from s3batchd.compaction.compactor import Compactor
from s3batchd.config import Settings
from s3batchd.upload.upstream import make_client

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import ObjectIdentifierTypeDef

OBJECTS = 10_000
SIZE = 1024


def _client(url: str) -> S3Client:
    return boto3.client(
        "s3",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="bench",
        aws_secret_access_key="bench-secret",
        config=Config(max_pool_connections=32),
    )


def _tombstones(upstream: S3Client, settings: Settings) -> int:
    found = 0
    pages = upstream.get_paginator("list_objects_v2").paginate(
        Bucket=BUCKET, Prefix=settings.upstream.prefix
    )
    for page in pages:
        for item in page.get("Contents", []):
            if item["Key"].endswith(".index.json"):
                body = upstream.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read()
                found += len(json.loads(body).get("tombstones", []))
    return found


def run(work: Path) -> dict[str, object]:
    """Fill, delete half, compact; the figures."""
    # The upstream accepts any credentials; the compactor's client needs some to sign with.
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench-secret")
    seaweed = Seaweed.start(work / "seaweed")
    daemon = None
    try:
        # The prefix the compactor below is given (its Settings default).
        writer = DaemonSettings(upstream_url=seaweed.url, prefix="s3batchd/")
        daemon = Daemon.start(work / "daemon", writer)
        client = _client(daemon.url)
        keys = [f"objects/{n:05d}" for n in range(OBJECTS)]
        with ThreadPoolExecutor(32) as pool:
            list(
                pool.map(
                    lambda key: client.put_object(
                        Bucket=BUCKET, Key=key, Body=key.encode().ljust(SIZE, b".")
                    ),
                    keys,
                )
            )
        daemon.wait_uploaded(timeout=600)
        doomed = keys[::2]
        for first in range(0, len(doomed), 1000):
            chunk: list[ObjectIdentifierTypeDef] = [
                {"Key": key} for key in doomed[first : first + 1000]
            ]
            client.delete_objects(Bucket=BUCKET, Delete={"Objects": chunk, "Quiet": True})
        settings = Settings.model_validate(
            {"upstream": {"endpoint_url": seaweed.url}, "compaction": {"grace_s": 0}}
        )
        upstream = make_client(settings.upstream, settings.upload)
        deadline = time.monotonic() + 600
        while _tombstones(upstream, settings) < len(doomed) and time.monotonic() < deadline:
            time.sleep(0.5)
        # The default rules (payback within 30 days at AWS prices), then a second pass that
        # rewrites every batch with dead bytes left.
        passes = {"default": _pass(upstream, settings)}
        config = settings.compaction.model_copy(update={"payback_days": 1e9})
        everything = settings.model_copy(update={"compaction": config})
        passes["then payback_days = 1e9"] = _pass(upstream, everything)
    finally:
        if daemon is not None:
            daemon.stop()
        seaweed.stop()
    return {"objects": OBJECTS, "deleted": len(doomed), "object_bytes": SIZE, **passes}


def _pass(upstream: S3Client, settings: Settings) -> dict[str, object]:
    started = time.perf_counter()
    report = Compactor(upstream, BUCKET, settings).run()
    seconds = time.perf_counter() - started
    survey = report.survey
    return {
        "batches_before": 0 if survey is None else len(survey.batches),
        "batches_rewritten": len(report.chosen),
        "batches_written": len(report.written),
        "replaced_deleted": len(report.deleted),
        "live_bytes_rewritten": report.live_bytes,
        "dead_bytes_dropped": report.dead_bytes,
        "tar_bytes_written": sum(w.tar_size for w in report.written),
        "requests": report.requests,
        "storage_saved_per_month_usd": report.saved_per_month_usd,
        "seconds": round(seconds, 2),
    }


def main() -> None:
    """Run once and print the figures as JSON."""
    with tempfile.TemporaryDirectory(prefix="s3batchd-compaction-") as tmp:
        json.dump(run(Path(tmp)), sys.stdout, indent=2)
        sys.stdout.write("\n")


if __name__ == "__main__":
    main()
