"""The daemon's own cost per PutObject, without HTTP: the S3 listener's ASGI app
(``S3Front``) called directly in one process, as uvicorn would call it, for ``--puts`` PUTs
of ``--size`` bytes (durability ``none`` by default, batches never sealed during the run,
the upstream unreachable and never asked; the catalog's rows written at the end of each
round). Prints microseconds of CPU per PUT: the fastest of ``--repeat`` rounds (the least
disturbed by the rest of the machine) and their median; with ``--profile`` the top functions
of a cProfile run.

    python -m bench.inprocess --puts 20000 --size 4096

Numbers from one run compare two commits on the same machine, not machines.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import logging
import os
import pstats
import statistics
import tempfile
import time
from pathlib import Path

import uvloop
from starlette.types import Message, Scope

from bench.targets import INPROCESS_US_PER_PUT, TARGET_SIZE
from s3batchd.config import Settings
from s3batchd.server.app import S3Front, create_app, state_of


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


async def _run(puts: int, size: int, durability: str, *, repeat: int, profile: bool) -> list[float]:
    body = os.urandom(size)
    with tempfile.TemporaryDirectory() as tmp:
        app = create_app(_settings(Path(tmp), durability))
        front = S3Front(app)
        statuses: list[int] = []

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
                    await front(_scope(n, size), receive, send)
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
        "--loop", choices=["uvloop", "asyncio"], default="uvloop", help="event loop to run on"
    )
    args = parser.parse_args()
    # The event loop the daemon runs on (uvicorn's loop="auto": uvloop when installed).
    loop_factory = None if args.loop == "asyncio" else uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        rounds = runner.run(
            _run(args.puts, args.size, args.durability, repeat=args.repeat, profile=args.profile)
        )
    print(
        f"{min(rounds):.1f} us CPU per PUT, fastest of {args.repeat} rounds (median "
        f"{statistics.median(rounds):.1f}) of {args.puts} PUTs of {args.size} bytes, "
        f"durability {args.durability}, {args.loop}"
    )
    if args.size == TARGET_SIZE and args.durability == "none":
        verdict = "pass" if min(rounds) <= INPROCESS_US_PER_PUT else "FAIL"
        print(f"target (issue #22): at most {INPROCESS_US_PER_PUT:g} us per PUT: {verdict}")


if __name__ == "__main__":
    main()
