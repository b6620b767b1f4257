"""The event-loop lag monitor sees a stalled loop, and costs nothing when the loop is free."""

from __future__ import annotations

import asyncio
import time

import pytest
from prometheus_client import CollectorRegistry, Histogram

from s3batchd.server.looplag import LoopLagMonitor

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def lag_histogram() -> tuple[CollectorRegistry, Histogram]:
    registry = CollectorRegistry()
    histogram = Histogram("lag_seconds", "lag", buckets=(0.005, 0.02, 1), registry=registry)
    return registry, histogram


def samples(registry: CollectorRegistry) -> dict[str, float]:
    return {
        sample.name + str(sample.labels.get("le", "")): sample.value
        for family in registry.collect()
        for sample in family.samples
    }


async def test_a_blocked_loop_is_recorded_as_lag() -> None:
    registry, histogram = lag_histogram()
    monitor = LoopLagMonitor(histogram, interval_s=0.002)
    monitor.start()
    try:
        await asyncio.sleep(0.02)
        time.sleep(0.05)  # noqa: ASYNC251  on purpose: this holds the loop for 50 ms
        await asyncio.sleep(0.02)
    finally:
        await monitor.stop()
    seen = samples(registry)
    assert seen["lag_seconds_count"] >= 3
    # One wake-up was due during the 50 ms and ran after it: more than 20 ms late.
    assert seen["lag_seconds_count"] - seen["lag_seconds_bucket0.02"] >= 1
    assert seen["lag_seconds_sum"] >= 0.03


async def test_stop_ends_the_watch() -> None:
    registry, histogram = lag_histogram()
    monitor = LoopLagMonitor(histogram, interval_s=0.001)
    monitor.start()
    monitor.start()  # idempotent: one task
    await asyncio.sleep(0.01)
    await monitor.stop()
    count = samples(registry)["lag_seconds_count"]
    await asyncio.sleep(0.01)
    assert samples(registry)["lag_seconds_count"] == count
