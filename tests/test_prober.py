"""The probe's bounded set of buckets: the most recently written, forgotten after a while."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from s3batchd.cli.seaweed import LocalS3
from s3batchd.config import UpstreamConfig
from s3batchd.upload.prober import Prober, RecentBuckets

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


def test_only_the_most_recently_written_buckets_are_kept() -> None:
    recent = RecentBuckets(limit=3, forget_s=100)
    for number in range(10_000):
        recent.written(f"b{number}", now=float(number) / 1000)
    assert recent.recent(now=10.0) == ["b9999", "b9998", "b9997"]


def test_writing_again_makes_a_bucket_the_newest() -> None:
    recent = RecentBuckets(limit=2, forget_s=100)
    recent.written("a", now=1)
    recent.written("b", now=2)
    recent.written("a", now=3)
    recent.written("c", now=4)  # b is the oldest now, not a
    assert recent.recent(now=5) == ["c", "a"]


def test_buckets_not_written_for_forget_s_are_forgotten() -> None:
    recent = RecentBuckets(limit=10, forget_s=60)
    recent.written("old", now=0)
    recent.written("new", now=50)
    assert recent.recent(now=60) == ["new", "old"]
    assert recent.recent(now=61) == ["new"]
    assert recent.recent(now=111) == []


def test_a_round_that_fails_does_not_stop_the_probe(s3_server: LocalS3, bucket: str) -> None:
    # The probe's client cannot be made at the first round (say the credentials file is
    # briefly unreadable): the round fails, the probe keeps going and reports S3 up next time.
    made = 0

    def client() -> S3Client:
        nonlocal made
        made += 1
        if made == 1:
            raise RuntimeError("cannot read the credentials file")
        return s3_server.client()

    noted: list[bool] = []
    config = UpstreamConfig(
        endpoint_url=s3_server.endpoint_url, probe_interval_s=0.05, probe_buckets=(bucket,)
    )

    async def main() -> list[str]:
        answered = asyncio.Event()

        def note(up: bool) -> None:
            noted.append(up)
            answered.set()

        prober = Prober(config, client, note=note)
        prober.start()
        try:
            async with asyncio.timeout(30):
                await answered.wait()
        finally:
            await prober.close()
        return prober.warnings

    assert asyncio.run(main()) == []
    assert made == 2
    assert noted[0] is True
