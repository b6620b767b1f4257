"""The sweeper: many coarse deadlines checked by one timer per loop."""

from __future__ import annotations

import asyncio

from s3batchd.sweeper import MAX_TICK_S, Sweeper, sweeper


class _Deadline:
    def __init__(self, loop: asyncio.AbstractEventLoop, after_s: float) -> None:
        self.due = loop.time() + after_s
        self.fired_at: float | None = None
        self.fired = asyncio.Event()
        self.checks = 0

    def check(self, now: float) -> bool:
        self.checks += 1
        if now >= self.due:
            self.fired_at = now
            self.fired.set()
            return True
        return False


class _Broken:
    def check(self, now: float) -> bool:
        raise RuntimeError("broken")


def test_a_deadline_is_met_within_a_quarter_of_its_timeout() -> None:
    async def main() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        deadline = _Deadline(loop, 0.4)
        sweeper(loop).watch(deadline, 0.4)
        await asyncio.wait_for(deadline.fired.wait(), 5)
        assert deadline.fired_at is not None
        return deadline.fired_at, deadline.due

    fired_at, due = asyncio.run(main())
    assert due <= fired_at <= due + 0.1 + 0.05  # one tick (0.1 s), and some scheduling slack


def test_forgotten_and_finished_things_are_no_longer_checked() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        watcher = Sweeper(loop)
        forgotten = _Deadline(loop, 0.05)
        finished = _Deadline(loop, 0.05)
        watcher.watch(forgotten, 0.2)
        watcher.watch(finished, 0.2)
        watcher.forget(forgotten)
        await asyncio.sleep(0.3)
        assert forgotten.checks == 0
        assert finished.fired_at is not None
        checks = finished.checks
        await asyncio.sleep(0.2)
        assert finished.checks == checks
        assert len(watcher) == 0

    asyncio.run(main())


def test_a_broken_check_does_not_stop_the_others() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        watcher = Sweeper(loop)
        watcher.watch(_Broken(), 0.1)
        deadline = _Deadline(loop, 0.1)
        watcher.watch(deadline, 0.1)
        await asyncio.sleep(0.3)
        assert deadline.fired_at is not None
        assert len(watcher) == 0  # the broken one is dropped

    asyncio.run(main())


def test_the_tick_is_at_most_a_second_and_each_loop_has_its_own() -> None:
    async def main() -> Sweeper:
        loop = asyncio.get_running_loop()
        found = sweeper(loop)
        assert sweeper(loop) is found
        deadline = _Deadline(loop, 60.0)
        found.watch(deadline, 60.0)  # a quarter would be 15 s
        await asyncio.sleep(MAX_TICK_S + 0.3)
        assert deadline.checks >= 1
        found.forget(deadline)
        return found

    first = asyncio.run(main())
    second = asyncio.run(main())
    assert first is not second
