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

from dataclasses import dataclass

from bench import loadgen

CALIBRATION_S = 4.0


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


def measure(
    target: str,
    url: str,
    *,
    size: int,
    connections: int,
    peak: float,
    fraction: float,
    duration_s: float,
) -> PacedPoint:
    """Calibrate the pause for ``fraction`` x ``peak`` requests/s, then measure."""
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
    result = loadgen.run(spec)
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
    )
