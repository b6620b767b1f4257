"""Upload throughput of a sealed batch: s3batchd's own uploader
(``s3batchd.upload.uploader.Uploader``
with the daemon's boto3 client and default ``[upload]`` settings: CRC32 of the file, multipart
above 16 MiB with 8 MiB parts 8 at a time, then the index) against boto3's ``upload_file`` of
the same tar (default TransferConfig) to the same SeaweedFS. Runs alternate, after one
unmeasured run of each."""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import boto3

from bench.servers import BUCKET
from s3batchd.config import UploadConfig, UpstreamConfig
from s3batchd.records import SealedBatch
from s3batchd.spool.files import recover
from s3batchd.upload.uploader import ThreadSteps, Uploader
from s3batchd.upload.upstream import make_client

PREFIX = "bench-upload/"


@dataclass(frozen=True)
class UploadComparison:
    """Seconds per upload of the same tar, by each client."""

    tar_bytes: int
    records: int
    uploader_s: list[float]
    boto3_s: list[float]
    uploader_requests_per_batch: float

    @property
    def uploader_mib_s(self) -> float:
        """Median throughput of s3batchd's uploader (tar and index), MiB/s."""
        return self.tar_bytes / statistics.median(self.uploader_s) / (1 << 20)

    @property
    def boto3_mib_s(self) -> float:
        """Median throughput of boto3 upload_file, MiB/s."""
        return self.tar_bytes / statistics.median(self.boto3_s) / (1 << 20)

    @property
    def ratio(self) -> float:
        """Uploader throughput / boto3 throughput."""
        return self.uploader_mib_s / self.boto3_mib_s


@contextmanager
def _credentials() -> Iterator[None]:
    """Any credentials for the client made from the default chain (SeaweedFS checks none)."""
    saved = {name: os.environ.get(name) for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    os.environ["AWS_ACCESS_KEY_ID"] = "bench"
    os.environ["AWS_SECRET_ACCESS_KEY"] = "bench-secret"  # noqa: S105  SeaweedFS checks none
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def sealed_batch(tar: Path, work_dir: Path) -> SealedBatch:
    """The SealedBatch for a copy of ``tar`` (found the way the daemon's recovery finds it)."""
    bucket_dir = work_dir / "spool" / BUCKET
    bucket_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(tar, bucket_dir / tar.name)
    (batch,) = recover(work_dir / "spool", prefix=PREFIX)
    return batch


def compare(tar: Path, work_dir: Path, *, endpoint_url: str, reps: int) -> UploadComparison:
    """Upload ``tar`` ``reps`` times with each client, alternating."""
    source = sealed_batch(tar, work_dir)
    pristine = work_dir / "pristine.tar"
    shutil.copyfile(source.path, pristine)
    with _credentials():
        return asyncio.run(_compare(source, pristine, endpoint_url=endpoint_url, reps=reps))


async def _compare(
    source: SealedBatch, pristine: Path, *, endpoint_url: str, reps: int
) -> UploadComparison:
    config = UploadConfig()
    client = make_client(UpstreamConfig(endpoint_url=endpoint_url), config)
    uploader = Uploader(ThreadSteps(client, config), config=config)
    plain = boto3.client("s3", endpoint_url=endpoint_url, region_name="us-east-1")
    await uploader.start()
    ours: list[float] = []
    theirs: list[float] = []
    try:
        for rep in range(reps + 1):
            shutil.copyfile(pristine, source.path)  # the uploader deletes it when done
            batch = replace(
                source,
                tar_key=f"{PREFIX}uploader-{rep}.tar",
                index_key=f"{PREFIX}uploader-{rep}.index.json",
            )
            started = time.perf_counter()
            await uploader.submit(batch)
            if not await uploader.drain(300):
                raise RuntimeError("the uploader did not finish in 300 s")
            ours.append(time.perf_counter() - started)
            started = time.perf_counter()
            await asyncio.to_thread(
                plain.upload_file, str(pristine), BUCKET, f"{PREFIX}boto3-{rep}.tar"
            )
            theirs.append(time.perf_counter() - started)
    finally:
        await uploader.close(30)
    requests = sum(uploader.stats.snapshot().values())
    return UploadComparison(
        tar_bytes=source.size,
        records=source.records,
        uploader_s=ours[1:],
        boto3_s=theirs[1:],
        uploader_requests_per_batch=requests / (reps + 1),
    )
