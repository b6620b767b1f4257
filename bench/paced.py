"""Latency at a fraction (50%) of peak throughput.

wrk is a closed-loop generator; its Lua ``delay()`` hook makes each connection pause between a
response and its next request. The pause is chosen so the aggregate rate is the wanted
fraction of the peak the saturating run measured: a short calibration run gives the cycle time
per connection, the pause is corrected by what latency took, and a second calibration refines
it before the measured run. wrk times a request from its first byte, so pauses are not counted
as latency. (wrk2's constant-rate mode would be the open-loop alternative; it is not packaged
in Debian.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bench import loadgen

CALIBRATION_S = 4.0
#: A wake-up of the daemon's event-loop lag monitor this late counts as a stall.
STALL_S = 0.005

LagReading = Callable[[], tuple[float, float, float]]
"""The daemon's event-loop lag histogram now: (wake-ups, of which late by ``STALL_S`` or
more, seconds of lateness in all)."""


@dataclass(frozen=True)
class PacedPoint:
    """A run paced to a fraction of the peak."""

    target: str
    size: int
    connections: int
    peak: float
    """Requests/s of the saturating run."""
    wanted: float
    throughput: float
    delay_ms: float
    p50_ms: float
    p99_ms: float
    p999_ms: float
    errors: int
    stalls_per_s: float | None = None
    """Event-loop wake-ups late by 5 ms or more, per second of the measured run (s3batchd)."""
    lag_ms_per_s: float | None = None
    """Milliseconds of event-loop lateness per second of the measured run (s3batchd)."""
    child_processes: bool = False
    """s3batchd with ``upload.child_processes``."""
    daemon_rss_bytes: int | None = None
    """Peak RSS (VmHWM) of the s3batchd process at the end of the run."""
    upload_process_rss_bytes: int | None = None
    """Peak RSS of its upload process (``upload.child_processes``)."""
    pss_bytes: int | None = None
    """PSS of the daemon and its upload process summed, at the end of the run."""


def measure(
    target: str,
    url: str,
    *,
    size: int,
    connections: int,
    peak: float,
    fraction: float,
    duration_s: float,
    lag: LagReading | None = None,
) -> PacedPoint:
    """Calibrate the pause for ``fraction`` x ``peak`` requests/s, then measure (and, with
    ``lag``, how often the daemon's event loop stalled meanwhile)."""
    wanted = fraction * peak
    cycle_ms = 1000 * connections / wanted
    delay_ms = cycle_ms
    for round_number in range(2):
        spec = loadgen.LoadSpec(
            url=url,
            size=size,
            connections=connections,
            duration_s=CALIBRATION_S,
            delay_ms=delay_ms,
            run=f"{target}-paced-cal{round_number}",
        )
        got = loadgen.run(spec).throughput
        latency_ms = 1000 * connections / max(got, 1.0) - delay_ms
        delay_ms = max(1.0, cycle_ms - max(0.0, latency_ms))
    spec = loadgen.LoadSpec(
        url=url,
        size=size,
        connections=connections,
        duration_s=duration_s,
        delay_ms=delay_ms,
        run=f"{target}-paced",
    )
    before = lag() if lag is not None else None
    result = loadgen.run(spec)
    stalls_per_s = lag_ms_per_s = None
    if lag is not None and before is not None:
        after = lag()
        seconds = max(result.duration_s, 1e-9)
        stalls_per_s = (after[1] - before[1]) / seconds
        lag_ms_per_s = 1000 * (after[2] - before[2]) / seconds
    return PacedPoint(
        target=target,
        size=size,
        connections=connections,
        peak=peak,
        wanted=wanted,
        throughput=result.throughput,
        delay_ms=delay_ms,
        p50_ms=result.p50_ms,
        p99_ms=result.p99_ms,
        p999_ms=result.p999_ms,
        errors=result.errors,
        stalls_per_s=stalls_per_s,
        lag_ms_per_s=lag_ms_per_s,
    )
