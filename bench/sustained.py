"""The sustained run: s3batchd under saturating load for minutes, in consecutive windows, to
show whether throughput and RSS stay flat (batches keep being sealed and uploaded, the catalog
keeps growing)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from bench import loadgen
from bench.procstat import MIB, RssSampler
from bench.servers import Daemon

#: Throughput of the last third of windows must be at least this share of the first third's.
FLAT_THROUGHPUT = 0.9
#: RSS may grow by at most this much from the end of the first window to the end.
FLAT_RSS_GROWTH_BYTES = 20 * MIB


@dataclass(frozen=True)
class Window:
    """One window of the sustained run."""

    start_s: float
    throughput: float
    p99_ms: float
    errors: int
    rss_bytes: int
    """RSS of the daemon's processes (with its upload process, if any), summed, at the end of
    the window."""


@dataclass(frozen=True)
class Sustained:
    """The whole sustained run."""

    server: str
    size: int
    connections: int
    duration_s: float
    windows: list[Window]
    rss_samples: list[tuple[float, int]]
    """(seconds, RSS of the daemon's processes summed), every second."""
    upstream_requests_per_1000: float | None
    pss_samples: list[tuple[float, int]] = field(default_factory=list)
    """(seconds, PSS of the daemon's processes summed), every second."""

    def thirds(self) -> tuple[float, float]:
        """Mean throughput of the first and the last third of the windows."""
        count = max(1, len(self.windows) // 3)
        first = [w.throughput for w in self.windows[:count]]
        last = [w.throughput for w in self.windows[-count:]]
        return sum(first) / len(first), sum(last) / len(last)

    @property
    def throughput_flat(self) -> bool:
        """Throughput did not fall by more than 10%."""
        first, last = self.thirds()
        return last >= FLAT_THROUGHPUT * first

    @property
    def rss_growth_bytes(self) -> int:
        """RSS at the end minus RSS after the first window."""
        return self.windows[-1].rss_bytes - self.windows[0].rss_bytes

    @property
    def rss_flat(self) -> bool:
        """RSS grew by less than FLAT_RSS_GROWTH_BYTES."""
        return self.rss_growth_bytes <= FLAT_RSS_GROWTH_BYTES


def measure(
    daemon: Daemon, *, size: int, connections: int, duration_s: float, window_s: float
) -> Sustained:
    """Load ``daemon`` for ``duration_s`` in windows of ``window_s``."""
    windows: list[Window] = []
    started = time.monotonic()
    with RssSampler([daemon.pid], interval_s=1.0) as rss:
        while (elapsed := time.monotonic() - started) < duration_s - window_s / 2:
            spec = loadgen.LoadSpec(
                url=daemon.url,
                size=size,
                connections=connections,
                duration_s=min(window_s, duration_s - elapsed),
                run=f"sustained-{len(windows)}",
            )
            result = loadgen.run(spec)
            windows.append(
                Window(
                    start_s=elapsed,
                    throughput=result.throughput,
                    p99_ms=result.p99_ms,
                    errors=result.errors,
                    rss_bytes=rss.samples[daemon.pid][-1][1] if rss.samples[daemon.pid] else 0,
                )
            )
    values = daemon.wait_uploaded(timeout=120)
    records = values.get("s3batchd_records_uploaded_total", 0.0)
    upstream = values.get("s3batchd_upstream_requests_total", 0.0)
    return Sustained(
        server=daemon.name,
        size=size,
        connections=connections,
        duration_s=time.monotonic() - started,
        windows=windows,
        rss_samples=rss.samples[daemon.pid],
        pss_samples=rss.pss_samples[daemon.pid],
        upstream_requests_per_1000=1000 * upstream / records if records else None,
    )
