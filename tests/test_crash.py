"""kill -9 during concurrent PUT load, restart, repeat: nothing acknowledged is lost.

CI runs a few rounds; ``make crash-test`` runs many (``--crash-rounds``).
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from s3batchd.cli.seaweed import LocalS3
from tests.batches import Location, fetch, indexes, keys
from tests.daemon_process import DaemonProcess

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

WRITERS = 4
SIZES = (0, 1, 100, 511, 512, 513, 4096, 30_000)


def payload(key: str, size: int) -> bytes:
    """Deterministic bytes for a key, so only digests need keeping."""
    seed = hashlib.sha256(key.encode()).digest()
    return (seed * (size // 32 + 1))[:size]


def load(
    process: DaemonProcess,
    round_no: int,
    stop: threading.Event,
    acked: dict[str, tuple[str, int, Location]],
    lock: threading.Lock,
    seed: int,
) -> None:
    """One writer: PUT until told to stop; record only what was answered 200."""
    client = process.client()
    rng = random.Random(seed)
    number = 0
    while not stop.is_set():
        key = f"r{round_no}/w{seed}/{number}"
        number += 1
        body = payload(key, rng.choice(SIZES))
        try:
            answer = client.put_object(Bucket=process.bucket, Key=key, Body=body)
        except Exception:  # noqa: BLE001, S112  refused or cut by the kill: not acknowledged
            continue
        location = Location.from_headers(answer["ResponseMetadata"]["HTTPHeaders"])
        with lock:
            acked[key] = (hashlib.md5(body).hexdigest(), len(body), location)


def test_kill_9_during_load_loses_nothing_acknowledged(
    s3_server: LocalS3, s3: S3Client, bucket: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    rounds: int = request.config.getoption("--crash-rounds")
    seed = random.randrange(1 << 30)
    print(f"crash test: {rounds} rounds, seed {seed}")
    rng = random.Random(seed)
    acked: dict[str, tuple[str, int, Location]] = {}
    lock = threading.Lock()
    process = DaemonProcess(tmp_path, s3_server, batch={"linger_ms": 150, "max_records": 40})
    process.bucket = bucket
    try:
        for round_no in range(rounds):
            process.start()
            stop = threading.Event()
            writers = [
                threading.Thread(
                    target=load, args=(process, round_no, stop, acked, lock, 1000 * round_no + w)
                )
                for w in range(WRITERS)
            ]
            for writer in writers:
                writer.start()
            time.sleep(rng.uniform(0.3, 1.5))
            process.kill()
            stop.set()
            for writer in writers:
                writer.join(30)
        process.start()  # the last start recovers and uploads what the last kill left
        assert process.terminate() == 0
    finally:
        process.close()

    assert len(acked) > 20 * rounds
    for key, (md5_hex, size, location) in acked.items():
        data = fetch(s3, location)
        assert (hashlib.md5(data).hexdigest(), len(data)) == (md5_hex, size), key
    listed = Counter(obj["key"] for doc in indexes(s3, bucket) for obj in doc["objects"])
    assert set(acked) <= set(listed)
    assert max(listed.values()) == 1  # nothing duplicated across indexes
    names = keys(s3, bucket)
    tars = {k.removesuffix(".tar") for k in names if k.endswith(".tar")}
    assert tars == {k.removesuffix(".index.json") for k in names if k.endswith(".index.json")}
    print(
        f"crash test: {rounds} rounds, {len(acked)} acknowledged, "
        f"{len(listed) - len(acked)} unacknowledged but stored, lost 0"
    )
