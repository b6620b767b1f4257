"""One measured point: a target at one object size and concurrency, after a warm-up run."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from bench import loadgen
from bench.procstat import CpuWindow, RssSampler, busy_seconds, tree_peak_rss
from bench.servers import DaemonSettings, Seaweed
from bench.targets import SEAWEED, Running, running


@dataclass(frozen=True)
class PointSpec:
    """What every point of a run shares."""

    duration_s: float
    warmup_s: float
    max_requests: int
    """Request cap of the measured run (it also stops at ``duration_s``)."""
    daemon: DaemonSettings


@dataclass(frozen=True)
class Point:
    """The measurements of one point."""

    target: str
    size: int
    connections: int
    requests: int
    duration_s: float
    throughput: float
    errors: int
    p50_ms: float
    p99_ms: float
    p999_ms: float
    peak_rss_bytes: int
    """Peak RSS of the server's processes (s3batchd: the daemon and its upload process),
    summed."""
    peak_pss_bytes: int
    """Largest PSS of the server's processes summed, sampled every 0.25 s (shared pages
    counted once)."""
    cpu_s_per_1000: float
    """CPU seconds of the server under test (and its upload process) per 1,000 PUTs."""
    generator_cpu_s_per_1000: float
    upstream_cpu_s_per_1000: float | None
    """For s3batchd: CPU seconds SeaweedFS spent (on the batches) per 1,000 PUTs."""
    upstream_requests_per_1000: float | None
    """Requests sent to SeaweedFS per 1,000 objects (None for the ceiling)."""
    objects_per_batch: float | None
    other_cpu_share: float
    """Share of the machine's CPUs (all cores) busy with processes outside this benchmark
    during the measured run: load that competed with it."""


def measure(
    target: str, size: int, connections: int, *, spec: PointSpec, seaweed: Seaweed, work_dir: Path
) -> Point:
    """Start ``target``, warm it up, measure one load run, then collect its counters."""
    tag = f"{target}-{size}-c{connections}"
    with running(
        target, seaweed=seaweed, work_dir=work_dir / tag, daemon_settings=spec.daemon
    ) as live:
        load = loadgen.LoadSpec(url=live.url, size=size, connections=connections, duration_s=0)
        _warm_up(load, spec, tag)
        return _measured(live, load, spec=spec, seaweed=seaweed, tag=tag)


def _warm_up(load: loadgen.LoadSpec, spec: PointSpec, tag: str) -> None:
    if spec.warmup_s <= 0:
        return
    warm = loadgen.LoadSpec(**{**vars(load), "duration_s": spec.warmup_s, "run": tag + "-warm"})
    loadgen.run(warm)


def _measured(
    live: Running, load: loadgen.LoadSpec, *, spec: PointSpec, seaweed: Seaweed, tag: str
) -> Point:
    server_cpu, upstream_cpu = CpuWindow(live.server.pid), CpuWindow(seaweed.pid)
    measured = loadgen.LoadSpec(
        **{**vars(load), "duration_s": spec.duration_s, "limit": spec.max_requests, "run": tag}
    )
    with RssSampler([live.server.pid]) as rss:
        server_cpu.start()
        upstream_cpu.start()
        busy_before = busy_seconds()
        result = loadgen.run(measured)
        busy = busy_seconds() - busy_before
        server_cpu.stop()
        upstream_cpu.stop()
    ours = server_cpu.seconds + result.generator_cpu_s
    if live.target != SEAWEED:
        ours += upstream_cpu.seconds
    other = max(0.0, busy - ours) / (result.duration_s * (os.cpu_count() or 1))
    peak = tree_peak_rss(live.server.pid) if live.fresh else rss.peak(live.server.pid)
    per_1000 = 1000 / max(1, result.requests)
    upstream_requests: float | None = None
    objects_per_batch: float | None = None
    if live.daemon is not None:
        values = live.daemon.wait_uploaded(timeout=spec.daemon.linger_ms / 1000 + 60)
        records = values.get("s3batchd_records_uploaded_total", 0.0)
        batches = values.get("s3batchd_batches_uploaded_total", 0.0)
        upstream = values.get("s3batchd_upstream_requests_total", 0.0)
        upstream_requests = 1000 * upstream / records if records else None
        objects_per_batch = records / batches if batches else None
    elif live.target == SEAWEED:
        upstream_requests = 1000.0
    return Point(
        target=live.target,
        size=load.size,
        connections=load.connections,
        requests=result.requests,
        duration_s=result.duration_s,
        throughput=result.throughput,
        errors=result.errors,
        p50_ms=result.p50_ms,
        p99_ms=result.p99_ms,
        p999_ms=result.p999_ms,
        peak_rss_bytes=peak,
        peak_pss_bytes=rss.peak_pss(live.server.pid),
        cpu_s_per_1000=server_cpu.seconds * per_1000,
        generator_cpu_s_per_1000=result.generator_cpu_s * per_1000,
        upstream_cpu_s_per_1000=(
            upstream_cpu.seconds * per_1000 if live.daemon is not None else None
        ),
        upstream_requests_per_1000=upstream_requests,
        objects_per_batch=objects_per_batch,
        other_cpu_share=other,
    )
