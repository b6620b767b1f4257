"""StallWatch: only a wait for the next body piece that outlasts the timeout ends the read."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine

import pytest

from s3batchd.stall import StallWatch


async def _wait_piece(watch: StallWatch, arrives_after_s: float) -> str:
    watch.waiting()
    try:
        await asyncio.sleep(arrives_after_s)
    except asyncio.CancelledError:
        if watch.timed_out():
            return "timed out"
        raise
    watch.arrived()
    return "arrived"


def test_a_wait_longer_than_the_timeout_ends_the_read() -> None:
    async def read() -> list[str]:
        watch = StallWatch(0.5)
        try:
            return [await _wait_piece(watch, 0.05), await _wait_piece(watch, 3.0)]
        finally:
            watch.close()

    got, took_s = asyncio.run(_timed(read()))
    assert got == ["arrived", "timed out"]
    assert took_s >= 0.55  # 0.05 s, then the second wait's own 0.5 s


def test_time_spent_between_pieces_does_not_count() -> None:
    async def read() -> list[str]:
        watch = StallWatch(0.5)
        got = []
        try:
            for _ in range(4):
                got.append(await _wait_piece(watch, 0.1))
                # The reader busy with the piece (sending it on): with the wait, longer than
                # the timeout, which only the wait counts towards.
                await asyncio.sleep(0.45)
        finally:
            watch.close()
        return got

    assert asyncio.run(read()) == ["arrived"] * 4


def test_another_cancellation_is_not_taken_for_a_stall() -> None:
    async def read() -> str:
        watch = StallWatch(5.0)
        try:
            return await _wait_piece(watch, 5.0)
        finally:
            watch.close()

    async def main() -> None:
        task = asyncio.create_task(read())
        await asyncio.sleep(0.05)
        task.cancel()  # e.g. shutdown
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())


def test_a_closed_watch_cancels_nothing() -> None:
    async def main() -> None:
        watch = StallWatch(0.05)
        watch.waiting()
        watch.close()
        await asyncio.sleep(0.2)  # past the deadline: still running
        assert not watch.fired

    asyncio.run(main())


async def _timed(work: Coroutine[None, None, list[str]]) -> tuple[list[str], float]:
    loop = asyncio.get_running_loop()
    started = loop.time()
    result = await work
    return result, loop.time() - started
