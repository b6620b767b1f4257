"""PUT load through s3batchd into a local SeaweedFS: objects per batch, upstream requests per
1,000 PUTs, and PUT/s on this machine. Loopback only, bounded in count.

    .venv/bin/python bench/put_load.py --puts 5000 --threads 8 --size 4096
"""

from __future__ import annotations

import argparse
import hashlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
from botocore.config import Config

from s3batchd.cli.seaweed import free_ports, start_local_s3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--puts", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--durability", choices=["fsync", "none"], default="fsync")
    parser.add_argument("--linger-ms", type=int, default=2000)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="s3batchd-bench-"))
    s3 = start_local_s3(work / "seaweedfs", buckets=("bench",))
    port = free_ports(1)[0]
    config = work / "s3batchd.toml"
    config.write_text(
        f'[server]\nport = {port}\nadmin_port = 0\n[spool]\ndir = "{work / "spool"}"\n'
        f'durability = "{args.durability}"\n[batch]\nlinger_ms = {args.linger_ms}\n'
        f'[upstream]\nendpoint_url = "{s3.endpoint_url}"\n'
    )
    env = {**os.environ, "AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key}
    log = (work / "daemon.log").open("wb")
    daemon = subprocess.Popen(
        [str(Path(sys.executable).parent / "s3batchd"), "serve", "--config", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        _wait_listening(work / "daemon.log")
        elapsed = _load(port, args.puts, args.threads, args.size)
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(120)
        upstream = s3.client().list_objects_v2(Bucket="bench", MaxKeys=1000).get("Contents", [])
        tars = [o for o in upstream if o["Key"].endswith(".tar")]
        print(
            f"puts={args.puts} threads={args.threads} size={args.size} "
            f"durability={args.durability} linger_ms={args.linger_ms}"
        )
        print(f"PUT/s through s3batchd: {args.puts / elapsed:.0f}")
        print(f"batches: {len(tars)}; objects per batch: {args.puts / max(1, len(tars)):.0f}")
        print(
            f"upstream PUT requests per 1,000 PUTs: {1000 * len(upstream) / args.puts:.2f} "
            f"(tar + index per batch; saving {100 - 100 * len(upstream) / args.puts:.1f}%)"
        )
    finally:
        if daemon.poll() is None:
            daemon.kill()
        s3.stop()


def _wait_listening(log_path: Path) -> None:
    deadline = time.monotonic() + 30
    while "Application startup complete" not in log_path.read_text(errors="replace"):
        if time.monotonic() > deadline:
            raise TimeoutError(log_path.read_text())
        time.sleep(0.05)


def _load(port: int, puts: int, threads: int, size: int) -> float:
    local = threading.local()
    body = os.urandom(size)
    etag = f'"{hashlib.md5(body).hexdigest()}"'

    def one(number: int) -> None:
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = boto3.client(
                "s3",
                endpoint_url=f"http://127.0.0.1:{port}",
                region_name="us-east-1",
                aws_access_key_id="bench",
                aws_secret_access_key="bench",
                config=Config(request_checksum_calculation="when_required"),
            )
        answer = client.put_object(Bucket="bench", Key=f"k/{number:08d}", Body=body)
        assert answer["ETag"] == etag

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(puts)))
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
