"""StallWatch: only a wait for the next body piece that outlasts the timeout ends the read."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine

import pytest

from s3batchd.s3.stall import BodyPace, StallWatch, Suspended, step


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


def _pace(*, slow_slots: int = 10) -> BodyPace:
    """1 s of grace, then 100 bytes per second of waiting; stalls only after 5 s."""
    return BodyPace(timeout_s=5.0, min_rate=100, grace_s=1.0, slow_slots=slow_slots)


async def _trickle(watch: StallWatch, pieces: int, every_s: float, *, size: int = 1) -> str:
    """``size`` bytes per ``every_s``, each wait well within the stall timeout."""
    for _ in range(pieces):
        watch.waiting()
        try:
            await asyncio.sleep(every_s)
        except asyncio.CancelledError:
            if watch.timed_out():
                return "timed out"
            raise
        watch.arrived(size)
    return "complete"


def test_a_body_behind_the_minimum_rate_misses_its_deadline() -> None:
    """Declared 50 bytes: complete within 1 s + 50 / 100 s of waiting, or cut off."""

    async def read(declared: int | None) -> str:
        watch = StallWatch(5.0, pace=_pace(), declared=declared)
        try:
            return await _trickle(watch, 40, 0.1)  # 10 bytes/s: 4 s for 40 bytes
        finally:
            watch.close()

    assert asyncio.run(read(50)) == "timed out"
    assert asyncio.run(read(None)) == "timed out"  # unknown length: never behind the rate


def test_slow_bodies_hold_only_their_slots_and_give_them_back() -> None:
    async def main() -> None:
        pace = _pace(slow_slots=1)
        first = asyncio.create_task(_slow_then_fast(pace))
        await asyncio.sleep(0.1)
        second = asyncio.create_task(_slow_then_fast(pace))
        # The first falls behind and takes the one slow slot; the second, behind too, is
        # cut off at once rather than at its deadline (1 s + 10 MB / 100 B/s).
        assert await second == "timed out"
        assert pace.slow == 1
        assert await first == "caught up"
        assert pace.slow == 0

    asyncio.run(main())


async def _slow_then_fast(pace: BodyPace) -> str:
    watch = StallWatch(5.0, pace=pace, declared=10**7)
    try:
        if await _trickle(watch, 30, 0.1) == "timed out":
            return "timed out"
        watch.waiting()
        watch.arrived(10**6)  # a burst: ahead of the rate again
        watch.waiting()
        assert not watch.check(asyncio.get_running_loop().time())  # the sweeper's next look
        return "caught up"
    finally:
        watch.close()


def test_a_slow_body_that_keeps_the_minimum_rate_is_read_to_its_end() -> None:
    """400 bytes per second of waiting against a minimum of 100: complete, however long."""

    async def read() -> tuple[str, int]:
        pace = _pace(slow_slots=0)  # any body behind the rate would be cut off at once
        watch = StallWatch(5.0, pace=pace, declared=1000)
        try:
            got = await _trickle(watch, 50, 0.05, size=20)
        finally:
            watch.close()
        return got, pace.slow

    assert asyncio.run(read()) == ("complete", 0)


def test_step_returns_the_result_of_an_awaitable_that_does_not_suspend() -> None:
    async def ready() -> dict[str, object]:
        return {"type": "http.request", "body": b"here"}

    async def main() -> object:
        return step(ready())

    assert asyncio.run(main()) == {"type": "http.request", "body": b"here"}


def test_a_suspended_step_resumes_where_it_stopped() -> None:
    async def later() -> str:
        await asyncio.sleep(0)
        await asyncio.sleep(0.01)
        return "arrived"

    async def main() -> str:
        first = step(later())
        assert isinstance(first, Suspended)
        return await first

    assert asyncio.run(main()) == "arrived"


def test_a_cancellation_while_suspended_reaches_the_awaitable() -> None:
    seen: list[str] = []

    async def never() -> str:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            seen.append("cancelled inside")
            raise
        return "arrived"

    async def reader() -> str:
        first = step(never())
        assert isinstance(first, Suspended)
        return await first

    async def main() -> None:
        task = asyncio.ensure_future(reader())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert seen == ["cancelled inside"]


def test_an_exception_while_suspended_comes_out_of_the_await() -> None:
    async def failing() -> str:
        await asyncio.sleep(0.01)
        raise ConnectionResetError("gone")

    async def main() -> str:
        first = step(failing())
        assert isinstance(first, Suspended)
        return await first

    with pytest.raises(ConnectionResetError, match="gone"):
        asyncio.run(main())
