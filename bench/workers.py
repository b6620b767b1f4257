"""Throughput against ``server.workers``: the same wrk load (4 KiB PUTs, 32 connections,
durability ``none``) on s3batchd with 1, 2, ... worker processes, up to the cores available.
Writes ``workers.md`` and ``workers.json`` beside the main report.

    .venv/bin/python -m bench.workers --duration-s 15      # from the repository root
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

from bench import loadgen
from bench.procstat import tree_cpu_seconds
from bench.servers import Daemon, DaemonSettings, Seaweed

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    """Measure and write the curve."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--max-workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--duration-s", type=float, default=15.0)
    parser.add_argument("--warmup-s", type=float, default=3.0)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="s3batchd-bench-workers-"))
    seaweed = Seaweed.start(work / "seaweedfs")
    rows = []
    try:
        for workers in range(1, args.max_workers + 1):
            settings = DaemonSettings(upstream_url=seaweed.url, workers=workers)
            daemon = Daemon.start(work / f"w{workers}", settings)
            try:
                base = dict(url=daemon.url, size=args.size, connections=args.connections)
                loadgen.run(loadgen.LoadSpec(**base, duration_s=args.warmup_s, run="warm"))
                before = tree_cpu_seconds(daemon.pid)
                result = loadgen.run(
                    loadgen.LoadSpec(**base, duration_s=args.duration_s, run=f"w{workers}")
                )
                cpu = tree_cpu_seconds(daemon.pid) - before
            finally:
                daemon.stop()
            rows.append(
                {
                    "workers": workers,
                    "put_per_s": result.throughput,
                    "p50_ms": result.p50_ms,
                    "p99_ms": result.p99_ms,
                    "errors": result.errors,
                    "cpu_s_per_1000": 1000 * cpu / max(1, result.requests),
                }
            )
    finally:
        seaweed.stop()
        shutil.rmtree(work, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "workers.json").write_text(json.dumps(rows, indent=2) + "\n")
    first = rows[0]["put_per_s"] or 1.0
    lines = [
        f"# Throughput against server.workers ({args.size} B PUTs, {args.connections} "
        f"connections, durability none, {os.cpu_count()} CPUs shared with wrk and SeaweedFS)",
        "",
        "| workers | PUT/s | x 1 worker | p50 ms | p99 ms | CPU s / 1k PUTs | errors |",
        "|--:|--:|--:|--:|--:|--:|--:|",
    ]
    lines += [
        f"| {r['workers']} | {r['put_per_s']:,.0f} | {r['put_per_s'] / first:.2f} | "
        f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['cpu_s_per_1000']:.3f} | {r['errors']} |"
        for r in rows
    ]
    (args.out / "workers.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
