"""The daemon's own cost per PutObject, without HTTP: the S3 listener's ASGI app
(``S3Front``) called directly in one process, as uvicorn would call it, for ``--puts`` PUTs
of ``--size`` bytes (durability ``none`` by default, batches never sealed during the run,
the upstream unreachable and never asked; the catalog's rows written at the end of each
round). Prints microseconds of CPU per PUT: the fastest of ``--repeat`` rounds (the least
disturbed by the rest of the machine) and their median; with ``--profile`` the top functions
of a cProfile run.

    python -m bench.inprocess --puts 20000 --size 4096

With ``--floor`` each PUT skips every layer above the batcher (``floor_put``): no request
parsing, Host or bucket-name checks beyond the cached ones, no metadata, checksum, quota,
durability or bucket-mode decisions, no stall watch, no errors; only the request id, the
body's MD5, the record, ``Batcher.append_now`` (the tar member, the index part), the catalog
row, the answer's headers and the request metrics. Not a path the daemon could take: the floor
under what the daemon's own work costs with today's batcher, spool and catalog, to compare the
full path and the target with (bench/README.md, session 13).

Numbers from one run compare two commits on the same machine, not machines.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import functools
import hashlib
import logging
import os
import pstats
import statistics
import tempfile
import time
from pathlib import Path
from urllib.parse import unquote

import uvloop
from starlette.types import Message, Receive, Scope, Send

from bench.targets import INPROCESS_US_PER_PUT, TARGET_SIZE
from s3batchd.clock import write_time
from s3batchd.config import Settings
from s3batchd.handlers.put import put_response_headers
from s3batchd.records import ObjectRecord
from s3batchd.s3.addressing import check_bucket, check_host, check_key
from s3batchd.s3.api import DEFAULT_CONTENT_TYPE
from s3batchd.server.app import S3Front, create_app, new_request_id, state_of


async def floor_put(front: S3Front, scope: Scope, receive: Receive, send: Send) -> None:
    """A PutObject with nothing above the batcher (``--floor``, module docstring); a PUT it
    cannot append at once (no open batch yet) goes through the full path."""
    daemon = front.state.daemon
    assert daemon is not None
    started = time.perf_counter()
    request_id = new_request_id()
    headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
    server = daemon.settings.server
    check_host(headers.get("host"), server.allowed_hosts, server.virtual_host_domains)
    bucket, _, key = unquote(scope["path"])[1:].partition("/")
    check_bucket(bucket)
    check_key(key)
    message = await receive()
    body: bytes = message["body"]
    record = ObjectRecord(
        key=key,
        size=len(body),
        md5_hex=hashlib.md5(body, usedforsecurity=False).hexdigest(),
        content_type=headers.get("content-type") or DEFAULT_CONTENT_TYPE,
        mtime=write_time(),
    )
    pipeline = daemon.pipeline
    appended = pipeline.batcher.append_now(bucket, record, body, "none")
    if appended is None:

        async def again() -> Message:
            return message

        await front(scope, again, send)
        return
    entry, _ = appended
    pipeline.queue_row(entry, uploaded=False)
    daemon.received_bytes.inc(len(body))
    raw = put_response_headers(entry)
    raw.append((b"x-amz-request-id", request_id.encode()))
    raw.append((b"server", b"s3batchd"))
    await send({"type": "http.response.start", "status": 200, "headers": raw})
    await send({"type": "http.response.body", "body": b""})
    front.metrics.requests.labels("PutObject", "200").inc()
    front.metrics.ack_latency.observe(time.perf_counter() - started)


def _settings(spool: Path, durability: str) -> Settings:
    return Settings.model_validate(
        {
            "spool": {"dir": spool, "durability": durability},
            "batch": {"linger_ms": 3_600_000, "max_records": 10_000_000, "max_bytes": 2**40},
            "upstream": {"endpoint_url": "http://127.0.0.1:9", "probe_interval_s": 0},
            "metrics": {"loop_lag_interval_s": 0},
            "log": {"level": "WARNING"},
            "shutdown": {"drain_timeout_s": 0},
        }
    )


def _scope(n: int, size: int) -> Scope:
    path = f"/bench/inprocess/{n:09d}"
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "server": ("127.0.0.1", 9000),
        "client": ("127.0.0.1", 50000),
        "scheme": "http",
        "method": "PUT",
        "root_path": "",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [
            (b"host", b"127.0.0.1:9000"),
            (b"content-length", str(size).encode()),
            (b"content-type", b"application/octet-stream"),
        ],
        "state": {},
    }


async def _run(
    puts: int, size: int, durability: str, *, repeat: int, profile: bool, floor: bool
) -> list[float]:
    body = os.urandom(size)
    with tempfile.TemporaryDirectory() as tmp:
        app = create_app(_settings(Path(tmp), durability))
        front = S3Front(app)
        statuses: list[int] = []
        put = functools.partial(floor_put, front) if floor else front

        async def send(message: Message) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        async def receive() -> Message:
            return {"type": "http.request", "body": body, "more_body": False}

        async with app.router.lifespan_context(app):
            for n in range(200):  # warm-up
                await front(_scope(n, size), receive, send)
            profiler = cProfile.Profile() if profile else None
            if profiler is not None:
                profiler.enable()
            rounds = []
            for round_ in range(repeat):
                first = 200 + round_ * puts
                started = time.process_time()
                for n in range(first, first + puts):
                    await put(_scope(n, size), receive, send)
                # Nothing above waits, so the loop never ran the catalog's timed flush: its
                # SQLite writes are part of a PUT's cost, counted here.
                daemon = state_of(app).daemon
                assert daemon is not None
                daemon.pipeline.catalog.flush()
                rounds.append(time.process_time() - started)
            if profiler is not None:
                profiler.disable()
                pstats.Stats(profiler).sort_stats(os.environ.get("SORT", "tottime")).print_stats(
                    int(os.environ.get("TOP", "25"))
                )
        bad = [s for s in statuses if s != 200]
        if bad:
            raise SystemExit(f"{len(bad)} PUTs failed, first status {bad[0]}")
    return [spent / puts * 1e6 for spent in rounds]


def main() -> None:
    """Command line."""
    # The batch sealed at shutdown is uploaded to nowhere: fail fast, quietly.
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "inprocess")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "inprocess")
    logging.disable(logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--puts", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--repeat", type=int, default=5, help="rounds of --puts PUTs")
    parser.add_argument("--durability", choices=["none", "fsync"], default="none")
    parser.add_argument("--profile", action="store_true", help="print a cProfile summary")
    parser.add_argument(
        "--floor",
        action="store_true",
        help="skip every layer above the batcher (not a real path: the floor under it)",
    )
    parser.add_argument(
        "--loop", choices=["uvloop", "asyncio"], default="uvloop", help="event loop to run on"
    )
    args = parser.parse_args()
    # The event loop the daemon runs on (uvicorn's loop="auto": uvloop when installed).
    loop_factory = None if args.loop == "asyncio" else uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        rounds = runner.run(
            _run(
                args.puts,
                args.size,
                args.durability,
                repeat=args.repeat,
                profile=args.profile,
                floor=args.floor,
            )
        )
    print(
        f"{min(rounds):.1f} us CPU per PUT, fastest of {args.repeat} rounds (median "
        f"{statistics.median(rounds):.1f}) of {args.puts} PUTs of {args.size} bytes, "
        f"durability {args.durability}, {args.loop}"
        + (", the floor (--floor: nothing above the batcher)" if args.floor else "")
    )
    if args.size == TARGET_SIZE and args.durability == "none" and not args.floor:
        verdict = "pass" if min(rounds) <= INPROCESS_US_PER_PUT else "FAIL"
        print(f"target (issue #22): at most {INPROCESS_US_PER_PUT:g} us per PUT: {verdict}")


if __name__ == "__main__":
    main()
